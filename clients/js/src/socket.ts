/**
 * The WebSocket this client runs on, whatever the runtime provides.
 *
 * Browsers, Node ≥ 22, Deno and Bun have a global `WebSocket`; Node 20 and
 * React Native need one passed in (`ws`, or React Native's own). Only the
 * common subset of the WHATWG interface is used, described structurally so
 * that any of them fits without adapters. The `Authorization` header is
 * passed as a third constructor argument `{ headers }`, which `ws` and
 * React Native understand; browsers cannot send headers at all, which is
 * why the default is the first-frame `auth`.
 */

import type { WireData } from './codec.js';

/** The events this client reads from a socket. */
export interface SocketMessageEvent {
  readonly data: unknown;
}
export interface SocketCloseEvent {
  readonly code: number;
  readonly reason: string;
}
export interface SocketErrorEvent {
  readonly message?: unknown;
  readonly error?: unknown;
}

/**
 * The subset of a WHATWG `WebSocket` the client uses.
 *
 * The handler properties take `never` so that implementations whose event
 * types are richer (the DOM's `MessageEvent`, `ws`'s own classes) are
 * assignable; the client reads only the fields typed above.
 */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drops the TCP connection without a closing handshake. */
  terminate?: () => void;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
}

export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[], options?: { headers?: { [name: string]: string } }): WebSocketLike;
}

/** `readyState` of an open socket (the WHATWG constant). */
export const OPEN = 1;

/** The runtime's global `WebSocket`, if it has one. */
export function globalWebSocket(): WebSocketConstructor | undefined {
  const candidate = (globalThis as { WebSocket?: unknown }).WebSocket;
  return typeof candidate === 'function' ? (candidate as WebSocketConstructor) : undefined;
}

/**
 * A received message as text or bytes. Binary messages arrive as an
 * `ArrayBuffer` (browsers, `ws` with `binaryType = "arraybuffer"`) or a
 * view such as Node's `Buffer`; anything else (a `Blob`) is not supported.
 */
export function toWireData(data: unknown): WireData | undefined {
  if (typeof data === 'string') return data;
  // `instanceof` fails for buffers from another realm (an iframe, a vm context): check the tag too.
  if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === '[object ArrayBuffer]') {
    return new Uint8Array(data as ArrayBuffer);
  }
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

/** A readable description of an `error` event (browsers give none; `ws` gives the cause). */
export function describeSocketError(event: SocketErrorEvent | undefined): string {
  const message = event?.message ?? (event?.error instanceof Error ? event.error.message : undefined);
  return typeof message === 'string' && message.length > 0 ? message : 'WebSocket error';
}
