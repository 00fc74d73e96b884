// Checking incoming frames: known shapes pass, anything else is refused.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseServerFrame } from '#internal/frames.js';

describe('parseServerFrame', () => {
  it('accepts every frame type of the protocol', () => {
    const frames = [
      { type: 'welcome', conn: 'n-1', node: 'n', tenant: 't', user: 'u', ping_interval: 25 },
      { type: 'ack', id: 1 },
      { type: 'ack', id: 1, recovered: true, epoch: 'k3x9', offset: 57 },
      { type: 'error', id: 3, code: 403, message: 'no' },
      { type: 'pong', id: 6 },
      { type: 'presence', id: 4, room: 'lobby', members: [{ user: 'u42', conns: 2 }] },
      { type: 'message', scope: 'room', room: 'lobby', event: 'chat', data: { text: 'hi' }, id: 'm', ts: 1, offset: 3, epoch: 'e' },
      { type: 'message', scope: 'tenant', event: 'x', data: null, id: 'm', ts: 1 },
      { type: 'history', id: 7, room: 'r', epoch: 'e', offset: 2, messages: [{ type: 'message', scope: 'room', room: 'r', event: 'x', data: 1, id: 'm', ts: 1, offset: 2, epoch: 'e' }] },
      { type: 'join', room: 'r', user: 'u' },
      { type: 'leave', room: 'r', user: 'u' },
    ];
    for (const frame of frames) assert.deepEqual(parseServerFrame(frame), frame);
  });

  it('treats nil (MessagePack) optional fields as absent and ignores unknown fields', () => {
    assert.deepEqual(parseServerFrame({ type: 'ack', id: null, epoch: null, extra: 1 }), { type: 'ack' });
  });

  it('refuses unknown types and wrong field types', () => {
    const bad = [
      null,
      [],
      'ack',
      { type: 'nope' },
      { type: 'welcome', conn: 1 },
      { type: 'ack', id: '1' },
      { type: 'message', scope: 'room', event: 'e', id: 7, ts: 1 },
      { type: 'message', scope: 'moon', event: 'e', id: 'm', ts: 1 },
      { type: 'presence', room: 'r', members: [{ user: 'u' }] },
      { type: 'history', room: 'r', epoch: 'e', offset: 1, messages: [{}] },
      { type: 'join', room: 'r' },
    ];
    for (const frame of bad) assert.equal(parseServerFrame(frame), undefined, JSON.stringify(frame));
  });
});
