/**
 * Requests and their replies: ids, timeouts, and the queue used while disconnected.
 *
 * Every request frame carries a fresh integer `id` and settles with the
 * reply carrying the same id (`ack`, `pong`, `presence`, `history`, or
 * `error`) or with a timeout. Ids are never reused within a client, so a
 * late reply from an old connection cannot be taken for a new request's.
 *
 * **Queued, bounded.** A request made while the client is not connected is
 * queued (up to `maxQueued`, in call order) and sent right after the next
 * welcome and resubscriptions; its timeout runs from the call, so a caller
 * never waits longer than it asked for, connected or not. With a full queue
 * (or `maxQueued: 0`) it is rejected at once with `queue_full`.
 *
 * **In flight when the connection drops:** rejected with `connection_lost`,
 * never resent — the server may already have acted on it (a publish would
 * be delivered twice).
 *
 * Replies are also handed to an optional `onReply` callback synchronously,
 * before any later frame is processed: a subscription must learn its
 * position from the subscribe `ack` before the replay right behind it is
 * dispatched, which promise callbacks (run later, in a microtask) would not
 * guarantee when several frames arrive in one read.
 */

import { FanoutError } from './errors.js';
import type { ClientFrame, ReplyFrame } from './frames.js';

type Timer = ReturnType<typeof setTimeout>;

type WithoutId<F> = F extends unknown ? Omit<F, 'id'> : never;

/** A request frame before it is given its id (every client frame but `auth`). */
export type RequestFrame = WithoutId<Exclude<ClientFrame, { readonly type: 'auth' }>>;

export interface RequestOptions {
  readonly timeoutMs: number;
  /** Queue while disconnected (default). `false`: reject at once with `disconnected` unless connected. */
  readonly queue?: boolean;
  /**
   * After a timeout, keep listening for a late reply (passed to `onReply`;
   * the promise is already rejected). Used for subscriptions, whose state
   * must follow the server even when the caller gave up waiting.
   */
  readonly keepAfterTimeout?: boolean;
  /** Called synchronously with the reply (an `error` frame included) before the promise settles. */
  readonly onReply?: (reply: ReplyFrame) => void;
  /** Called synchronously when the request times out. */
  readonly onTimeout?: () => void;
}

interface Pending {
  readonly id: number;
  readonly frame: ClientFrame;
  readonly options: RequestOptions;
  readonly resolve: (reply: ReplyFrame) => void;
  readonly reject: (error: FanoutError) => void;
  timer: Timer | undefined;
  sent: boolean;
  settled: boolean;
}

/** How requests reach the socket. */
export interface RequestTransport {
  /** Whether frames can be sent now (connected and welcomed). */
  isOpen(): boolean;
  /** Sends a frame; throws if it cannot be encoded or sent. */
  send(frame: ClientFrame): void;
}

export class Requests {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Unsent requests, in call order. */
  private queue: Pending[] = [];

  constructor(
    private readonly transport: RequestTransport,
    private readonly maxQueued: number,
  ) {}

  /** Sends (or queues) `frame` with a fresh id; settles with its reply. */
  request(frame: RequestFrame, options: RequestOptions): Promise<ReplyFrame> {
    const id = this.nextId++;
    const full = { ...frame, id } as ClientFrame;
    return new Promise<ReplyFrame>((resolve, reject) => {
      const entry: Pending = { id, frame: full, options, resolve, reject, timer: undefined, sent: false, settled: false };
      if (this.transport.isOpen()) {
        this.pending.set(id, entry);
        this.arm(entry);
        this.transmit(entry);
      } else if (options.queue === false) {
        reject(new FanoutError('disconnected', `cannot send ${frame.type}: not connected`));
      } else if (this.queue.length >= this.maxQueued) {
        reject(new FanoutError('queue_full', `cannot send ${frame.type}: not connected and ${this.maxQueued} requests are already queued`));
      } else {
        this.pending.set(id, entry);
        this.queue.push(entry);
        this.arm(entry);
      }
    });
  }

  /** Hands a reply to its request; `false` if no request has that id. */
  settle(reply: ReplyFrame): boolean {
    if (reply.id === undefined) return false;
    const entry = this.pending.get(reply.id);
    if (!entry || !entry.sent) return false;
    this.pending.delete(entry.id);
    clearTimeout(entry.timer);
    entry.options.onReply?.(reply);
    if (entry.settled) return true;
    entry.settled = true;
    if (reply.type === 'error') {
      entry.reject(new FanoutError('server', `${entry.frame.type} refused (${reply.code}): ${reply.message}`, reply.code));
    } else {
      entry.resolve(reply);
    }
    return true;
  }

  /** Sends every queued request, in order (after a welcome). */
  flush(): void {
    const queued = this.queue;
    this.queue = [];
    for (const entry of queued) {
      if (!entry.settled) this.transmit(entry);
    }
  }

  /** The connection closed: requests already sent can no longer be answered. */
  failSent(error: FanoutError): void {
    for (const entry of [...this.pending.values()]) {
      if (entry.sent) this.fail(entry, error);
    }
  }

  /** Rejects everything, sent or queued (`disconnect()`, or a close that is not retried). */
  failAll(error: FanoutError): void {
    for (const entry of [...this.pending.values()]) this.fail(entry, error);
    this.queue = [];
  }

  private transmit(entry: Pending): void {
    try {
      this.transport.send(entry.frame);
      entry.sent = true;
    } catch (thrown) {
      const detail = thrown instanceof Error ? thrown.message : String(thrown);
      this.fail(entry, new FanoutError('protocol', `cannot send ${entry.frame.type}: ${detail}`, undefined, { cause: thrown }));
    }
  }

  private arm(entry: Pending): void {
    entry.timer = setTimeout(() => this.timeout(entry), entry.options.timeoutMs);
  }

  private timeout(entry: Pending): void {
    entry.timer = undefined;
    if (entry.settled) return;
    entry.settled = true;
    const keep = entry.options.keepAfterTimeout === true && entry.sent;
    if (!keep) {
      this.pending.delete(entry.id);
      this.queue = this.queue.filter((e) => e !== entry);
    }
    entry.options.onTimeout?.();
    entry.reject(new FanoutError('timeout', `${entry.frame.type} got no answer within ${entry.options.timeoutMs} ms`));
  }

  private fail(entry: Pending, error: FanoutError): void {
    this.pending.delete(entry.id);
    clearTimeout(entry.timer);
    if (entry.settled) return;
    entry.settled = true;
    entry.reject(error);
  }
}
