/**
 * A real `fanout` node for the tests: the binary the Rust workspace builds,
 * started on a free loopback port with its own TOML config, in the way
 * crates/gateway/tests/it/cluster_support.rs starts `ProcessNode`s (short
 * shutdown timings, the test secret and API key, `/readyz` as the readiness
 * signal). It can be drained (SIGTERM), killed (SIGKILL), frozen
 * (SIGSTOP/SIGCONT) and restarted on the same port.
 */

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { fanoutBinary } from './paths.js';
import { exited, logTail, spawnLogged, stopProcess } from './processes.js';
import { API_KEY, SECRET } from './tokens.js';
import { freePort, sleep, waitFor } from './wait.js';

type TomlValue = string | number | boolean;
export type TomlTable = { readonly [key: string]: TomlValue };

export interface NodeConfig {
  /** `[limits]` keys, e.g. `{ max_frame_bytes: 4096 }`. */
  readonly limits?: TomlTable;
  /** `[session]` keys, e.g. `{ ping_interval: '1s' }`. */
  readonly session?: TomlTable;
  /** `[redis]` keys; makes the node a cluster member. */
  readonly redis?: TomlTable;
  /** `[[history]]` rules; default: every tenant's `chat:*` rooms keep 1000 messages. */
  readonly history?: readonly TomlTable[];
}

/** How long a node may take to serve `/readyz` 200. */
const READY_TIMEOUT_MS = 15_000;

function tomlValue(value: TomlValue): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

function table(header: string, entries: TomlTable | undefined): string {
  if (!entries) return '';
  const lines = Object.entries(entries).map(([key, value]) => `${key} = ${tomlValue(value)}`);
  return `\n${header}\n${lines.join('\n')}\n`;
}

export function nodeToml(id: string, port: number, config: NodeConfig): string {
  const history = config.history ?? [{ tenant: '*', rooms: 'chat:*', size: 1000, ttl: '5m' }];
  return [
    `node_id = "${id}"`,
    `listen = "127.0.0.1:${port}"`,
    table('[auth]', { secret: SECRET }),
    table('[[api_keys]]', { key: API_KEY }),
    table('[log]', { level: 'info' }),
    table('[shutdown]', { grace: '3s', readiness_delay: '0s', drain_window: '0s' }),
    table('[limits]', config.limits),
    table('[session]', config.session),
    table('[redis]', config.redis),
    ...history.map((rule) => table('[[history]]', rule)),
  ].join('\n');
}

export interface HttpAnswer {
  readonly status: number;
  readonly body: unknown;
}

export class FanoutNode {
  private child: ChildProcess | undefined;

  private constructor(
    readonly id: string,
    readonly port: number,
    private readonly dir: string,
  ) {}

  /** Starts a node with `config` and waits until `/readyz` answers 200. */
  static async start(config: NodeConfig = {}, port?: number): Promise<FanoutNode> {
    const binary = fanoutBinary();
    const chosen = port ?? (await freePort());
    const id = `js-${chosen}`;
    const dir = mkdtempSync(join(tmpdir(), 'fanout-js-node-'));
    writeFileSync(join(dir, 'fanout.toml'), nodeToml(id, chosen, config));
    const node = new FanoutNode(id, chosen, dir);
    try {
      await node.launch(binary);
    } catch (thrown) {
      await node.stop(); // the error carries the log's tail
      throw thrown;
    }
    return node;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get running(): boolean {
    return this.child !== undefined && !exited(this.child);
  }

  /** The tail of the node's log, for failure messages. */
  log(lines = 40): string {
    return logTail(join(this.dir, 'node.log'), lines);
  }

  /** SIGTERM: the node drains (clients are closed with 1012) and exits; returns its exit code. */
  async drain(): Promise<number | null> {
    const child = this.takeChild();
    return stopProcess(child, 'SIGTERM');
  }

  /** SIGKILL: the node dies without closing anything. */
  async kill(): Promise<void> {
    const child = this.takeChild();
    await stopProcess(child, 'SIGKILL');
  }

  /** Starts the node again on the same port with the same config. */
  async restart(): Promise<void> {
    if (this.running) throw new Error(`node ${this.id} is still running`);
    await this.launch(fanoutBinary());
  }

  /**
   * SIGSTOP: the node freezes; its sockets stay open but nothing is answered.
   * Resolves once every thread of the process is stopped (the signal is
   * asynchronous: a thread could otherwise still answer a frame sent right after).
   */
  async freeze(): Promise<void> {
    const child = this.child;
    if (!child?.pid) throw new Error(`node ${this.id} is not running`);
    const pid = child.pid;
    child.kill('SIGSTOP');
    await waitFor(`node ${this.id} to stop`, 5_000, () => {
      const tasks = readdirSync(`/proc/${pid}/task`);
      // The state is the field after the parenthesised command name: T = stopped.
      return tasks.every((task) => /\)\s+[Tt]\s/.test(readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8')));
    });
  }

  /** SIGCONT after `freeze()`. */
  thaw(): void {
    this.child?.kill('SIGCONT');
  }

  /** Kills the node if it runs and removes its directory. */
  async stop(): Promise<void> {
    if (this.child && !exited(this.child)) {
      this.child.kill('SIGCONT');
      await stopProcess(this.child, 'SIGKILL');
    }
    this.child = undefined;
    rmSync(this.dir, { recursive: true, force: true });
  }

  async api(method: 'GET' | 'POST', path: string, body?: unknown): Promise<HttpAnswer> {
    const response = await fetch(`http://127.0.0.1:${this.port}${path}`, {
      method,
      headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(5_000),
    });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: response.status, body: parsed };
  }

  /** `POST /v1/publish`, asserting 202; returns the answer body (`id`, and `offset`/`epoch` in rooms with history). */
  async publish(body: { readonly [key: string]: unknown }): Promise<{ id: string; offset?: number; epoch?: string }> {
    const answer = await this.api('POST', '/v1/publish', body);
    if (answer.status !== 202) throw new Error(`publish via ${this.id} answered ${answer.status}: ${JSON.stringify(answer.body)}`);
    return answer.body as { id: string; offset?: number; epoch?: string };
  }

  private async launch(binary: string): Promise<void> {
    // `FANOUT_*` variables would override the config file; keep the node's config exactly the file.
    const env: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries(process.env)) {
      if (!key.startsWith('FANOUT_') && key !== 'RUST_LOG') env[key] = value;
    }
    const { child } = spawnLogged(binary, ['--config', join(this.dir, 'fanout.toml')], join(this.dir, 'node.log'), env);
    this.child = child;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (exited(child)) {
        throw new Error(`node ${this.id} exited at start (${String(child.exitCode ?? child.signalCode)})\n${this.log()}`);
      }
      if (await this.ready()) return;
      if (Date.now() >= deadline) {
        throw new Error(`node ${this.id} did not answer /readyz 200 within ${READY_TIMEOUT_MS} ms\n${this.log()}`);
      }
      await sleep(20);
    }
  }

  private async ready(): Promise<boolean> {
    try {
      const response = await fetch(`http://127.0.0.1:${this.port}/readyz`, { signal: AbortSignal.timeout(1_000) });
      return response.status === 200;
    } catch {
      return false;
    }
  }

  private takeChild(): ChildProcess {
    const child = this.child;
    if (!child || exited(child)) throw new Error(`node ${this.id} is not running`);
    this.child = undefined;
    return child;
  }
}
