/**
 * Renews the token of a live connection before it expires.
 *
 * The server closes a connection with 4001 at its token's `exp` unless a
 * `refresh` frame with a later token arrived first (docs/protocol.md §2,
 * §3). While connected, this schedules `getToken` ahead of `exp` (see
 * token.ts for the margin), sends the new token with `refresh`, and starts
 * over with the new expiry. A failure — `getToken` throwing, or the server
 * refusing the token — is reported as an `error` event and retried with
 * backoff while the current token is still valid; past its expiry the
 * server closes with 4001 and the reconnect path asks for a token again.
 */

import { toFanoutError } from './errors.js';
import type { FanoutError } from './errors.js';
import type { TokenManager } from './token.js';

/** `setTimeout` fires at once beyond this (2^31 − 1 ms, about 24.8 days). */
const MAX_TIMER_MS = 2_147_483_647;

export interface RefreshDeps {
  readonly tokens: TokenManager;
  /** Sends `refresh` on the live connection; settles with the server's answer. */
  readonly sendRefresh: (token: string) => Promise<void>;
  readonly onError: (error: FanoutError) => void;
  /** Delay before retry number `failures` (0-based). */
  readonly retryDelay: (failures: number) => number;
}

export class TokenRefresher {
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Bumped by `start`/`stop`, so a refresh that outlives its connection does nothing. */
  private generation = 0;
  private failures = 0;

  constructor(private readonly deps: RefreshDeps) {}

  /** Starts renewing for a new (welcomed) connection. */
  start(): void {
    this.stop();
    if (!this.deps.tokens.renewable) return;
    this.failures = 0;
    this.scheduleNext(this.generation);
  }

  stop(): void {
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private scheduleNext(generation: number): void {
    const due = this.deps.tokens.refreshInMs();
    if (due === undefined) return;
    this.timer = setTimeout(
      () => {
        const left = this.deps.tokens.refreshInMs();
        if (left !== undefined && left > 0) this.scheduleNext(generation);
        else void this.refresh(generation);
      },
      Math.min(MAX_TIMER_MS, Math.max(0, due)),
    );
  }

  private async refresh(generation: number): Promise<void> {
    try {
      const token = await this.deps.tokens.get('refresh', true);
      if (generation !== this.generation) return;
      await this.deps.sendRefresh(token);
      if (generation !== this.generation) return;
      this.failures = 0;
      this.scheduleNext(generation);
    } catch (thrown) {
      if (generation !== this.generation) return;
      this.deps.onError(toFanoutError('token', 'token refresh failed', thrown));
      const delay = this.deps.retryDelay(this.failures);
      this.failures += 1;
      const expiry = this.deps.tokens.expiry;
      if (expiry === undefined || Date.now() + delay < expiry) {
        this.timer = setTimeout(() => void this.refresh(generation), delay);
      }
    }
  }
}
