// The exactly-once filter of a subscription's stream position.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { StreamCursor } from '#internal/cursor.js';

/** Feeds offsets of epoch `e` and returns those delivered. */
function feed(cursor: StreamCursor, offsets: number[], epoch = 'e'): number[] {
  return offsets.filter((o) => cursor.accept(epoch, o));
}

describe('StreamCursor', () => {
  it('delivers each offset once and in order, dropping repeats', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 3 });
    assert.deepEqual(feed(c, [1, 3, 4, 5, 5, 4, 6, 2, 7]), [4, 5, 6, 7]);
    assert.deepEqual(c.position, { epoch: 'e', offset: 7 });
  });

  it('takes the first positioned message as the baseline when it has none', () => {
    const c = new StreamCursor();
    assert.equal(c.position, undefined);
    assert.deepEqual(feed(c, [10, 11, 10]), [10, 11]);
  });

  it('always delivers messages without a position (rooms without history)', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 5 });
    assert.equal(c.accept(undefined, undefined), true);
    assert.equal(c.accept(undefined, undefined), true);
  });

  it('starts over on a new epoch', () => {
    const c = new StreamCursor({ epoch: 'old', offset: 50 });
    assert.deepEqual(feed(c, [1, 2], 'new'), [1, 2]);
    assert.deepEqual(c.position, { epoch: 'new', offset: 2 });
  });

  it('counts its own publish when the ack follows the message below it', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 0 });
    assert.deepEqual(feed(c, [1]), [1]);
    c.published('e', 2);
    assert.deepEqual(c.position, { epoch: 'e', offset: 2 });
    assert.deepEqual(feed(c, [3]), [3]);
  });

  it('does not skip messages below an own offset acked early (another node is slower)', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 0 });
    c.published('e', 2); // our publish got offset 2; message 1 is still on its way
    assert.deepEqual(c.position, { epoch: 'e', offset: 0 }, 'the cursor does not jump over 1');
    assert.deepEqual(feed(c, [1]), [1]);
    assert.deepEqual(c.position, { epoch: 'e', offset: 2 }, 'the own offset is absorbed');
    assert.deepEqual(feed(c, [2, 3]), [3]);
  });

  it('skips its own message when a replay after a reconnect brings it back', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 3 });
    c.published('e', 5); // 4 was never delivered: the connection dropped
    assert.deepEqual(c.position, { epoch: 'e', offset: 3 }, 'since = 3 on the resubscribe');
    assert.deepEqual(feed(c, [4, 5, 6]), [4, 6], 'replay 4, 5 (own), 6');
  });

  it('ignores acks of another epoch or at or below the cursor', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 5 });
    c.published('x', 6);
    c.published('e', 4);
    c.published(undefined, undefined);
    assert.deepEqual(feed(c, [6]), [6]);
  });

  it('reset() sets a new baseline and forgets own offsets', () => {
    const c = new StreamCursor({ epoch: 'e', offset: 1 });
    c.published('e', 3);
    c.reset({ epoch: 'f', offset: 10 });
    assert.deepEqual(feed(c, [10, 11], 'f'), [11]);
  });
});
