// What each close code makes the client do (docs/protocol.md §4).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { closeAction } from '#internal/close-policy.js';

describe('closeAction', () => {
  it('stops on 1009 and 4000 (retrying would repeat the fault)', () => {
    for (const code of [1009, 4000]) assert.equal(closeAction(code).reconnect, false, String(code));
  });

  it('reconnects at once with jitter on 1012', () => {
    assert.deepEqual(closeAction(1012), { reconnect: true, delay: 'jitter', penalize: false, renewToken: false });
  });

  it('renews the token on 4001', () => {
    assert.deepEqual(closeAction(4001), { reconnect: true, delay: 'backoff', penalize: false, renewToken: true });
  });

  it('backs off on 4003 and 4008, even after a welcome', () => {
    for (const code of [4003, 4008]) {
      assert.deepEqual(closeAction(code), { reconnect: true, delay: 'backoff', penalize: true, renewToken: false });
    }
  });

  it('reconnects with backoff on 4009, 4010 and anything else', () => {
    for (const code of [4009, 4010, 1000, 1001, 1005, 1006, 1011, 1013, 4999]) {
      assert.deepEqual(closeAction(code), { reconnect: true, delay: 'backoff', penalize: false, renewToken: false }, String(code));
    }
  });
});
