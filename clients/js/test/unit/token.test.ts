// When tokens are renewed, and how getToken is called.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { TokenManager } from '#internal/token.js';
import type { TokenReason } from '#internal/token.js';
import { mintToken } from '../support/tokens.js';

describe('TokenManager', () => {
  it('renews a long-lived token the margin before exp', async () => {
    const tokens = new TokenManager(undefined, () => mintToken({ sub: 'u', ttlSec: 3_600 }), 30_000);
    await tokens.get('connect');
    const due = tokens.refreshInMs() ?? 0;
    assert.ok(Math.abs(due - (3_600_000 - 30_000)) < 2_000, String(due));
  });

  it('renews a short-lived token half-way through its life', async () => {
    const tokens = new TokenManager(undefined, () => mintToken({ sub: 'u', ttlSec: 10 }), 30_000);
    await tokens.get('connect');
    const due = tokens.refreshInMs() ?? 0;
    assert.ok(due > 3_000 && due <= 5_000, String(due));
  });

  it('reuses the cached token until forced or due, and shares concurrent calls', async () => {
    const reasons: TokenReason[] = [];
    const tokens = new TokenManager(
      undefined,
      async ({ reason }) => {
        reasons.push(reason);
        await new Promise((resolve) => setTimeout(resolve, 10));
        return mintToken({ sub: 'u', ttlSec: 3_600 });
      },
      30_000,
    );
    const [a, b] = await Promise.all([tokens.get('connect'), tokens.get('connect')]);
    assert.equal(a, b);
    assert.equal(await tokens.get('connect'), a);
    await tokens.get('rejected', true);
    assert.deepEqual(reasons, ['connect', 'rejected']);
  });

  it('reports getToken failures and unusable answers as token errors', async () => {
    const throwing = new TokenManager(undefined, () => {
      throw new Error('auth service down');
    }, 30_000);
    await assert.rejects(throwing.get('connect'), { name: 'FanoutError', kind: 'token', message: /auth service down/ });
    const empty = new TokenManager(undefined, () => '', 30_000);
    await assert.rejects(empty.get('connect'), { kind: 'token' });
  });

  it('a static token is returned as is and is not renewable', async () => {
    const token = mintToken({ sub: 'u', ttlSec: -10 });
    const tokens = new TokenManager(token, undefined, 30_000);
    assert.equal(tokens.renewable, false);
    assert.equal(await tokens.get('rejected', true), token);
    assert.equal(tokens.expired(), true);
  });
});
