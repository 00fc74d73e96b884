/**
 * When the next connection attempt happens.
 *
 * Owns the count of consecutive failures and the one pending timer. The
 * count starts over only after a connection that stayed up for a while
 * (`STABLE_MS` after its welcome) and did not close with a back-off code
 * (4003, 4008). A welcome alone is not enough: a node that welcomes and
 * then closes at once, every time (say 4009 because a replayed message can
 * never fit the send queue), must meet a growing delay, not a fixed short
 * one. While the runtime reports being offline the timer is not armed
 * at all: attempts would fail and only lengthen the backoff. When the
 * network or the page comes back, the pending attempt runs at once (with a
 * little jitter) and the count starts over.
 */

import { backoffDelay, drainDelay } from './backoff.js';
import type { CloseAction } from './close-policy.js';
import type { Lifecycle } from './lifecycle.js';

export interface ReconnectTiming {
  readonly minDelayMs: number;
  readonly maxDelayMs: number;
  readonly drainJitterMs: number;
}

type ReconnectAction = Extract<CloseAction, { reconnect: true }>;

/** A connection up at least this long (ms after its welcome) resets the failure count. */
export const STABLE_MS = 5_000;

export class Reconnector {
  private failures = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private pending: (() => void) | undefined;

  constructor(
    private readonly timing: ReconnectTiming,
    private readonly lifecycle: Lifecycle | undefined,
  ) {}

  /** The delay after a connection closed with `action`; `upMs`: its time since the welcome, if it had one. */
  delayAfterClose(action: ReconnectAction, upMs: number | undefined): number {
    if (upMs !== undefined && upMs >= STABLE_MS && !action.penalize) this.failures = 0;
    if (action.delay === 'jitter') return drainDelay(this.timing.drainJitterMs);
    return this.delayAfterFailure();
  }

  /** The delay after an attempt that failed before it had a socket (e.g. `getToken` threw). */
  delayAfterFailure(): number {
    const delay = backoffDelay(this.failures, this.timing);
    this.failures += 1;
    return delay;
  }

  /** The backoff delay for the `failures`-th retry of something else (token refresh). */
  retryDelay(failures: number): number {
    return backoffDelay(failures, this.timing);
  }

  reset(): void {
    this.failures = 0;
  }

  /**
   * Runs `attempt` after `delayMs`. Returns `false` when the runtime is
   * offline: the attempt then waits for `resume()` (the `online` signal).
   */
  schedule(delayMs: number, attempt: () => void): boolean {
    this.cancel();
    this.pending = attempt;
    if (this.lifecycle && !this.lifecycle.isOnline()) return false;
    this.timer = setTimeout(() => this.fire(), delayMs);
    return true;
  }

  /** Whether an attempt is waiting (on its timer or for the network). */
  get waiting(): boolean {
    return this.pending !== undefined;
  }

  /** The network went away: a waiting attempt waits for it to come back. */
  pause(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The network or the page came back: a waiting attempt runs now, with a little jitter. */
  resume(): void {
    if (!this.pending) return;
    this.failures = 0;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fire(), drainDelay(Math.min(this.timing.drainJitterMs, this.timing.minDelayMs)));
  }

  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = undefined;
  }

  private fire(): void {
    const attempt = this.pending;
    this.timer = undefined;
    this.pending = undefined;
    attempt?.();
  }
}
