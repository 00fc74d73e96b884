/**
 * Public types shared by the client and its subscriptions: what listeners
 * receive and what requests resolve with. Wire frames (frames.ts) are
 * mapped to these so that applications see stable, readable shapes, not
 * protocol details such as `type` fields and request ids.
 */

import type { FanoutError } from './errors.js';
import type { MessageFrame, PresenceMember, StreamPosition } from './frames.js';

/** The server's `welcome`: who this connection is. */
export interface Welcome {
  /** Connection id (`<node>-<n>`). */
  readonly conn: string;
  readonly node: string;
  readonly tenant: string;
  readonly user: string;
  /** Seconds between the server's WebSocket pings (also the client's liveness interval by default). */
  readonly pingInterval: number;
}

/**
 * A delivered message: the `message` frame without its `type`. `user` and
 * `tenant` messages go to the client's `message` event, room messages to
 * their subscription's.
 */
export type RoomMessage = Omit<MessageFrame, 'type'>;

/** Per-call options of requests. */
export interface RequestCallOptions {
  /** How long to wait for the server's answer, in ms, from the call (default: `requestTimeoutMs`). */
  readonly timeoutMs?: number;
}

export interface HistoryOptions extends RequestCallOptions {
  /** At most this many messages (the server caps it at the room's history size). */
  readonly limit?: number;
  /** Only messages after this position (to page forward). Without it: the latest `limit`. */
  readonly since?: StreamPosition;
}

export interface HistoryPage {
  readonly room: string;
  readonly epoch: string;
  /** The room's latest offset. */
  readonly offset: number;
  /** Oldest first, each with its `offset` and `epoch`. */
  readonly messages: readonly RoomMessage[];
}

/** A publish's `ack`: in rooms with history, the published message's position. */
export interface PublishResult {
  readonly offset?: number;
  readonly epoch?: string;
}

export type ClientState =
  /** Not connected and not trying (before `connect()`, after `disconnect()`, or after a close that is not retried). */
  | 'disconnected'
  /** A connection attempt is under way (token, WebSocket handshake, authentication). */
  | 'connecting'
  /** Welcomed: requests are sent at once. */
  | 'connected'
  /** Waiting before the next attempt (backoff, or for the network to come back). */
  | 'reconnecting';

export interface ConnectingEvent {
  /** 1 for the first attempt after `connect()` or after a welcomed connection closed, then 2, 3, … */
  readonly attempt: number;
}

export interface DisconnectedEvent {
  /** The close code: the server's, 1000 for `disconnect()`, 1006 for network failures and client-detected timeouts. */
  readonly code: number;
  readonly reason: string;
  /** Whether the client will try again. */
  readonly willReconnect: boolean;
  /** The delay before the next attempt (when `willReconnect`; absent while waiting for the network). */
  readonly delayMs?: number;
}

export interface ClientEvents {
  state: { readonly state: ClientState; readonly previous: ClientState };
  connecting: ConnectingEvent;
  connected: Welcome;
  disconnected: DisconnectedEvent;
  /** Anything that went wrong outside a request's own promise: token failures, refused refreshes, closes that are not retried, unexpected frames. */
  error: FanoutError;
  /** Messages addressed to this user (`scope: "user"`) or to the whole tenant (`scope: "tenant"`). */
  message: RoomMessage;
}

export type { PresenceMember, StreamPosition };
