/**
 * The local cluster a person gets from `deploy/cluster.sh up` — Redis, 3
 * nodes, nginx with TLS running the shipped config — on free loopback
 * ports, in a temporary directory, with `target/debug/fanout`. Extra node
 * config (history rules) goes through the script's FANOUT_EXTRA_CONFIG.
 *
 * Besides `up`/`down` it does what the script has no command for: drain,
 * kill or restart one node (the restarted node is this process's child).
 * `down()` runs `cluster.sh down` and kills the restarted nodes; the
 * processes registry kills those at exit at the latest.
 */

import { execFile } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { clusterScript, fanoutBinary, nginxBinary, redisServerBinary } from '../../support/paths.js';
import { exited, logTail, spawnLogged, stopProcess } from '../../support/processes.js';
import { freePort, sleep, waitFor } from '../../support/wait.js';

/** cluster.sh waits at most 10 s for each node and for nginx; this bounds the whole command. */
const SCRIPT_TIMEOUT_MS = 60_000;

function run(args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    execFile(clusterScript, args, { env, timeout: SCRIPT_TIMEOUT_MS, killSignal: 'SIGKILL' }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ stdout, stderr, code });
    });
  });
}

/** `FANOUT_*` and `RUST_LOG` would override the nodes' config files: the nodes get exactly their files. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('FANOUT_') && key !== 'RUST_LOG') env[key] = value;
  }
  return env;
}

/** `n` distinct loopback ports that were free a moment ago. */
async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

/** Whether `pid` is gone: no such process, or a zombie nobody reaped yet (it is not our child). */
function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  try {
    return /\)\s+Z\s/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** Clusters not yet down: killed at exit when `down()` never ran (a runner timeout, a signal). */
const live = new Set<Cluster>();
process.on('exit', () => {
  for (const cluster of live) cluster.killNow();
});

export class Cluster {
  /** Nodes this process restarted, by port: its children, not cluster.sh's. */
  private readonly restarted = new Map<number, ChildProcess>();
  /** Publishes retried, by what the failed try met (a status or an error): evidence for the report. */
  readonly retries = new Map<string, number>();
  /** Keep-alive HTTPS to nginx, trusting the cluster's certificate (made by `up`). */
  private agent: Agent | undefined;

  private constructor(
    private readonly dir: string,
    private readonly env: NodeJS.ProcessEnv,
    readonly nginxPort: number,
    readonly nodePorts: readonly number[],
  ) {}

  /** `cluster.sh up` with `extraToml` appended to every node's config; waits until every node counts all three. */
  static async up(extraToml: string): Promise<Cluster> {
    fanoutBinary();
    nginxBinary();
    redisServerBinary();
    const dir = mkdtempSync(join(tmpdir(), 'fanout-js-browser-'));
    writeFileSync(join(dir, 'extra.toml'), extraToml);
    const [nginxPort, redisPort, ...nodePorts] = await freePorts(5);
    const env: NodeJS.ProcessEnv = {
      ...cleanEnv(),
      FANOUT_BIN: fanoutBinary(),
      FANOUT_CLUSTER_DIR: join(dir, 'cluster'),
      FANOUT_CLUSTER_PORT: String(nginxPort),
      FANOUT_NODE_PORTS: nodePorts.join(' '),
      FANOUT_REDIS_PORT: String(redisPort),
      FANOUT_EXTRA_CONFIG: join(dir, 'extra.toml'),
    };
    const cluster = new Cluster(dir, env, nginxPort as number, nodePorts);
    live.add(cluster);
    const up = await run(['up'], env);
    try {
      if (up.code !== 0) throw new Error(`deploy/cluster.sh up failed (${up.code}):\n${up.stdout}\n${up.stderr}`);
      for (const port of nodePorts) {
        await waitFor(`node ${port} to count 3 nodes`, 10_000, async () => {
          const stats = await fetch(`http://127.0.0.1:${port}/v1/stats`, {
            headers: { Authorization: `Bearer ${cluster.apiKey}` },
            signal: AbortSignal.timeout(1_000),
          });
          return ((await stats.json()) as { cluster?: { nodes?: number } }).cluster?.nodes === 3;
        });
      }
    } catch (thrown) {
      await cluster.down();
      throw thrown;
    }
    return cluster;
  }

  /** The cluster's state directory (configs, keys, logs, pids): what `--cluster-dir` of the example server takes. */
  get stateDir(): string {
    return join(this.dir, 'cluster');
  }

  get wssUrl(): string {
    return `wss://localhost:${this.nginxPort}/ws`;
  }

  get certPem(): string {
    return readFileSync(join(this.stateDir, 'tls', 'fanout.crt'), 'utf8');
  }

  get keyPem(): string {
    return readFileSync(join(this.stateDir, 'tls', 'fanout.key'), 'utf8');
  }

  /** The cluster's HS256 token secret (generated by cluster.sh). */
  get secret(): string {
    return readFileSync(join(this.stateDir, 'secret'), 'utf8').trim();
  }

  get apiKey(): string {
    return readFileSync(join(this.stateDir, 'api-key'), 'utf8').trim();
  }

  /** The port of a node from its id: cluster.sh names them `local-<port>`. */
  portOf(nodeId: string): number {
    const port = Number(/^local-(\d+)$/.exec(nodeId)?.[1]);
    if (!this.nodePorts.includes(port)) throw new Error(`${nodeId} is not a node of this cluster (${this.nodePorts.join(', ')})`);
    return port;
  }

  /** SIGTERM: the node drains (its clients get 1012) and exits; resolves when it has. */
  async drain(port: number): Promise<void> {
    await this.signal(port, 'SIGTERM', 15_000);
  }

  /** SIGKILL: the node dies without closing anything; resolves when it is gone. */
  async kill(port: number): Promise<void> {
    await this.signal(port, 'SIGKILL', 5_000);
  }

  /** Starts a stopped node again with its config and log, and waits for `/readyz` 200. */
  async restart(port: number): Promise<void> {
    const log = join(this.stateDir, 'logs', `node-${port}.log`);
    const { child } = spawnLogged(fanoutBinary(), ['--config', join(this.stateDir, `node-${port}.toml`)], log, this.env);
    this.restarted.set(port, child);
    await waitFor(`restarted node ${port} to be ready`, 15_000, async () => {
      if (exited(child)) throw new Error(`restarted node ${port} exited\n${logTail(log)}`);
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(1_000) });
      return ready.status === 200;
    });
  }

  /**
   * `POST /v1/publish` through nginx over HTTPS, as a backend would. A 503
   * or 429 delivered nothing, and a 502 or a lost connection (a node killed
   * mid-request) may have: the idempotency key makes every retry safe.
   */
  async publish(body: { readonly idempotency_key: string; readonly [key: string]: unknown }): Promise<void> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      let outcome: string;
      try {
        const status = await this.post('/v1/publish', JSON.stringify(body));
        if (status === 202) return;
        if (![429, 502, 503, 504].includes(status)) throw new Error(`publish answered ${status}`);
        outcome = String(status);
      } catch (thrown) {
        if (thrown instanceof Error && thrown.message.startsWith('publish answered')) throw thrown;
        outcome = thrown instanceof Error ? thrown.message : String(thrown);
      }
      this.retries.set(outcome, (this.retries.get(outcome) ?? 0) + 1);
      if (Date.now() >= deadline) throw new Error(`publish ${body.idempotency_key} kept failing; last: ${outcome}`);
      await sleep(50);
    }
  }

  /** The tails of the node and nginx logs, for failure messages. */
  logs(lines = 15): string {
    const files = [...this.nodePorts.map((p) => `node-${p}.log`), 'nginx.log'];
    return files.map((f) => logTail(join(this.stateDir, 'logs', f), lines)).join('\n');
  }

  /** `cluster.sh down`, then the nodes this process restarted; removes the directory. Never throws. */
  async down(): Promise<void> {
    this.agent?.destroy();
    const down = await run(['down'], this.env);
    if (down.code !== 0) console.error(`deploy/cluster.sh down failed (${down.code}):\n${down.stdout}\n${down.stderr}`);
    for (const child of this.restarted.values()) {
      await stopProcess(child, 'SIGKILL').catch(() => undefined);
    }
    this.restarted.clear();
    rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }

  /**
   * The last resort, synchronous (for process exit): SIGKILL whatever
   * cluster.sh started and still runs, checked as cluster.sh down checks it
   * (the pid names a fanout, redis or nginx process), and remove the directory.
   */
  killNow(): void {
    try {
      for (const line of readFileSync(join(this.stateDir, 'pids'), 'utf8').split('\n')) {
        const pid = Number(line.split(' ')[1]);
        if (!Number.isInteger(pid) || pid <= 0 || gone(pid)) continue;
        try {
          if (/fanout|redis|nginx/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'))) process.kill(pid, 'SIGKILL');
        } catch {
          // exited meanwhile
        }
      }
    } catch {
      // no pids file: nothing was started
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  private pidOf(port: number): number {
    const child = this.restarted.get(port);
    if (child?.pid !== undefined && !exited(child)) return child.pid;
    const pid = Number(readFileSync(join(this.stateDir, `node-${port}.pid`), 'utf8').trim());
    // As cluster.sh down does: signal only a fanout process (the pid could be reused).
    if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('fanout')) throw new Error(`pid ${pid} of node ${port} is not a fanout node`);
    return pid;
  }

  private async signal(port: number, signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
    const pid = this.pidOf(port);
    process.kill(pid, signal);
    await waitFor(`node ${port} (pid ${pid}) to exit after ${signal}`, timeoutMs, () => gone(pid), 50);
  }

  private post(path: string, body: string): Promise<number> {
    this.agent ??= new Agent({ keepAlive: true, maxSockets: 4, ca: this.certPem });
    const agent = this.agent;
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          servername: 'localhost',
          port: this.nginxPort,
          path,
          method: 'POST',
          agent,
          timeout: 5_000,
          headers: {
            Host: 'localhost',
            Authorization: `Bearer ${this.apiKey}`,
            'Content-Type': 'application/json',
            'Content-Length': Buffer.byteLength(body),
          },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', reject);
      req.end(body);
    });
  }
}
