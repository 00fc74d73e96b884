// When the failure count (and so the backoff window) grows and starts over.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { closeAction } from '#internal/close-policy.js';
import { Reconnector, STABLE_MS } from '#internal/reconnector.js';

const timing = { minDelayMs: 100, maxDelayMs: 100_000, drainJitterMs: 50 };
const action = (code: number) => {
  const a = closeAction(code);
  assert.ok(a.reconnect);
  return a;
};

/** Runs `delay` many times and returns the largest value seen (≈ the window's ceiling). */
function ceiling(delay: () => number, reset: () => void): number {
  let max = 0;
  for (let i = 0; i < 300; i += 1) {
    reset();
    max = Math.max(max, delay());
  }
  return max;
}

describe('Reconnector', () => {
  it('grows the window with consecutive failures and starts over after a stable connection', () => {
    const r = new Reconnector(timing, undefined);
    const windows = [0, 1, 2, 3].map(() => r.delayAfterClose(action(1006), undefined));
    windows.forEach((d, n) => assert.ok(d >= 100 && d <= 100 * 2 ** (n + 1), `#${n}: ${d}`));
    const afterStable = r.delayAfterClose(action(4009), STABLE_MS);
    assert.ok(afterStable <= 200, `reset: ${afterStable}`);
  });

  it('keeps counting when every welcome is followed by an immediate close', () => {
    let r = new Reconnector(timing, undefined);
    const grown = ceiling(
      () => {
        for (let i = 0; i < 5; i += 1) r.delayAfterClose(action(4009), 50);
        return r.delayAfterClose(action(4009), 50);
      },
      () => {
        r = new Reconnector(timing, undefined);
      },
    );
    assert.ok(grown > 3_200, `the 6th quick close draws from [100, 12 800]: max seen ${grown}`);
  });

  it('4003 and 4008 keep counting even after a long connection', () => {
    let r = new Reconnector(timing, undefined);
    const grown = ceiling(
      () => {
        for (let i = 0; i < 5; i += 1) r.delayAfterClose(action(4008), 60_000);
        return r.delayAfterClose(action(4003), 60_000);
      },
      () => {
        r = new Reconnector(timing, undefined);
      },
    );
    assert.ok(grown > 3_200, `max seen ${grown}`);
  });

  it('a drain (1012) waits only the jitter, whatever the count', () => {
    const r = new Reconnector(timing, undefined);
    for (let i = 0; i < 10; i += 1) r.delayAfterClose(action(1006), undefined);
    for (let i = 0; i < 50; i += 1) assert.ok(r.delayAfterClose(action(1012), 60_000) <= 50);
  });

  it('waits for the network while offline, and resume() runs the attempt soon', async () => {
    let online = false;
    const r = new Reconnector(timing, { isOnline: () => online, listen: () => () => {} });
    let ran = 0;
    assert.equal(r.schedule(10, () => (ran += 1)), false, 'not armed while offline');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(ran, 0);
    online = true;
    r.resume();
    await new Promise((resolve) => setTimeout(resolve, 120));
    assert.equal(ran, 1);
  });
});
