/**
 * Test tokens, HS256-signed in JS with node:crypto (claims: docs/protocol.md §2).
 * Faster than running `fanout token` for every client, and lets a test
 * choose any `exp`, including one in the past.
 */

import { createHmac } from 'node:crypto';

/** The HS256 secret of every test node. */
export const SECRET = 'test-secret-0123456789abcdef';
/** The API key of every test node. */
export const API_KEY = 'test-api-key-0123456789';

export interface Claims {
  readonly sub: string;
  readonly tenant?: string;
  readonly rooms?: readonly string[];
  /** Default: the same as `rooms`. */
  readonly publish?: readonly string[];
  readonly presence?: boolean;
  /** Lifetime in seconds from now (default 3600); may be negative. */
  readonly ttlSec?: number;
}

const b64url = (data: string | Buffer): string => Buffer.from(data).toString('base64url');

export function mintToken(claims: Claims, secret: string = SECRET): string {
  const rooms = claims.rooms ?? ['*'];
  const payload = {
    sub: claims.sub,
    tenant: claims.tenant ?? 't1',
    exp: Math.floor(Date.now() / 1000) + (claims.ttlSec ?? 3600),
    rooms,
    publish: claims.publish ?? rooms,
    ...(claims.presence === undefined ? {} : { presence: claims.presence }),
  };
  const head = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(payload))}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}
