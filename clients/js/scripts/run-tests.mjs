// Runs the compiled tests with Node's own test runner:
//
//   node scripts/run-tests.mjs           unit tests + tests against real nodes   → "client-js: …"
//   node scripts/run-tests.mjs unit      unit tests only                         → "client-js: …"
//   node scripts/run-tests.mjs browser   headless Chromium through nginx (wss)   → "client-js-browser: …"
//
// Before anything runs, it checks for what the tests start for real — the
// `fanout` binary of this workspace and `redis-server`; for the browser
// tests also nginx, Chromium, and what deploy/cluster.sh uses — and stops
// with the command that provides a missing one (never a silent skip).
import { spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const mode = process.argv[2] ?? 'all';
if (!['all', 'unit', 'browser'].includes(mode)) {
  console.error(`usage: node scripts/run-tests.mjs [unit|browser] (not ${mode})`);
  process.exit(2);
}
const unitOnly = mode === 'unit';
const browser = mode === 'browser';

const major = Number(process.versions.node.split('.')[0]);
if (major < 20) {
  console.error(`error: the tests need Node.js 20 or newer (this is ${process.version})`);
  process.exit(1);
}

const isExecutable = (path) => {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

if (!unitOnly) {
  const workspace = resolve(root, '../..');
  const fanout = join(workspace, 'target/debug/fanout');
  const problems = [];
  if (!isExecutable(fanout)) {
    problems.push(`the fanout binary is missing at ${fanout}; build it first: (cd ${workspace} && cargo build -p fanout-gateway)`);
  }
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin'];
  const onPath = (name) => dirs.some((dir) => dir && isExecutable(join(dir, name)));
  if (!onPath('redis-server')) {
    problems.push('redis-server is not installed (the cluster tests need a real Redis): run scripts/install-test-deps.sh (as root) from the repository root, or `apt-get install redis-server`');
  }
  if (browser) {
    const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
    if (!isExecutable(chromium)) {
      problems.push(`Chromium is missing at ${chromium} (the browser tests drive Debian's headless Chromium; nothing downloads one): run scripts/install-test-deps.sh (as root) from the repository root, or \`apt-get install chromium\``);
    }
    if (!onPath('nginx')) {
      problems.push('nginx is not installed (the browser tests run the shipped nginx config over wss): run scripts/install-test-deps.sh (as root) from the repository root, or `apt-get install nginx`');
    }
    for (const tool of ['openssl', 'curl']) {
      if (!onPath(tool)) problems.push(`${tool} is not installed (deploy/cluster.sh uses it): \`apt-get install ${tool}\``);
    }
  }
  if (problems.length > 0) {
    for (const problem of problems) console.error(`error: ${problem}`);
    process.exit(1);
  }
}

const buildDir = join(root, 'build/test');
const files = (dir) => readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => join(dir, f));
const tests = browser
  ? files(join(buildDir, 'browser'))
  : [...files(join(buildDir, 'unit')), ...(unitOnly ? [] : files(buildDir))];
const label = browser ? 'client-js-browser' : 'client-js';

// Readable progress on stdout (spec), and TAP into a file for the counts of the closing line.
const tap = join(root, browser ? 'build/test-results-browser.tap' : 'build/test-results.tap');
const started = Date.now();
const result = spawnSync(
  process.execPath,
  [
    '--test',
    // Each browser test file runs its own cluster (5 processes) and Chromium: on 2 cores, one file at a time.
    `--test-concurrency=${browser ? 1 : 2}`,
    '--test-timeout=120000',
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
    '--test-reporter=tap',
    `--test-reporter-destination=${tap}`,
    ...tests,
  ],
  { cwd: root, stdio: 'inherit' },
);
const seconds = ((Date.now() - started) / 1000).toFixed(1);
let counts = { pass: 0, fail: 0, skipped: 0, cancelled: 0, todo: 0 };
try {
  for (const line of readFileSync(tap, 'utf8').split('\n')) {
    const m = /^# (pass|fail|skipped|cancelled|todo) (\d+)$/.exec(line);
    if (m) counts[m[1]] = Number(m[2]);
  }
} catch {
  counts.fail += 1; // no results at all: the runner itself failed
}
const failed = counts.fail + counts.cancelled;
console.log(`wall time: ${seconds} s`);
// One plain closing line, in the form CI and scripts/test.sh read.
console.log(`${label}: ${counts.pass} passed, ${failed} failed, ${counts.skipped + counts.todo} skipped`);
process.exit(result.status === 0 && failed === 0 ? 0 : 1);
