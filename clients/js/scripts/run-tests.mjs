// Runs the compiled tests with Node's own test runner: `node scripts/run-tests.mjs [unit]`.
//
// Before anything runs, it checks for what the integration tests start for
// real — the `fanout` binary of this workspace and `redis-server` — and
// stops with the command that provides a missing one (never a silent skip).
import { spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const unitOnly = process.argv[2] === 'unit';

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
  if (!dirs.some((dir) => dir && isExecutable(join(dir, 'redis-server')))) {
    problems.push('redis-server is not installed (the cluster tests need a real Redis): run scripts/install-test-deps.sh (as root) from the repository root, or `apt-get install redis-server`');
  }
  if (problems.length > 0) {
    for (const problem of problems) console.error(`error: ${problem}`);
    process.exit(1);
  }
}

const buildDir = join(root, 'build/test');
const files = (dir) => readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => join(dir, f));
const tests = [...files(join(buildDir, 'unit')), ...(unitOnly ? [] : files(buildDir))];

// Readable progress on stdout (spec), and TAP into a file for the counts of the closing line.
const tap = join(root, 'build/test-results.tap');
const started = Date.now();
const result = spawnSync(
  process.execPath,
  [
    '--test',
    '--test-concurrency=2',
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
console.log(`client-js: ${counts.pass} passed, ${failed} failed, ${counts.skipped + counts.todo} skipped`);
process.exit(result.status === 0 && failed === 0 ? 0 : 1);
