// A node's close code reaches a real browser (issue 13 item 6): headless
// Chromium's own WebSocket — not the client, whose reconnect logic hides
// close codes — authenticates, gets its welcome and sends a 256 KiB text
// frame to nodes with `max_frame_bytes = 4096`, ten times directly to the
// nodes (ws) and ten times through nginx (wss). Every CloseEvent must say
// 1009. Before the nodes read on after their close frame (and discarded the
// rest of the oversize frame), the kernel reset the socket with those bytes
// unread, and the reset overtook the close: Chromium saw 1006 in about half
// of the tries, directly and through nginx alike.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import type { Browser, BrowserContext, Page } from 'playwright-core';

import { mintToken } from '../support/tokens.js';
import { within } from '../support/wait.js';
import { closeBrowser, launchChromium } from './support/browser.js';
import { Cluster } from './support/cluster.js';

const TRIES = 10;
const MAX_FRAME_BYTES = 4096;
/** What the page sends after its welcome: 64 times the limit. */
const FRAME_BYTES = 256 * 1024;
const TENANT = 't1';

const LIMITS = `[limits]\nmax_frame_bytes = ${MAX_FRAME_BYTES}\n`;

/** What one try saw, from the page's `CloseEvent` and around it. */
interface Outcome {
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
  /** Whether the `welcome` came, i.e. the big frame was sent by an authenticated connection. */
  readonly welcomed: boolean;
  /** Length of the frame sent (0: none). */
  readonly sent: number;
  /** Whether an `error` event came before the close (Chromium sends one with every 1006). */
  readonly error: boolean;
  /** From `new WebSocket` to the close event. */
  readonly ms: number;
}

/** The browser's WebSocket, as far as the page code uses it (the tests compile without the DOM lib). */
interface BrowserSocket {
  onopen: (() => void) | null;
  onmessage: ((event: { readonly data: unknown }) => void) | null;
  onerror: (() => void) | null;
  onclose: ((event: { readonly code: number; readonly reason: string; readonly wasClean: boolean }) => void) | null;
  send(data: string): void;
}

/**
 * In the page (handed to `page.evaluate`, so it uses only its argument and
 * the page's globals): one socket, `auth` frame, `welcome`, then a publish
 * frame of exactly `bytes` bytes; resolves with what the close said.
 */
function oversizeFrame(args: { readonly url: string; readonly token: string; readonly bytes: number }): Promise<Outcome> {
  const page = globalThis as unknown as { readonly WebSocket: new (url: string) => BrowserSocket };
  const started = Date.now();
  return new Promise((resolve) => {
    const ws = new page.WebSocket(args.url);
    let welcomed = false;
    let sent = 0;
    let error = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: args.token }));
    ws.onmessage = (event) => {
      if (welcomed || (JSON.parse(String(event.data)) as { type?: unknown }).type !== 'welcome') return;
      welcomed = true;
      const empty = JSON.stringify({ type: 'publish', id: 1, room: 'chat:big', event: 'big', data: '' });
      const frame = empty.replace('"data":""', `"data":"${'x'.repeat(args.bytes - empty.length)}"`);
      ws.send(frame);
      sent = frame.length;
    };
    ws.onerror = () => {
      error = true;
    };
    ws.onclose = (event) =>
      resolve({ code: event.code, reason: event.reason, wasClean: event.wasClean, welcomed, sent, error, ms: Date.now() - started });
  });
}

/** `fanout_connections_closed_total{code="too_big"}`, summed over the nodes' `/metrics`. */
async function tooBigCloses(cluster: Cluster): Promise<number> {
  let total = 0;
  for (const port of cluster.nodePorts) {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
    const m = /^fanout_connections_closed_total\{[^}]*code="too_big"[^}]*\} (\d+)/m.exec(text);
    total += Number(m?.[1] ?? 0);
  }
  return total;
}

describe('browser: close codes reach Chromium (1009 after an oversize frame), directly and through nginx', () => {
  let cluster: Cluster | undefined;
  let browser: Browser | undefined;
  let context: BrowserContext | undefined;
  let page: Page | undefined;
  const summary: string[] = [];

  before(async () => {
    cluster = await Cluster.up(LIMITS);
    browser = await launchChromium(cluster.certPem);
    context = await browser.newContext();
    page = await context.newPage(); // about:blank: the sockets need no page of ours
    page.setDefaultTimeout(10_000);
  });
  after(async () => {
    if (summary.length > 0) console.log(`close codes: ${summary.join('; ')}`);
    await context?.close().catch(() => undefined);
    await closeBrowser(browser);
    await cluster?.down();
  });

  /** `TRIES` sockets in a row, one at a time, to `urlOf(i)`; asserts that every one closed with 1009. */
  async function tries(label: string, urlOf: (i: number) => string): Promise<void> {
    assert.ok(cluster && page);
    const c = cluster;
    const p = page;
    const pageErrors: string[] = [];
    p.on('pageerror', (e) => pageErrors.push(e.message));
    const closedBefore = await tooBigCloses(c);
    const outcomes: Outcome[] = [];
    const started = Date.now();
    for (let i = 0; i < TRIES; i += 1) {
      const token = mintToken({ sub: `big-${label}-${i}`, tenant: TENANT, rooms: ['chat:*'] }, c.secret);
      const outcome = await within(`try ${i + 1} (${label}) to close`, 15_000, p.evaluate(oversizeFrame, { url: urlOf(i), token, bytes: FRAME_BYTES }));
      outcomes.push(outcome);
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const codes = outcomes.map((o) => o.code);
    const detail = `${label}: close codes [${codes.join(', ')}]\n${outcomes.map((o) => JSON.stringify(o)).join('\n')}\n${c.logs()}`;
    summary.push(`${label} [${codes.join(', ')}] in ${seconds} s (${outcomes.map((o) => o.ms).join(', ')} ms each; wasClean ${outcomes.filter((o) => o.wasClean).length}/${TRIES})`);

    assert.deepEqual(outcomes.map((o) => [o.welcomed, o.sent]), outcomes.map(() => [true, FRAME_BYTES]), `every try was welcomed and sent its frame; ${detail}`);
    assert.deepEqual(codes, Array.from({ length: TRIES }, () => 1009), `every close is 1009; ${detail}`);
    for (const o of outcomes) assert.match(o.reason, new RegExp(`max_frame_bytes \\(${MAX_FRAME_BYTES}\\)`), detail);
    assert.deepEqual(outcomes.filter((o) => o.error), [], `no error event (Chromium's sign of a 1006); ${detail}`);
    // The nodes closed exactly these connections with 1009: one node close per browser close.
    assert.equal((await tooBigCloses(c)) - closedBefore, TRIES, `the nodes' fanout_connections_closed_total{code="too_big"}; ${detail}`);
    assert.deepEqual(pageErrors, [], 'uncaught exceptions in the page');
  }

  it(`directly to the nodes (ws), ${TRIES} times: every close is 1009`, async () => {
    assert.ok(cluster);
    const ports = cluster.nodePorts;
    await tries('direct', (i) => `ws://127.0.0.1:${ports[i % ports.length] ?? 0}/ws`);
  });

  it(`through nginx (wss), ${TRIES} times: every close is 1009`, async () => {
    assert.ok(cluster);
    const url = cluster.wssUrl;
    await tries('nginx', () => url);
  });
});
