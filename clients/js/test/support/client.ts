/**
 * Client-side helpers: a `FanoutClient` on `ws` (Node 20 has no global
 * WebSocket) with test-sized timings, and recorders that turn events into
 * something a test can wait on with a deadline.
 */

import WebSocket from 'ws';

import { FanoutClient } from '@fanout/client';
import type {
  ClientEvents,
  FanoutClientOptions,
  RoomMessage,
  SubscribedEvent,
  Subscription,
  UrlSource,
} from '@fanout/client';

/** Reconnect timings of test clients: fast, but still bounded and jittered. */
export const TEST_RECONNECT = { minDelayMs: 50, maxDelayMs: 400, drainJitterMs: 100 } as const;

const made = new Set<FanoutClient>();

/** A client on `ws` with test timings; `options` override them. Disconnected by `disconnectAll`. */
export function makeClient(url: UrlSource, options: FanoutClientOptions): FanoutClient {
  const client = new FanoutClient(url, {
    WebSocket,
    requestTimeoutMs: 5_000,
    connectTimeoutMs: 3_000,
    lifecycle: null,
    reconnect: TEST_RECONNECT,
    ...options,
  });
  made.add(client);
  return client;
}

/** Disconnects every client made by `makeClient` (for `afterEach`). */
export function disconnectAll(): void {
  for (const client of made) client.disconnect();
  made.clear();
}

interface Entry {
  readonly event: keyof ClientEvents;
  readonly payload: unknown;
  readonly at: number;
  consumed: boolean;
}

type Waiter = { readonly event: keyof ClientEvents; readonly match: (payload: unknown) => boolean; readonly resolve: (entry: Entry) => void };

/** Records every event of a client, in order, with its time. */
export class EventLog {
  readonly entries: Entry[] = [];
  private waiters: Waiter[] = [];

  constructor(client: FanoutClient) {
    const events: (keyof ClientEvents)[] = ['state', 'connecting', 'connected', 'disconnected', 'error', 'message'];
    for (const event of events) client.on(event, (payload: unknown) => this.push(event, payload));
  }

  /** Every payload of `event` so far. */
  all<K extends keyof ClientEvents>(event: K): ClientEvents[K][] {
    return this.entries.filter((e) => e.event === event).map((e) => e.payload as ClientEvents[K]);
  }

  /** The names of the events so far, e.g. to check an order. */
  names(): string[] {
    return this.entries.map((e) => e.event);
  }

  /**
   * The first not-yet-consumed `event` matching `predicate`, already
   * recorded or still to come; rejects after `timeoutMs`.
   */
  wait<K extends keyof ClientEvents>(
    event: K,
    timeoutMs: number,
    predicate: (payload: ClientEvents[K]) => boolean = () => true,
  ): Promise<ClientEvents[K]> {
    const match = (payload: unknown): boolean => predicate(payload as ClientEvents[K]);
    const found = this.entries.find((e) => !e.consumed && e.event === event && match(e.payload));
    if (found) {
      found.consumed = true;
      return Promise.resolve(found.payload as ClientEvents[K]);
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        event,
        match,
        resolve: (entry) => {
          clearTimeout(timer);
          resolve(entry.payload as ClientEvents[K]);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for a '${String(event)}' event; saw: ${this.describe()}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  describe(): string {
    return this.entries
      .map((e) => {
        const p = e.payload as { code?: unknown; state?: unknown; message?: unknown; attempt?: unknown };
        const detail = p.state ?? p.code ?? p.attempt ?? (typeof p.message === 'string' ? p.message : undefined);
        return detail === undefined ? String(e.event) : `${String(e.event)}(${String(detail)})`;
      })
      .join(', ');
  }

  private push(event: keyof ClientEvents, payload: unknown): void {
    const entry: Entry = { event, payload, at: Date.now(), consumed: false };
    this.entries.push(entry);
    const waiter = this.waiters.find((w) => w.event === event && w.match(payload));
    if (waiter) {
      entry.consumed = true;
      this.waiters = this.waiters.filter((w) => w !== waiter);
      waiter.resolve(entry);
    }
  }
}

/** Collects a subscription's messages and `subscribed` events. */
export class Inbox {
  readonly messages: RoomMessage[] = [];
  readonly subscribed: SubscribedEvent[] = [];

  constructor(readonly subscription: Subscription) {
    subscription.on('message', (m) => this.messages.push(m));
    subscription.on('subscribed', (s) => this.subscribed.push(s));
  }

  /** `data.seq` of every message, in arrival order. */
  seqs(): number[] {
    return this.messages.map((m) => (m.data as { seq: number }).seq);
  }

  async waitCount(n: number, timeoutMs: number): Promise<RoomMessage[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages.length < n) {
      if (Date.now() >= deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${n} messages in ${this.subscription.room}; have ${this.messages.length}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return this.messages;
  }

  async waitSubscribed(n: number, timeoutMs: number): Promise<SubscribedEvent> {
    const deadline = Date.now() + timeoutMs;
    while (this.subscribed.length < n) {
      if (Date.now() >= deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for subscribed event #${n} of ${this.subscription.room}; have ${this.subscribed.length}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return this.subscribed[n - 1] as SubscribedEvent;
  }
}
