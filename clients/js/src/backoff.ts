/**
 * Reconnect delays: exponential backoff with full jitter, bounded.
 *
 * Why jitter on every delay: when a node dies or drains, all its clients
 * see the close at the same moment; without randomness they would all come
 * back at the same moment too. Full jitter (a uniform draw over the whole
 * window, not a small wobble around a fixed delay) spreads them best. The
 * window grows exponentially with consecutive failures and is bounded on
 * both sides: never below `minDelayMs` (no hot loop against a node that
 * refuses), never above `maxDelayMs` (a client comes back within a known
 * time once the server is healthy again).
 */

export interface BackoffOptions {
  /** Smallest delay, in ms (≥ 1). */
  readonly minDelayMs: number;
  /** Largest delay, in ms (≥ `minDelayMs`). */
  readonly maxDelayMs: number;
}

/** Beyond this many failures the window is at its maximum anyway. */
const MAX_EXPONENT = 30;

/** The upper end of the window after `failures` consecutive failures (0 = first retry). */
export function backoffCeiling(failures: number, options: BackoffOptions): number {
  const min = Math.max(1, options.minDelayMs);
  const max = Math.max(min, options.maxDelayMs);
  const exponent = Math.min(Math.max(0, Math.floor(failures)), MAX_EXPONENT) + 1;
  return Math.min(max, min * 2 ** exponent);
}

/**
 * The delay before the next attempt after `failures` consecutive failures:
 * uniform in `[minDelayMs, min(maxDelayMs, minDelayMs · 2^(failures+1))]`.
 * `random` returns a number in [0, 1), like `Math.random`.
 */
export function backoffDelay(failures: number, options: BackoffOptions, random: () => number = Math.random): number {
  const min = Math.max(1, options.minDelayMs);
  const ceiling = backoffCeiling(failures, options);
  return Math.round(min + clamp01(random()) * (ceiling - min));
}

/**
 * The delay after a drain (close 1012): "reconnect at once, with jitter" —
 * uniform in `[0, jitterMs]`, so the clients of a draining node do not all
 * arrive on the others in the same millisecond.
 */
export function drainDelay(jitterMs: number, random: () => number = Math.random): number {
  return Math.round(clamp01(random()) * Math.max(0, jitterMs));
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0;
}
