/**
 * A real `redis-server` on a free loopback port, for the cluster tests,
 * plus a raw RESP command (the tests poke Redis directly to lose a message
 * on purpose, as crates/gateway/tests/it/history.rs does).
 */

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { redisServerBinary } from './paths.js';
import { exited, logTail, spawnLogged, stopProcess } from './processes.js';
import { freePort, waitFor } from './wait.js';

/** Sends one command and returns the raw reply text (enough for integers and simple strings). */
export function redisCommand(port: number, args: readonly string[], timeoutMs = 2_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`redis ${args[0] ?? ''} timed out`));
    }, timeoutMs);
    let reply = '';
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.endsWith('\r\n')) {
        clearTimeout(timer);
        socket.end();
        if (reply.startsWith('-')) reject(new Error(`redis ${args[0] ?? ''}: ${reply.trim()}`));
        else resolve(reply.trim());
      }
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
  });
}

export class RedisServer {
  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly child: ChildProcess,
  ) {}

  static async start(): Promise<RedisServer> {
    const binary = redisServerBinary();
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'fanout-js-redis-'));
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'];
    const { child } = spawnLogged(binary, args, join(dir, 'redis.log'), process.env);
    const server = new RedisServer(port, dir, child);
    try {
      await waitFor('redis-server to answer PING', 5_000, async () => {
        if (exited(child)) throw new Error('redis-server exited');
        return (await redisCommand(port, ['PING'], 500)) === '+PONG';
      });
    } catch (thrown) {
      await server.stop();
      throw new Error(`${thrown instanceof Error ? thrown.message : String(thrown)}\n${logTail(join(dir, 'redis.log'))}`);
    }
    return server;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  command(args: readonly string[]): Promise<string> {
    return redisCommand(this.port, args);
  }

  async stop(): Promise<void> {
    if (!exited(this.child)) await stopProcess(this.child, 'SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
