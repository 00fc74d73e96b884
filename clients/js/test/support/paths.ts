/**
 * Where the things the tests run live: the package root, the `fanout`
 * binary the Rust workspace builds, and `redis-server`. A missing binary is
 * an error that names the command that provides it — the suite never skips
 * silently.
 */

import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The directory of `@fanout/client` (clients/js). */
export const packageRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 10; i += 1) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === '@fanout/client') {
      return dir;
    }
    dir = dirname(dir);
  }
  throw new Error('cannot find the @fanout/client package root above the test files');
})();

/** The workspace root (two levels above clients/js). */
export const workspaceRoot = resolve(packageRoot, '../..');

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `../../target/debug/fanout`, or an error saying how to build it. */
export function fanoutBinary(): string {
  const path = join(workspaceRoot, 'target', 'debug', 'fanout');
  if (!executable(path)) {
    throw new Error(
      `the fanout binary is missing at ${path}; build it first: (cd ${workspaceRoot} && cargo build -p fanout-gateway)`,
    );
  }
  return path;
}

/** `redis-server` on PATH (or in /usr/sbin, /usr/local/sbin), or an error saying how to install it. */
export function redisServerBinary(): string {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    if (dir && executable(join(dir, 'redis-server'))) return join(dir, 'redis-server');
  }
  throw new Error(
    'redis-server is not installed, and the cluster tests need a real Redis: run scripts/install-test-deps.sh (as root) from the repository root, or `apt-get install redis-server`',
  );
}

/** `deploy/cluster.sh`: Redis, 3 nodes and nginx (TLS), as a person runs them. */
export const clusterScript = join(workspaceRoot, 'deploy', 'cluster.sh');

/** nginx, where Debian's package puts it (as deploy/cluster.sh and the Rust edge tests find it). */
export function nginxBinary(): string {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin'];
  for (const dir of dirs) {
    if (dir && executable(join(dir, 'nginx'))) return join(dir, 'nginx');
  }
  throw new Error(
    'nginx is not installed, and the browser tests run the shipped nginx config in front of the cluster: run scripts/install-test-deps.sh (as root) from the repository root, or `apt-get install nginx`',
  );
}

/**
 * Debian's Chromium (`/usr/bin/chromium`, or `CHROMIUM_PATH`): the browser
 * tests drive the system browser; nothing downloads one.
 */
export function chromiumBinary(): string {
  const path = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
  if (!executable(path)) {
    throw new Error(
      `Chromium is missing at ${path}, and the browser tests run a real headless Chromium: run scripts/install-test-deps.sh (as root) from the repository root, or \`apt-get install chromium\` (or set CHROMIUM_PATH)`,
    );
  }
  return path;
}
