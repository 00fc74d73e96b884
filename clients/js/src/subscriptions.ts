/**
 * The client's subscriptions: at most one per room, sent when connected and
 * resent after every welcome.
 *
 * This is where subscribe and unsubscribe frames are built and their
 * replies applied. The subscribe `ack` is applied synchronously (through
 * `onReply`, see requests.ts) so that a subscription knows whether it
 * recovered, and from which position, before the replay that follows the
 * ack on the wire is delivered.
 */

import { FanoutError } from './errors.js';
import type { JoinLeaveFrame, MessageFrame, PresenceMember, ReplyFrame } from './frames.js';
import type { RequestFrame, RequestOptions } from './requests.js';
import { SubscriptionRecord } from './subscription.js';
import type { SubscribeOptions, Subscription, SubscriptionHost } from './subscription.js';
import type { HistoryOptions, HistoryPage, PublishResult, RequestCallOptions } from './types.js';

/** What the subscriptions need from the client. */
export interface SubscriptionsDeps {
  /** Whether frames can be sent now. */
  isOpen(): boolean;
  /** Sends a request (see requests.ts). */
  call(frame: RequestFrame, options: Partial<RequestOptions>): Promise<ReplyFrame>;
  readonly requestTimeoutMs: number;
  /** The room-level requests a `Subscription` offers as shortcuts. */
  publish(room: string, event: string, data: unknown, options?: RequestCallOptions): Promise<PublishResult>;
  presence(room: string, options?: RequestCallOptions): Promise<readonly PresenceMember[]>;
  history(room: string, options?: HistoryOptions): Promise<HistoryPage>;
}

export class Subscriptions {
  private readonly records = new Map<string, SubscriptionRecord>();
  private readonly host: SubscriptionHost;

  constructor(private readonly deps: SubscriptionsDeps) {
    this.host = {
      unsubscribe: (record, options) => this.remove(record, options),
      resend: (record) => {
        if (this.deps.isOpen() && this.records.get(record.room) === record) this.send(record, true);
      },
      publish: (room, event, data, options) => deps.publish(room, event, data, options),
      presence: (room, options) => deps.presence(room, options),
      history: (room, options) => deps.history(room, options),
    };
  }

  /** The subscription to `room`, created (and sent when connected) if there is none. */
  add(room: string, options: SubscribeOptions): Subscription {
    const existing = this.records.get(room);
    if (existing) {
      if (options.presenceEvents !== undefined) existing.handle.setPresenceEvents(options.presenceEvents);
      return existing.handle;
    }
    const record = new SubscriptionRecord(room, options, options.timeoutMs ?? this.deps.requestTimeoutMs, this.host);
    this.records.set(room, record);
    if (this.deps.isOpen()) this.send(record, false);
    return record.handle;
  }

  get(room: string): SubscriptionRecord | undefined {
    return this.records.get(room);
  }

  handles(): Subscription[] {
    return [...this.records.values()].map((record) => record.handle);
  }

  /** After a welcome: every subscription again, each with `since` = its last position. */
  resubscribeAll(): void {
    for (const record of this.records.values()) this.send(record, false);
  }

  /** The connection closed: every subscription waits for the next welcome. */
  disconnected(): void {
    for (const record of this.records.values()) record.onDisconnected();
  }

  /** A room message, for the room's subscription (ignored if there is none any more). */
  deliver(frame: MessageFrame): void {
    if (frame.room !== undefined) this.records.get(frame.room)?.deliver(frame);
  }

  presence(frame: JoinLeaveFrame): void {
    this.records.get(frame.room)?.presence(frame);
  }

  /** The `ack` of this client's publish into `room`: its position is counted by the room's subscription. */
  published(room: string, epoch: string | undefined, offset: number | undefined): void {
    this.records.get(room)?.published(epoch, offset);
  }

  /** Sends a subscribe for `record`; `update`: only its `presenceEvents` changed (no `since`, no new position). */
  private send(record: SubscriptionRecord, update: boolean): void {
    const since = update ? undefined : record.since;
    const frame: RequestFrame = {
      type: 'subscribe',
      room: record.room,
      ...(record.presenceEvents ? { presence_events: true } : {}),
      ...(since ? { since } : {}),
    };
    const sent = this.deps.call(frame, {
      timeoutMs: record.timeoutMs,
      queue: false,
      keepAfterTimeout: true,
      onReply: (reply) => {
        if (this.records.get(record.room) !== record) return;
        if (reply.type === 'error') {
          this.records.delete(record.room);
          record.onRefused(
            new FanoutError('server', `subscribe to ${record.room} refused (${reply.code}): ${reply.message}`, reply.code),
          );
        } else if (reply.type === 'ack') {
          record.onAck(reply, update);
        }
      },
      onTimeout: () => {
        record.onTimeout(new FanoutError('timeout', `subscribe to ${record.room} got no answer within ${record.timeoutMs} ms`));
      },
    });
    // The outcome reaches the subscription through the callbacks above.
    sent.catch(() => {});
  }

  /** Ends a subscription: delivery stops at once; the server is told when connected. */
  private async remove(record: SubscriptionRecord, options?: RequestCallOptions): Promise<void> {
    if (this.records.get(record.room) === record) this.records.delete(record.room);
    const wasActive = record.state === 'pending' || record.state === 'subscribed';
    record.onUnsubscribed(
      new FanoutError('disconnected', `unsubscribed from ${record.room} before the server acknowledged the subscription`),
    );
    if (!wasActive || !this.deps.isOpen()) return;
    try {
      await this.deps.call({ type: 'unsubscribe', room: record.room }, { ...options, queue: false });
    } catch (thrown) {
      // A connection that is gone holds no subscription any more: nothing is left to undo.
      if (thrown instanceof FanoutError && (thrown.kind === 'connection_lost' || thrown.kind === 'disconnected')) return;
      throw thrown;
    }
  }
}
