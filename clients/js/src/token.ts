/**
 * Where tokens come from and when a new one is due.
 *
 * A client has either a fixed `token` or a `getToken` callback. With the
 * callback, the token is renewed ahead of its `exp` (read client-side from
 * the JWT, see jwt.ts) so the live connection can send it with `refresh`
 * before the server closes it with 4001; after a 4001 a fresh one is asked
 * for regardless. Concurrent requests for a token share one call, so a
 * reconnect and a scheduled refresh racing each other cost one `getToken`.
 */

import { FanoutError, toFanoutError } from './errors.js';
import { tokenExpiry } from './jwt.js';

/** Why `getToken` is being called. */
export type TokenReason =
  /** First connection, or a reconnect whose cached token is missing or about to expire. */
  | 'connect'
  /** Scheduled renewal before `exp`, sent on the live connection with `refresh`. */
  | 'refresh'
  /** The server refused or expired the previous token (close 4001). */
  | 'rejected';

export type GetToken = (context: { readonly reason: TokenReason }) => string | Promise<string>;

export class TokenManager {
  private token: string | undefined;
  private expiresAt: number | undefined;
  /** Time to renew before `exp`, as decided when the token was obtained. */
  private marginMs = 0;
  private inFlight: Promise<string> | undefined;

  constructor(
    initial: string | undefined,
    private readonly getToken: GetToken | undefined,
    private readonly refreshMarginMs: number,
  ) {
    if (initial !== undefined) this.store(initial);
  }

  /** Whether a new token can be obtained (a `getToken` callback was given). */
  get renewable(): boolean {
    return this.getToken !== undefined;
  }

  /** The current token's expiry (ms since the epoch), if it has a readable `exp`. */
  get expiry(): number | undefined {
    return this.expiresAt;
  }

  /** Whether the current token has expired (false when its expiry is unknown). */
  expired(now: number = Date.now()): boolean {
    return this.expiresAt !== undefined && now >= this.expiresAt;
  }

  /**
   * A token to connect or refresh with. Without `force`, the cached one is
   * reused unless it is due for renewal; with `force` (or when none is
   * cached), `getToken` is called.
   */
  async get(reason: TokenReason, force = false): Promise<string> {
    const due = this.refreshInMs();
    const usable = this.token !== undefined && !force && (due === undefined || due > 0);
    if (usable || !this.getToken) {
      if (this.token === undefined) throw new FanoutError('token', 'no token: pass `token` or `getToken`');
      return this.token;
    }
    if (!this.inFlight) {
      const call = this.call(this.getToken, reason);
      this.inFlight = call;
      const clear = (): void => {
        if (this.inFlight === call) this.inFlight = undefined;
      };
      call.then(clear, clear);
    }
    return this.inFlight;
  }

  /** Ms until the current token should be renewed (≤ 0: now); `undefined`: never (no `exp`, or not renewable). */
  refreshInMs(now: number = Date.now()): number | undefined {
    if (this.expiresAt === undefined || this.token === undefined) return undefined;
    return this.expiresAt - this.marginMs - now;
  }

  private async call(getToken: GetToken, reason: TokenReason): Promise<string> {
    let token: unknown;
    try {
      token = await getToken({ reason });
    } catch (thrown) {
      throw toFanoutError('token', 'getToken failed', thrown);
    }
    if (typeof token !== 'string' || token.length === 0) {
      throw new FanoutError('token', 'getToken returned no token (expected a non-empty string)');
    }
    this.store(token);
    return token;
  }

  /**
   * Renew `refreshMarginMs` before `exp`, but never more than half-way
   * through the token's life (a 10 s token is renewed after 5 s, not at once).
   */
  private store(token: string): void {
    this.token = token;
    this.expiresAt = tokenExpiry(token);
    const lifetime = this.expiresAt === undefined ? 0 : Math.max(0, this.expiresAt - Date.now());
    this.marginMs = Math.min(this.refreshMarginMs, lifetime / 2);
  }
}
