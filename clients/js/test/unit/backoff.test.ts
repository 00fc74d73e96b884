// The reconnect delay function: exponential window, full jitter, both bounds.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { backoffCeiling, backoffDelay, drainDelay } from '#internal/backoff.js';

const opts = { minDelayMs: 500, maxDelayMs: 30_000 };

describe('backoffDelay', () => {
  it('draws from [min, min·2^(n+1)] and doubles the window per failure', () => {
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6].map((n) => backoffCeiling(n, opts)),
      [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000],
    );
    for (let n = 0; n < 8; n += 1) {
      assert.equal(backoffDelay(n, opts, () => 0), 500, 'random 0 gives the floor');
      assert.equal(backoffDelay(n, opts, () => 0.999999), backoffCeiling(n, opts), 'random → 1 gives the ceiling');
    }
  });

  it('stays within [minDelayMs, maxDelayMs] for any failure count and random draw', () => {
    for (const n of [0, 1, 5, 30, 31, 1_000, 1e9, Number.MAX_SAFE_INTEGER, -3]) {
      for (let i = 0; i < 200; i += 1) {
        const d = backoffDelay(n, opts);
        assert.ok(d >= 500 && d <= 30_000, `delay ${d} after ${n} failures`);
        assert.ok(Number.isInteger(d));
      }
    }
  });

  it('is full jitter: draws spread over the whole window', () => {
    const draws = Array.from({ length: 2_000 }, () => backoffDelay(3, opts));
    const ceiling = backoffCeiling(3, opts);
    const below = draws.filter((d) => d < 500 + (ceiling - 500) / 4).length;
    const above = draws.filter((d) => d > ceiling - (ceiling - 500) / 4).length;
    assert.ok(below > 300 && above > 300, `quartiles ${below} / ${above} of 2000`);
  });

  it('clamps nonsense: min below 1 ms, max below min, random outside [0, 1)', () => {
    assert.equal(backoffDelay(0, { minDelayMs: 0, maxDelayMs: 0 }, () => 0.5), 1);
    assert.equal(backoffDelay(4, { minDelayMs: 100, maxDelayMs: 50 }, () => 0.5), 100);
    assert.equal(backoffDelay(0, opts, () => 7), 1_000);
    assert.equal(backoffDelay(0, opts, () => Number.NaN), 500);
  });
});

describe('drainDelay', () => {
  it('is uniform in [0, jitter]', () => {
    assert.equal(drainDelay(1_000, () => 0), 0);
    assert.equal(drainDelay(1_000, () => 0.999999), 1_000);
    for (let i = 0; i < 200; i += 1) {
      const d = drainDelay(1_000);
      assert.ok(d >= 0 && d <= 1_000, `${d}`);
    }
    assert.equal(drainDelay(-5), 0);
  });
});
