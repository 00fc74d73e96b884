/**
 * Child processes started by the tests, and the guarantee that they die.
 *
 * Every process is registered here when spawned. Tests stop what they
 * start in `after` hooks; as a last resort, when the test process exits for
 * any reason (a failed assertion, an uncaught exception, the runner's
 * SIGTERM), every process still alive is sent SIGKILL.
 */

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { once } from 'node:events';

const alive = new Set<ChildProcess>();

function killAll(): void {
  for (const child of alive) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  alive.clear();
}

process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

export interface Spawned {
  readonly child: ChildProcess;
  readonly logPath: string;
}

/** Starts `command` with stdout and stderr appended to `logPath`; it is killed at exit at the latest. */
export function spawnLogged(command: string, args: readonly string[], logPath: string, env: NodeJS.ProcessEnv): Spawned {
  const fd = openSync(logPath, 'a');
  try {
    const child = spawn(command, args, { stdio: ['ignore', fd, fd], env });
    alive.add(child);
    child.once('exit', () => alive.delete(child));
    return { child, logPath };
  } finally {
    closeSync(fd);
  }
}

/** Whether the process has exited. */
export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Sends `signal` and waits (at most `timeoutMs`) for the exit; SIGKILL if it takes longer. Returns the exit code. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals, timeoutMs = 10_000): Promise<number | null> {
  if (exited(child)) return child.exitCode;
  const exit = once(child, 'exit');
  child.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const outcome = await Promise.race([exit, timeout]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    child.kill('SIGKILL');
    await once(child, 'exit');
    throw new Error(`process ${child.pid} did not exit within ${timeoutMs} ms of ${signal}`);
  }
  return child.exitCode;
}

/** The last `lines` lines of a log file, for failure messages. */
export function logTail(path: string, lines = 30): string {
  try {
    const text = readFileSync(path, 'utf8').split('\n');
    return `--- ${path} ---\n${text.slice(-lines).join('\n')}`;
  } catch {
    return `--- ${path} (unreadable) ---`;
  }
}
