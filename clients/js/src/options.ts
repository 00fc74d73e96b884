/**
 * The client's options, their defaults, and their validation.
 *
 * Resolved once in the constructor, so the rest of the client reads plain
 * numbers and never re-checks `undefined`; a wrong combination (no token
 * source, no WebSocket implementation) fails right there with a message
 * that says what to pass, instead of at the first connection attempt.
 */

import { jsonCodec } from './codec.js';
import type { Codec } from './codec.js';
import { browserLifecycle } from './lifecycle.js';
import type { Lifecycle } from './lifecycle.js';
import { globalWebSocket } from './socket.js';
import type { WebSocketConstructor } from './socket.js';
import type { GetToken } from './token.js';

export interface ReconnectOptions {
  /** Reconnect automatically after closes that allow it (default `true`). */
  readonly enabled?: boolean;
  /** Smallest backoff delay, ms (default 500). */
  readonly minDelayMs?: number;
  /** Largest backoff delay, ms (default 30 000). */
  readonly maxDelayMs?: number;
  /** After a drain (1012) the client reconnects after a uniform random delay in [0, this], ms (default 1 000). */
  readonly drainJitterMs?: number;
}

export interface HeartbeatOptions {
  /** Quiet time before the client sends a `ping`, ms (default: the welcome's `ping_interval`). */
  readonly intervalMs?: number;
  /** How long a ping may go unanswered before the connection is declared dead, ms (default: the interval, within 1–10 s). */
  readonly timeoutMs?: number;
}

export interface FanoutClientOptions {
  /** A fixed token. With no `getToken` it cannot be renewed: its expiry ends the client. */
  readonly token?: string;
  /** Returns a (new) token; called to connect, before the current token's `exp`, and after a 4001. */
  readonly getToken?: GetToken;
  /** `jsonCodec` (default) or a MessagePack codec (`msgpackCodec` from `@fanout/client/msgpack`). */
  readonly codec?: Codec;
  /**
   * `frame` (default): authenticate with a first `auth` frame, which works everywhere.
   * `header`: send `Authorization: Bearer …` on the upgrade; needs a WebSocket
   * implementation that accepts `{ headers }` (Node's `ws`, React Native) — browsers cannot.
   */
  readonly auth?: 'frame' | 'header';
  /** The WebSocket implementation (default: the global `WebSocket`). Node 20: pass `ws`. */
  readonly WebSocket?: WebSocketConstructor;
  /** Default timeout of every request, ms, counted from the call (default 10 000). */
  readonly requestTimeoutMs?: number;
  /** Time from opening the socket to the `welcome`, ms (default 10 000). */
  readonly connectTimeoutMs?: number;
  /** Requests made while not connected are queued up to this many, then rejected (`queue_full`); 0 rejects them all (default 100). */
  readonly maxQueuedRequests?: number;
  /** Renew the token this long before its `exp`, ms, but at most half-way through its life (default 30 000). */
  readonly tokenRefreshMarginMs?: number;
  readonly reconnect?: ReconnectOptions;
  readonly heartbeat?: HeartbeatOptions;
  /** Online/offline and visibility signals (default: the browser's when present); `null` disables them. */
  readonly lifecycle?: Lifecycle | null;
}

export interface ResolvedOptions {
  readonly token: string | undefined;
  readonly getToken: GetToken | undefined;
  readonly codec: Codec;
  readonly auth: 'frame' | 'header';
  readonly WebSocket: WebSocketConstructor;
  readonly requestTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly maxQueuedRequests: number;
  readonly tokenRefreshMarginMs: number;
  readonly reconnect: {
    readonly enabled: boolean;
    readonly minDelayMs: number;
    readonly maxDelayMs: number;
    readonly drainJitterMs: number;
  };
  readonly heartbeatIntervalMs: number | undefined;
  readonly heartbeatTimeoutMs: number | undefined;
  readonly lifecycle: Lifecycle | undefined;
}

function duration(name: string, value: number | undefined, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    throw new TypeError(`FanoutClient: \`${name}\` must be a number ≥ ${min} (got ${String(value)})`);
  }
  return value;
}

export function resolveOptions(options: FanoutClientOptions): ResolvedOptions {
  if (options.token === undefined && options.getToken === undefined) {
    throw new TypeError('FanoutClient: pass `token` or `getToken`');
  }
  const WebSocket = options.WebSocket ?? globalWebSocket();
  if (!WebSocket) {
    throw new TypeError(
      'FanoutClient: this runtime has no global WebSocket; pass one as the `WebSocket` option (e.g. `import WebSocket from "ws"`)',
    );
  }
  const reconnect = options.reconnect ?? {};
  const minDelayMs = duration('reconnect.minDelayMs', reconnect.minDelayMs, 500, 1);
  const heartbeat = options.heartbeat ?? {};
  return {
    token: options.token,
    getToken: options.getToken,
    codec: options.codec ?? jsonCodec,
    auth: options.auth ?? 'frame',
    WebSocket,
    requestTimeoutMs: duration('requestTimeoutMs', options.requestTimeoutMs, 10_000, 1),
    connectTimeoutMs: duration('connectTimeoutMs', options.connectTimeoutMs, 10_000, 1),
    maxQueuedRequests: Math.floor(duration('maxQueuedRequests', options.maxQueuedRequests, 100)),
    tokenRefreshMarginMs: duration('tokenRefreshMarginMs', options.tokenRefreshMarginMs, 30_000),
    reconnect: {
      enabled: reconnect.enabled ?? true,
      minDelayMs,
      maxDelayMs: duration('reconnect.maxDelayMs', reconnect.maxDelayMs, Math.max(30_000, minDelayMs), minDelayMs),
      drainJitterMs: duration('reconnect.drainJitterMs', reconnect.drainJitterMs, 1_000),
    },
    heartbeatIntervalMs: heartbeat.intervalMs === undefined ? undefined : duration('heartbeat.intervalMs', heartbeat.intervalMs, 0, 1),
    heartbeatTimeoutMs: heartbeat.timeoutMs === undefined ? undefined : duration('heartbeat.timeoutMs', heartbeat.timeoutMs, 0, 1),
    lifecycle: options.lifecycle === null ? undefined : (options.lifecycle ?? browserLifecycle()),
  };
}
