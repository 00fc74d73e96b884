// The chat example (examples/), served by its own one-liner against
// deploy/cluster.sh, used by two people in Chromium: they see each other
// online, chat, get a backend's HTTP publish, join a second room. Then a
// screenshot for the docs: build/screenshots/chat.png on every run, and
// examples/chat.png (the one the README shows) with UPDATE_SCREENSHOTS=1.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import type { Browser, Page } from 'playwright-core';

import { packageRoot } from '../support/paths.js';
import { exited, logTail, spawnLogged, stopProcess } from '../support/processes.js';
import { waitFor } from '../support/wait.js';
import { closeBrowser, launchChromium } from './support/browser.js';
import { Cluster } from './support/cluster.js';

// The example's rooms keep history, so a page that joins shows the latest messages.
const HISTORY = ['lobby', 'chat:*'].map((rooms) => `[[history]]\ntenant = "*"\nrooms = "${rooms}"\nsize = 100\nttl = "10m"\n`).join('\n');

/** `node examples/serve.mjs --cluster-dir …`, as the README says; resolves with its URL. */
async function serveExample(cluster: Cluster, log: string): Promise<{ child: ChildProcess; url: string }> {
  const script = join(packageRoot, 'examples', 'serve.mjs');
  writeFileSync(log, ''); // spawnLogged appends: no line of an earlier run may be read as this one's
  const { child } = spawnLogged(process.execPath, [script, '--cluster-dir', cluster.stateDir, '--port', '0'], log, process.env);
  const url = await waitFor('the example server to listen', 10_000, () => {
    if (exited(child)) throw new Error(`serve.mjs exited\n${logTail(log)}`);
    return /chat example on (http:\/\/localhost:\d+\/)/.exec(readFileSync(log, 'utf8'))?.[1];
  });
  return { child, url };
}

/** The messages a page shows: "sender: text". */
async function shown(page: Page): Promise<string[]> {
  const from = await page.locator('#messages li.msg b').allTextContents();
  const text = await page.locator('#messages li.msg span').allTextContents();
  return from.map((f, i) => `${f}: ${text[i] ?? ''}`);
}

async function until<T>(what: string, probe: () => Promise<T>, expected: T): Promise<void> {
  let last: T | undefined;
  await waitFor(what, 10_000, async () => {
    last = await probe();
    return JSON.stringify(last) === JSON.stringify(expected);
  }).catch((thrown: unknown) => {
    throw new Error(`${thrown instanceof Error ? thrown.message : String(thrown)}: have ${JSON.stringify(last)}, want ${JSON.stringify(expected)}`);
  });
}

describe('browser: the chat example against deploy/cluster.sh', () => {
  let cluster: Cluster | undefined;
  let server: ChildProcess | undefined;
  let browser: Browser | undefined;
  let url = '';

  before(async () => {
    cluster = await Cluster.up(HISTORY);
    mkdirSync(join(packageRoot, 'build'), { recursive: true });
    const example = await serveExample(cluster, join(packageRoot, 'build', 'example-server.log'));
    server = example.child;
    url = example.url;
    browser = await launchChromium(cluster.certPem);
  });
  after(async () => {
    await closeBrowser(browser);
    if (server) await stopProcess(server, 'SIGTERM').catch(() => undefined);
    await cluster?.down();
  });

  it('two people chat through nginx (wss), see each other online and a backend publish; screenshot', async () => {
    assert.ok(cluster && browser);
    const c = cluster;
    const b = browser;
    const example = { url };

    // The secret and API key stay on the server: nothing the page loads contains them.
    for (const path of ['', 'chat.js', 'chat.css', 'config', 'fanout.min.js']) {
      const body = await (await fetch(`${example.url}${path}`)).text();
      assert.ok(!body.includes(c.secret) && !body.includes(c.apiKey), `/${path} leaks a secret`);
    }
    assert.deepEqual(await (await fetch(`${example.url}config`)).json(), { url: c.wssUrl, tenant: 'demo' });
    assert.equal((await fetch(`${example.url}token?user=${encodeURIComponent('no spaces')}`)).status, 400);

    const pageErrors: string[] = [];
    const open = async (user: string): Promise<Page> => {
      // Separate contexts: two people, two cookie jars (nginx's sticky cookie is per browser).
      const context = await b.newContext({ viewport: { width: 1100, height: 620 }, locale: 'en-GB', timezoneId: 'UTC' });
      const page = await context.newPage();
      page.setDefaultTimeout(10_000);
      page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
      await page.goto(`${example.url}?user=${user}`);
      await page.locator('#connection[data-state="connected"]').waitFor();
      return page;
    };
    const alice = await open('alice');
    const bob = await open('bob');
    const sockets: string[] = [];
    for (const page of [alice, bob]) page.on('websocket', (ws) => sockets.push(ws.url()));

    await until('alice to see bob online', () => alice.locator('#presence li').allTextContents(), ['alice (you)', 'bob']);
    await until('bob to see alice online', () => bob.locator('#presence li').allTextContents(), ['alice', 'bob (you)']);

    await alice.fill('#message', 'Hi Bob! This is the browser bundle, over wss through nginx.');
    await alice.press('#message', 'Enter');
    const first = 'alice: Hi Bob! This is the browser bundle, over wss through nginx.';
    await until('bob to get alice\'s message', () => shown(bob), [first]);
    await bob.fill('#message', 'Hi Alice! Got it, and I see you online.');
    await bob.click('#send button');
    const second = 'bob: Hi Alice! Got it, and I see you online.';
    await until('alice to get bob\'s reply', () => shown(alice), [first, second]);

    // A backend publishes through the HTTP API (nginx → any node → everyone in the room).
    await c.publish({ tenant: 'demo', room: 'lobby', event: 'chat', data: { text: 'Published by the backend with POST /v1/publish.' }, idempotency_key: 'example-1' });
    const third = 'backend: Published by the backend with POST /v1/publish.';
    await until('alice to get the backend message', () => shown(alice), [first, second, third]);
    await until('bob to get the backend message', () => shown(bob), [first, second, third]);

    // Alice joins a second room, goes back to the lobby, and a message there counts as unread.
    await alice.fill('#room-name', 'chat:general');
    await alice.press('#room-name', 'Enter');
    await until('the room title', () => alice.locator('#room-title').textContent(), 'chat:general');
    await until('alice alone in chat:general', () => alice.locator('#presence li').allTextContents(), ['alice (you)']);
    await alice.locator('#rooms li', { hasText: 'lobby' }).click();
    await c.publish({ tenant: 'demo', room: 'chat:general', event: 'chat', data: { user: 'carol', text: 'anyone here?' }, idempotency_key: 'example-2' });
    await until('the unread badge', () => alice.locator('#rooms li .unread').allTextContents(), ['1']);
    assert.deepEqual(await alice.locator('#rooms li').allTextContents(), ['lobby', 'chat:general1']);
    assert.deepEqual(await shown(alice), [first, second, third], 'the lobby again, each message once');

    assert.equal(await alice.locator('#login').isVisible(), false, 'no login form once signed in');
    assert.equal(await alice.locator('#hint').isVisible(), false, 'no hint while connected');
    assert.equal(await alice.locator('#state').textContent(), 'connected');
    assert.match((await alice.locator('#detail').textContent()) ?? '', /^ · local-\d+$/);
    assert.deepEqual(sockets, [], 'no reconnects during the test');
    assert.equal(pageErrors.join('\n'), '', 'uncaught exceptions in the pages');

    const png = join(packageRoot, 'build', 'screenshots', 'chat.png');
    mkdirSync(join(packageRoot, 'build', 'screenshots'), { recursive: true });
    await alice.screenshot({ path: png });
    if (process.env['UPDATE_SCREENSHOTS'] === '1') copyFileSync(png, join(packageRoot, 'examples', 'chat.png'));
    console.log(`screenshot: ${png}${process.env['UPDATE_SCREENSHOTS'] === '1' ? ' (copied to examples/chat.png)' : ''}`);

    // Without ?user= the page asks for a name first; alice sees dave arrive (a live join event).
    const dave = await (await b.newContext()).newPage();
    dave.setDefaultTimeout(10_000);
    dave.on('pageerror', (e) => pageErrors.push(`dave: ${e.message}`));
    await dave.goto(example.url);
    assert.equal(await dave.locator('#app').isVisible(), false);
    await dave.fill('#login-name', 'dave');
    await dave.press('#login-name', 'Enter');
    await dave.locator('#connection[data-state="connected"]').waitFor();
    await until('alice to see dave join', () => alice.locator('#presence li').allTextContents(), ['alice (you)', 'bob', 'dave']);
    await until('dave to see the lobby from history', () => shown(dave), [first, second, third]);
    assert.equal(pageErrors.join('\n'), '', 'uncaught exceptions in the pages');
  });

  it('a browser that does not trust the certificate cannot connect, and the page says what to do', async () => {
    assert.ok(cluster);
    // No SPKI pin: Chromium verifies nginx's self-signed certificate and refuses it.
    const strict = await launchChromium();
    try {
      const page = await strict.newPage();
      page.setDefaultTimeout(10_000);
      await page.goto(`${url}?user=eve`);
      await page.locator('#hint').waitFor();
      const hint = (await page.locator('#hint').textContent()) ?? '';
      assert.ok(hint.includes(`https://localhost:${cluster.nginxPort}/nginx-healthz`), hint);
      assert.match((await page.locator('#detail').textContent()) ?? '', /closed 1006/);
      assert.notEqual(await page.locator('#state').textContent(), 'connected');
    } finally {
      await closeBrowser(strict);
    }
  });
});
