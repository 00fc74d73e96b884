// Client-side `exp` decoding (no verification).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { decodeClaims, tokenExpiry } from '#internal/jwt.js';
import { mintToken } from '../support/tokens.js';

const jwt = (payload: unknown): string =>
  `${Buffer.from('{"alg":"HS256"}').toString('base64url')}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.sig`;

describe('tokenExpiry', () => {
  it('reads exp in ms from a signed token', () => {
    const token = mintToken({ sub: 'u1', ttlSec: 60 });
    const exp = tokenExpiry(token);
    assert.ok(exp !== undefined && Math.abs(exp - (Date.now() + 60_000)) < 2_000, String(exp));
  });

  it('decodes UTF-8 claims and every base64url length', () => {
    for (const sub of ['a', 'ab', 'abc', 'ü-用户-🙂', 'x'.repeat(37)]) {
      assert.deepEqual(decodeClaims(jwt({ sub, exp: 1 })), { sub, exp: 1 });
    }
  });

  it('returns undefined for anything that is not a JWT with a numeric exp', () => {
    for (const bad of ['', 'abc', 'a.b', 'a.b.c.d', 'a.!!!.c', jwt([1, 2]), jwt('s'), jwt({ exp: '1' }), jwt({})]) {
      assert.equal(tokenExpiry(bad), undefined, bad);
    }
  });
});
