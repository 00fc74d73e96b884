// The minified bundle in real headless Chromium, through nginx over wss to
// a 3-node cluster on redis-server (deploy/cluster.sh), while the test
// streams sequence-numbered messages through the HTTP API: the page's node
// is drained (1012) and restarted, then the node it moved to is SIGKILLed
// (1006). After each, the subscription resubscribes with `since` and must
// report `recovered: true`; in the end the page has every message exactly
// once, in order.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import type { Browser, BrowserContext } from 'playwright-core';

import { mintToken } from '../support/tokens.js';
import { sleep, waitFor, within } from '../support/wait.js';
import { closeBrowser, launchChromium } from './support/browser.js';
import { Cluster } from './support/cluster.js';
import { PageLog, pageSummary, runStreamClient } from './support/page.js';
import { PageServer } from './support/page-server.js';

const ROOM = 'chat:recovery';
const TENANT = 't1';
/** One publish every PACE_MS: enough messages miss every reconnect, few enough that history (size 10 000) keeps them. */
const PACE_MS = 8;
/** Hard bounds of the publisher, whatever happens to the phases. */
const MAX_MESSAGES = 4_000;

// Rooms `chat:*` keep history on every node: the condition for recovery.
const HISTORY = '[[history]]\ntenant = "*"\nrooms = "chat:*"\nsize = 10000\nttl = "10m"\n';

/** Publishes `{seq}` 1, 2, … through nginx until stopped; `stop()` resolves with the last seq published. */
function startPublisher(cluster: Cluster): { stop: () => Promise<number>; readonly published: () => number } {
  let stopped = false;
  let seq = 0;
  const loop = (async () => {
    const deadline = Date.now() + 60_000;
    while (!stopped && seq < MAX_MESSAGES && Date.now() < deadline) {
      const started = Date.now();
      const next = seq + 1;
      await cluster.publish({ tenant: TENANT, room: ROOM, event: 'n', data: { seq: next }, idempotency_key: `seq-${next}` });
      seq = next;
      await sleep(Math.max(0, PACE_MS - (Date.now() - started)));
    }
    if (!stopped) throw new Error(`the publisher stopped by its own bounds at seq ${seq}`);
    return seq;
  })();
  loop.catch(() => undefined); // observed by stop()
  return {
    published: () => seq,
    stop: async () => {
      stopped = true;
      return within('the publisher to stop', 15_000, loop);
    },
  };
}

describe('browser: the bundle in Chromium, wss through nginx, 3 nodes, recovery', () => {
  let cluster: Cluster | undefined;
  let pages: PageServer | undefined;
  let browser: Browser | undefined;
  let context: BrowserContext | undefined;

  before(async () => {
    cluster = await Cluster.up(HISTORY);
    pages = await PageServer.start(cluster.certPem, cluster.keyPem);
    browser = await launchChromium(cluster.certPem);
  });
  after(async () => {
    await context?.close().catch(() => undefined);
    await closeBrowser(browser);
    await pages?.close();
    await cluster?.down();
  });

  it('drain and restart, then SIGKILL, mid-stream: every message once, in order, and recovered each time', async () => {
    assert.ok(cluster && pages && browser);
    const c = cluster;
    context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(10_000);
    const log = new PageLog();
    const sockets: string[] = [];
    const consoleErrors: string[] = [];
    const pageErrors: string[] = [];
    page.on('websocket', (ws) => sockets.push(ws.url()));
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await page.exposeFunction('fanoutEvent', log.push);
    await page.exposeFunction('fanoutToken', () => mintToken({ sub: 'browser', tenant: TENANT, rooms: ['chat:*'] }, c.secret));
    await page.goto(pages.url);

    const fail = (what: string) => (thrown: unknown): never => {
      const message = thrown instanceof Error ? thrown.message : String(thrown);
      throw new Error(`${what}: ${message}\npage: ${log.describe()}\n${c.logs()}`);
    };

    await within('the page to connect and subscribe', 15_000, page.evaluate(runStreamClient, { url: c.wssUrl, room: ROOM })).catch(
      fail('connect'),
    );
    const first = await log.nth('subscribed', 1, 5_000);
    assert.deepEqual([first.resubscribed, first.recovered, first.offset], [false, false, 0]);

    const publisher = startPublisher(c);
    const received = (n: number, timeoutMs: number): Promise<unknown> =>
      waitFor(`the page to receive ${n} messages`, timeoutMs, () => log.all('message').length >= n).catch(fail('receive'));

    // Phase 1: drain the page's node (SIGTERM → 1012 after readiness_delay), then start it again.
    await received(100, 15_000);
    const drained = c.portOf((await log.nth('connected', 1, 1_000)).node);
    await c.drain(drained).catch(fail('drain'));
    await log.nth('subscribed', 2, 15_000).catch(fail('resubscribe after the drain'));
    await c.restart(drained).catch(fail('restart'));

    // Phase 2: SIGKILL the node the page moved to (the page sees 1006).
    await received(log.all('message').length + 100, 15_000);
    const killed = c.portOf((await log.nth('connected', 2, 1_000)).node);
    assert.notEqual(killed, drained, 'the page left the drained node');
    await c.kill(killed).catch(fail('kill'));
    await log.nth('subscribed', 3, 15_000).catch(fail('resubscribe after the kill'));

    await received(log.all('message').length + 50, 15_000);
    const last = await publisher.stop();
    await received(last, 15_000);
    await sleep(300); // anything duplicated would arrive now

    // Every message exactly once, in order, with contiguous offsets of one epoch.
    const messages = log.all('message');
    const range = Array.from({ length: last }, (_, i) => i + 1);
    assert.deepEqual(messages.map((m) => m.seq), range, 'seqs: zero loss, zero duplicates, in order');
    assert.deepEqual(messages.map((m) => m.offset), range, 'offsets');
    assert.equal(new Set(messages.map((m) => m.epoch)).size, 1, 'one epoch');

    // Each close was followed by a resubscribe with `since` that recovered.
    const closes = log.all('disconnected');
    assert.deepEqual(closes.map((d) => [d.code, d.willReconnect]), [[1012, true], [1006, true]]);
    const subscribed = log.all('subscribed');
    assert.deepEqual(subscribed.map((s) => [s.resubscribed, s.recovered]), [[false, false], [true, true], [true, true]]);
    // The replay really covered a gap: messages published while the page was away.
    const missed = closes.map((d, i) => (subscribed[i + 1]?.offset ?? 0) - (d.position?.offset ?? 0));
    assert.ok(missed.reduce((a, b) => a + b, 0) > 0, `messages missed while disconnected: ${missed.join(', ')}`);

    const nodes = log.all('connected').map((w) => c.portOf(w.node));
    assert.equal(nodes.length, 3);
    assert.notEqual(nodes[2], killed);
    // Really wss through nginx: every WebSocket the page opened.
    assert.deepEqual(sockets, [c.wssUrl, c.wssUrl, c.wssUrl]);
    const summary = await page.evaluate(pageSummary);
    assert.deepEqual(summary, { state: 'connected', subscription: 'subscribed', position: { epoch: messages[0]?.epoch, offset: last }, url: pages.url });
    assert.deepEqual(log.all('error'), []);
    assert.deepEqual(pageErrors, [], 'uncaught exceptions in the page');
    // nginx's sticky cookie reached the browser (Secure: only over TLS).
    const cookies = await context.cookies(c.wssUrl.replace('wss:', 'https:'));
    assert.ok(cookies.some((k) => k.name === 'fanout_node' && k.secure), JSON.stringify(cookies));
    console.log(
      `recovery: ${last} messages; nodes ${nodes.join(' → ')} (drained ${drained}, killed ${killed}); missed while away: ${missed.join(', ')}; ` +
        `reconnect delays: ${closes.map((d) => Math.round(d.delayMs ?? -1)).join(', ')} ms; console errors: ${JSON.stringify(consoleErrors)}; publishes retried: ${JSON.stringify(Object.fromEntries(c.retries))}`,
    );
  });
});
