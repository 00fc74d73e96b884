/**
 * `@fanout/client`: the JavaScript/TypeScript client of fanout.
 *
 * This entry point is everything an application needs with JSON frames and
 * has no runtime dependency. MessagePack lives in `@fanout/client/msgpack`
 * (it needs the optional peer `@msgpack/msgpack`); the browser bundle
 * exposes this module as the global `Fanout`.
 */

export { FanoutClient } from './client.js';
export type { UrlSource } from './client.js';
export { Subscription } from './subscription.js';
export type {
  PresenceEvent,
  SubscribeOptions,
  SubscribedEvent,
  SubscriptionEvents,
  SubscriptionState,
} from './subscription.js';
export type {
  ClientEvents,
  ClientState,
  ConnectingEvent,
  DisconnectedEvent,
  HistoryOptions,
  HistoryPage,
  PresenceMember,
  PublishResult,
  RequestCallOptions,
  RoomMessage,
  StreamPosition,
  Welcome,
} from './types.js';
export type { FanoutClientOptions, HeartbeatOptions, ReconnectOptions } from './options.js';
export { FanoutError } from './errors.js';
export type { FanoutErrorKind } from './errors.js';
export { createMsgpackCodec, jsonCodec } from './codec.js';
export type { Codec, MsgpackImplementation, WireData } from './codec.js';
export type { GetToken, TokenReason } from './token.js';
export type { Lifecycle, LifecycleHandlers } from './lifecycle.js';
export { browserLifecycle } from './lifecycle.js';
export type { WebSocketConstructor, WebSocketLike } from './socket.js';
export { backoffDelay, drainDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { tokenExpiry } from './jwt.js';
export type { Listener } from './emitter.js';
