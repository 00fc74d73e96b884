/**
 * Reads a JWT's `exp` on the client, without verifying anything.
 *
 * The client only needs to know *when* to ask for a new token (before the
 * server closes the connection with 4001 at expiry); trust is the server's
 * business. Decoding is done by hand (base64url → bytes → UTF-8 → JSON)
 * because `atob` and `TextDecoder` are not on every runtime this client
 * targets (React Native's among them).
 */

import { utf8Decode } from './utf8.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function base64urlToBytes(text: string): Uint8Array | undefined {
  const clean = text.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  const out: number[] = [];
  let buffer = 0;
  let bits = 0;
  for (const ch of clean) {
    const value = ALPHABET.indexOf(ch);
    if (value < 0) return undefined;
    buffer = (buffer << 6) | value;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((buffer >> bits) & 0xff);
    }
  }
  return Uint8Array.from(out);
}

/** The token's claims, or `undefined` if it is not a JWT with a JSON object payload. */
export function decodeClaims(token: string): { readonly [claim: string]: unknown } | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[1] === undefined) return undefined;
  const bytes = base64urlToBytes(parts[1]);
  if (!bytes) return undefined;
  try {
    const claims: unknown = JSON.parse(utf8Decode(bytes));
    return typeof claims === 'object' && claims !== null && !Array.isArray(claims)
      ? (claims as { readonly [claim: string]: unknown })
      : undefined;
  } catch {
    return undefined;
  }
}

/** The token's expiry in ms since the epoch (`exp` · 1000), or `undefined` if it has none. */
export function tokenExpiry(token: string): number | undefined {
  const exp = decodeClaims(token)?.['exp'];
  return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
}
