/**
 * What runs inside the page, and how it reports back.
 *
 * `runStreamClient` is handed to `page.evaluate`: Playwright sends its
 * source text to the page, so it uses nothing from this module's scope —
 * only its argument and the page's globals, typed by `PageGlobals` (the
 * bundle's `Fanout`, and two functions the test exposes with
 * `page.exposeFunction`). Every client and subscription event is reported
 * at once through `fanoutEvent` into a `PageLog` on the Node side, where the
 * test waits on it with deadlines.
 */

import type { FanoutClient, StreamPosition, Subscription } from '@fanout/client';

import { sleep } from '../../support/wait.js';

export type PageEvent =
  | { readonly kind: 'connected'; readonly node: string }
  | {
      readonly kind: 'disconnected';
      readonly code: number;
      readonly willReconnect: boolean;
      readonly delayMs: number | undefined;
      /** The subscription's position when the connection closed: what the resubscribe sends as `since`. */
      readonly position: StreamPosition | undefined;
    }
  | {
      readonly kind: 'subscribed';
      readonly recovered: boolean;
      readonly resubscribed: boolean;
      readonly epoch: string | undefined;
      readonly offset: number | undefined;
    }
  | { readonly kind: 'message'; readonly seq: number; readonly offset: number | undefined; readonly epoch: string | undefined }
  | { readonly kind: 'error'; readonly errorKind: string; readonly message: string };

/** The page's globals the in-page code uses. */
export interface PageGlobals {
  /** The IIFE bundle's global (`dist/browser/fanout.min.js`). */
  readonly Fanout: typeof import('@fanout/client');
  /** Exposed by the test: mints a token in Node, so the page never holds the secret. */
  readonly fanoutToken: () => Promise<string>;
  /** Exposed by the test: one event into the `PageLog`. */
  readonly fanoutEvent: (event: PageEvent) => Promise<void>;
  fanoutClient?: FanoutClient;
  fanoutSubscription?: Subscription;
}

/** In the page: a client with the browser's defaults (its own WebSocket, lifecycle, backoff) subscribed to `room`. */
export async function runStreamClient(args: { readonly url: string; readonly room: string }): Promise<void> {
  const page = globalThis as unknown as PageGlobals;
  const report = (event: PageEvent): void => {
    void page.fanoutEvent(event);
  };
  const client = new page.Fanout.FanoutClient(args.url, { getToken: () => page.fanoutToken() });
  const subscription = client.subscribe(args.room);
  client.on('connected', (w) => report({ kind: 'connected', node: w.node }));
  client.on('disconnected', (d) =>
    report({ kind: 'disconnected', code: d.code, willReconnect: d.willReconnect, delayMs: d.delayMs, position: subscription.position }),
  );
  client.on('error', (e) => report({ kind: 'error', errorKind: e.kind, message: e.message }));
  subscription.on('subscribed', (s) =>
    report({ kind: 'subscribed', recovered: s.recovered, resubscribed: s.resubscribed, epoch: s.epoch, offset: s.offset }),
  );
  subscription.on('message', (m) =>
    report({ kind: 'message', seq: (m.data as { seq: number }).seq, offset: m.offset, epoch: m.epoch }),
  );
  page.fanoutClient = client;
  page.fanoutSubscription = subscription;
  await client.connect();
}

/** In the page: what the page itself says at the end. */
export function pageSummary(): { state: string; subscription: string; position: StreamPosition | undefined; url: string } {
  const page = globalThis as unknown as PageGlobals & { readonly location: { readonly href: string } };
  return {
    state: page.fanoutClient?.state ?? 'none',
    subscription: page.fanoutSubscription?.state ?? 'none',
    position: page.fanoutSubscription?.position,
    url: page.location.href,
  };
}

type Of<K extends PageEvent['kind']> = Extract<PageEvent, { kind: K }>;

/** The page's events, in order, on the Node side. */
export class PageLog {
  readonly events: PageEvent[] = [];

  push = (event: PageEvent): void => {
    this.events.push(event);
  };

  all<K extends PageEvent['kind']>(kind: K): Of<K>[] {
    return this.events.filter((e): e is Of<K> => e.kind === kind);
  }

  /** Waits until there are `n` events of `kind`; returns the `n`th. */
  async nth<K extends PageEvent['kind']>(kind: K, n: number, timeoutMs: number): Promise<Of<K>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.all(kind)[n - 1];
      if (found) return found;
      if (Date.now() >= deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for '${kind}' event #${n} from the page; saw: ${this.describe()}`);
      }
      await sleep(20);
    }
  }

  /** A short account of everything but messages (counted), for failure messages. */
  describe(): string {
    const parts: string[] = [];
    let messages = 0;
    for (const e of this.events) {
      if (e.kind === 'message') {
        messages += 1;
        continue;
      }
      if (messages > 0) parts.push(`${messages} messages`);
      messages = 0;
      parts.push(JSON.stringify(e));
    }
    if (messages > 0) parts.push(`${messages} messages`);
    return parts.join(', ');
  }
}
