/**
 * Subscriptions: a room's messages, presence events and recovery state.
 *
 * A subscription outlives connections. The client resends it after every
 * welcome, with `since` = the last position delivered (see cursor.ts), and
 * the `subscribed` event says whether the server `recovered` everything
 * missed. Messages go through the cursor, so a recovered stream reaches
 * `message` listeners exactly once and in order.
 *
 * The public `Subscription` is a thin handle; the state lives in a
 * `SubscriptionRecord` that only the client touches. That keeps the
 * internal entry points (acks, deliveries) out of the public API.
 */

import { StreamCursor } from './cursor.js';
import { Emitter } from './emitter.js';
import type { Listener } from './emitter.js';
import type { FanoutError } from './errors.js';
import type { AckFrame, JoinLeaveFrame, MessageFrame, PresenceMember, StreamPosition } from './frames.js';
import type { HistoryOptions, HistoryPage, PublishResult, RequestCallOptions, RoomMessage } from './types.js';

export interface SubscribeOptions {
  /** Also receive `join` / `leave` events for the room. */
  readonly presenceEvents?: boolean;
  /** Start from this position (e.g. persisted from an earlier session): missed messages are replayed if still in history. */
  readonly since?: StreamPosition;
  /** Timeout of each subscribe request, in ms (default: the client's `requestTimeoutMs`). */
  readonly timeoutMs?: number;
}

/** What a subscribe `ack` said. */
export interface SubscribedEvent {
  readonly room: string;
  /**
   * `true`: every message after the position the subscription had (its
   * `since`) is delivered, replay first, then live. `false`: there was
   * nothing to recover from (a first subscribe), or the server could not
   * (another epoch, trimmed or expired history, a room without history) —
   * reload the room's state from the application.
   */
  readonly recovered: boolean;
  /** `true` when this ack follows a reconnect (the subscription existed before). */
  readonly resubscribed: boolean;
  /** The room's stream position at the time of the ack (rooms with history). */
  readonly epoch?: string;
  readonly offset?: number;
}

export interface PresenceEvent {
  readonly room: string;
  readonly user: string;
}

export interface SubscriptionEvents {
  message: RoomMessage;
  join: PresenceEvent;
  leave: PresenceEvent;
  subscribed: SubscribedEvent;
  /** The server refused the subscription (it is then closed), or a subscribe request timed out. */
  error: FanoutError;
}

export type SubscriptionState =
  /** Waiting for the server's ack (not connected yet, or the request is in flight). */
  | 'pending'
  | 'subscribed'
  /** `unsubscribe()` was called. */
  | 'unsubscribed'
  /** The server refused it (e.g. 403: not allowed by the token's `rooms`). */
  | 'failed';

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  unsubscribe(record: SubscriptionRecord, options?: RequestCallOptions): Promise<void>;
  resend(record: SubscriptionRecord): void;
  publish(room: string, event: string, data: unknown, options?: RequestCallOptions): Promise<PublishResult>;
  presence(room: string, options?: RequestCallOptions): Promise<readonly PresenceMember[]>;
  history(room: string, options?: HistoryOptions): Promise<HistoryPage>;
}

/** Copies a message frame into the public shape, leaving absent fields absent. */
export function toMessage(frame: MessageFrame): RoomMessage {
  const { type: _type, ...message } = frame;
  return message as RoomMessage;
}

export class SubscriptionRecord {
  readonly emitter = new Emitter<SubscriptionEvents>();
  readonly cursor: StreamCursor;
  state: SubscriptionState = 'pending';
  presenceEvents: boolean;
  /** Whether an ack was ever received (later ones are resubscriptions). */
  acked = false;
  readonly handle: Subscription;
  readonly ready: Promise<SubscribedEvent>;
  private settleReady: { resolve(event: SubscribedEvent): void; reject(error: FanoutError): void } | undefined;

  constructor(
    readonly room: string,
    options: SubscribeOptions,
    readonly timeoutMs: number,
    host: SubscriptionHost,
  ) {
    this.presenceEvents = options.presenceEvents === true;
    this.cursor = new StreamCursor(options.since);
    this.ready = new Promise<SubscribedEvent>((resolve, reject) => {
      this.settleReady = { resolve, reject };
    });
    // Nobody has to await `ready`: an unobserved rejection must not crash Node.
    this.ready.catch(() => {});
    this.handle = new Subscription(this, host);
  }

  /** The `since` for the next subscribe frame. */
  get since(): StreamPosition | undefined {
    return this.cursor.position;
  }

  /** A subscribe ack. `update`: the ack of a flag change on a live subscription (no new position). */
  onAck(ack: AckFrame, update: boolean): void {
    if (this.state === 'unsubscribed' || this.state === 'failed') return;
    if (update) return;
    const recovered = ack.recovered === true;
    if (!recovered) {
      this.cursor.reset(ack.epoch === undefined ? undefined : { epoch: ack.epoch, offset: ack.offset ?? 0 });
    }
    const event: SubscribedEvent = {
      room: this.room,
      recovered,
      resubscribed: this.acked,
      ...(ack.epoch === undefined ? {} : { epoch: ack.epoch }),
      ...(ack.offset === undefined ? {} : { offset: ack.offset }),
    };
    this.acked = true;
    this.state = 'subscribed';
    this.settleReady?.resolve(event);
    this.settleReady = undefined;
    this.emitter.emit('subscribed', event);
  }

  /** The server refused the subscription: it ends here. */
  onRefused(error: FanoutError): void {
    if (this.state === 'unsubscribed') return;
    this.state = 'failed';
    this.fail(error);
  }

  /** A subscribe request timed out; the subscription stays and is resent after a reconnect. */
  onTimeout(error: FanoutError): void {
    this.fail(error);
  }

  /** The connection closed: the next welcome resubscribes. */
  onDisconnected(): void {
    if (this.state === 'subscribed') this.state = 'pending';
  }

  onUnsubscribed(error: FanoutError): void {
    this.state = 'unsubscribed';
    this.settleReady?.reject(error);
    this.settleReady = undefined;
  }

  deliver(frame: MessageFrame): void {
    if (this.state === 'unsubscribed' || this.state === 'failed') return;
    if (!this.cursor.accept(frame.epoch, frame.offset)) return;
    this.emitter.emit('message', toMessage(frame));
  }

  /** The ack of this client's own publish into the room: its position is counted, not delivered. */
  published(epoch: string | undefined, offset: number | undefined): void {
    this.cursor.published(epoch, offset);
  }

  presence(frame: JoinLeaveFrame): void {
    if (this.state === 'unsubscribed' || this.state === 'failed') return;
    this.emitter.emit(frame.type, { room: frame.room, user: frame.user });
  }

  private fail(error: FanoutError): void {
    this.settleReady?.reject(error);
    this.settleReady = undefined;
    this.emitter.emit('error', error);
  }
}

/** A room subscription, as `FanoutClient.subscribe` returns it (not constructed directly). */
export class Subscription {
  constructor(
    private readonly record: SubscriptionRecord,
    private readonly host: SubscriptionHost,
  ) {}

  get room(): string {
    return this.record.room;
  }

  get state(): SubscriptionState {
    return this.record.state;
  }

  /** The last position delivered (or acked as the starting point); persist it to resume later with `since`. */
  get position(): StreamPosition | undefined {
    return this.record.cursor.position;
  }

  get presenceEvents(): boolean {
    return this.record.presenceEvents;
  }

  /**
   * Settles with the first `subscribed` event, or rejects if the server
   * refuses the subscription, its request times out, or `unsubscribe()` comes first.
   */
  get ready(): Promise<SubscribedEvent> {
    return this.record.ready;
  }

  on<K extends keyof SubscriptionEvents>(event: K, listener: Listener<SubscriptionEvents[K]>): () => void {
    return this.record.emitter.on(event, listener);
  }

  once<K extends keyof SubscriptionEvents>(event: K, listener: Listener<SubscriptionEvents[K]>): () => void {
    return this.record.emitter.once(event, listener);
  }

  off<K extends keyof SubscriptionEvents>(event: K, listener: Listener<SubscriptionEvents[K]>): void {
    this.record.emitter.off(event, listener);
  }

  /**
   * Leaves the room. Delivery stops at once; the promise settles with the
   * server's ack (at once when not connected: there is nothing to undo).
   */
  unsubscribe(options?: RequestCallOptions): Promise<void> {
    return this.host.unsubscribe(this.record, options);
  }

  /** Changes whether `join` / `leave` events are delivered (resends the subscribe when connected). */
  setPresenceEvents(enabled: boolean): void {
    if (this.record.presenceEvents === enabled) return;
    this.record.presenceEvents = enabled;
    this.host.resend(this.record);
  }

  /** The room's history (needs the `subscribe` permission; 404 for rooms without history). */
  history(options?: HistoryOptions): Promise<HistoryPage> {
    return this.host.history(this.record.room, options);
  }

  /** Publishes into this room (see `FanoutClient.publish`). */
  publish(event: string, data: unknown, options?: RequestCallOptions): Promise<PublishResult> {
    return this.host.publish(this.record.room, event, data, options);
  }

  /** Who is in this room. */
  presence(options?: RequestCallOptions): Promise<readonly PresenceMember[]> {
    return this.host.presence(this.record.room, options);
  }
}
