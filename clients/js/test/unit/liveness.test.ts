// The client-side dead-connection detector, with short real timers.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Liveness } from '#internal/liveness.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function watch(intervalMs: number, timeoutMs: number, onPing: (l: Liveness) => void = () => {}) {
  const state = { pings: 0, dead: undefined as number | undefined, liveness: undefined as Liveness | undefined };
  const liveness = new Liveness({
    intervalMs,
    timeoutMs,
    sendPing: () => {
      state.pings += 1;
      onPing(liveness);
    },
    onDead: (silentMs) => {
      state.dead = silentMs;
    },
  });
  state.liveness = liveness;
  return state;
}

describe('Liveness', () => {
  it('pings after a quiet interval and declares the connection dead when nothing answers', async () => {
    const s = watch(60, 60);
    await sleep(40);
    assert.equal(s.pings, 0, 'not before the interval');
    await sleep(60);
    assert.equal(s.pings, 1);
    assert.equal(s.dead, undefined);
    await sleep(100);
    assert.ok(s.dead !== undefined && s.dead >= 110, `dead after ${s.dead} ms of silence`);
  });

  it('any inbound frame answers the ping; traffic postpones pings', async () => {
    const s = watch(60, 60, (l) => setTimeout(() => l.touch(), 5));
    const busy = setInterval(() => s.liveness?.touch(), 20);
    await sleep(150);
    assert.equal(s.pings, 0, 'a busy connection is never pinged');
    clearInterval(busy);
    await sleep(300);
    assert.ok(s.pings >= 2, `${s.pings} pings`);
    assert.equal(s.dead, undefined);
    s.liveness?.stop();
  });

  it('a timer that fires late (a throttled background tab) does not kill a connection that answered', async () => {
    const s = watch(30, 30, (l) => setTimeout(() => l.touch(), 1));
    await sleep(35); // the ping is sent; its answer and the check are both due
    const blockedUntil = Date.now() + 200;
    while (Date.now() < blockedUntil) {
      // block the event loop: every timer is now late
    }
    await sleep(20);
    assert.equal(s.dead, undefined);
    s.liveness?.stop();
  });

  it('checkNow() pings at once, and stop() ends everything', async () => {
    const s = watch(10_000, 50);
    s.liveness?.checkNow();
    assert.equal(s.pings, 1);
    await sleep(80);
    assert.ok(s.dead !== undefined);
    const quiet = watch(10_000, 50);
    quiet.liveness?.stop();
    quiet.liveness?.checkNow();
    await sleep(80);
    assert.deepEqual([quiet.pings, quiet.dead], [0, undefined]);
  });
});
