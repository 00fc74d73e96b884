// Connecting and authenticating against a real node: the first-frame `auth`
// (what browsers must use), the Authorization header (where the WebSocket
// implementation can send one), refused and expired tokens, and the
// bounded queue of requests made while disconnected.
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';

import WebSocket from 'ws';

import { FanoutClient, FanoutError } from '@fanout/client';
import type { TokenReason, WebSocketConstructor } from '@fanout/client';
import { EventLog, disconnectAll, makeClient } from './support/client.js';
import { FanoutNode } from './support/node.js';
import { mintToken } from './support/tokens.js';
import { sleep, within } from './support/wait.js';

/** A `ws` subclass that records what the client asked of it. */
function spyWebSocket(): { readonly impl: WebSocketConstructor; readonly opened: { headers: unknown }[]; readonly sent: unknown[] } {
  const opened: { headers: unknown }[] = [];
  const sent: unknown[] = [];
  class Spy extends WebSocket {
    constructor(url: string, protocols?: string | string[], options?: { headers?: { [name: string]: string } }) {
      super(url, protocols, options);
      opened.push({ headers: options?.headers });
    }
    override send(data: unknown): void {
      sent.push(typeof data === 'string' ? JSON.parse(data) : data);
      super.send(data as string);
    }
  }
  return { impl: Spy, opened, sent };
}

describe('connecting and authenticating', () => {
  let node: FanoutNode;
  before(async () => {
    node = await FanoutNode.start();
  });
  after(async () => {
    await node.stop();
  });
  afterEach(() => disconnectAll());

  it('authenticates with a first `auth` frame by default (the browser way) and emits the welcome', async () => {
    const spy = spyWebSocket();
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'u1' }), WebSocket: spy.impl });
    const log = new EventLog(client);
    assert.equal(client.state, 'disconnected');
    const welcome = await within('connect', 5_000, client.connect());
    assert.equal(welcome.user, 'u1');
    assert.equal(welcome.tenant, 't1');
    assert.equal(welcome.node, node.id);
    assert.equal(welcome.pingInterval, 25);
    assert.match(welcome.conn, new RegExp(`^${node.id}-`));
    assert.equal(client.state, 'connected');
    assert.deepEqual(client.welcome, welcome);
    assert.deepEqual(log.names(), ['state', 'connecting', 'state', 'connected']);
    assert.deepEqual(log.all('state').map((s) => s.state), ['connecting', 'connected']);
    assert.deepEqual(spy.opened, [{ headers: undefined }], 'no headers on the upgrade');
    assert.deepEqual(spy.sent[0], { type: 'auth', token: (spy.sent[0] as { token: string }).token });
    assert.ok(await client.ping() >= 0);
  });

  it('authenticates with the Authorization header when `auth: "header"` (ws, React Native)', async () => {
    const spy = spyWebSocket();
    const token = mintToken({ sub: 'u2' });
    const client = makeClient(node.wsUrl, { token, auth: 'header', WebSocket: spy.impl });
    const welcome = await within('connect', 5_000, client.connect());
    assert.equal(welcome.user, 'u2');
    assert.deepEqual(spy.opened, [{ headers: { Authorization: `Bearer ${token}` } }]);
    assert.ok(!spy.sent.some((f) => (f as { type?: string }).type === 'auth'), 'no auth frame');
    assert.ok(await client.ping() >= 0, 'requests work');
  });

  it('after a refused token (4001) asks getToken again, then connects', async () => {
    const reasons: TokenReason[] = [];
    const client = makeClient(node.wsUrl, {
      getToken: ({ reason }) => {
        reasons.push(reason);
        // The first token is signed with the wrong secret: the node refuses it.
        return reasons.length === 1 ? mintToken({ sub: 'u3' }, 'not-the-secret-0123456789') : mintToken({ sub: 'u3' });
      },
    });
    const log = new EventLog(client);
    const welcome = await within('connect', 5_000, client.connect());
    assert.equal(welcome.user, 'u3');
    const closed = log.all('disconnected');
    assert.equal(closed.length, 1);
    assert.equal(closed[0]?.code, 4001);
    assert.equal(closed[0]?.willReconnect, true);
    assert.deepEqual(reasons, ['connect', 'rejected']);
  });

  it('with a static token that expired: reports a token error and stops (no loop)', async () => {
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'u4', ttlSec: -60 }) });
    const log = new EventLog(client);
    await assert.rejects(within('connect', 5_000, client.connect()), (e: unknown) => e instanceof FanoutError && e.kind === 'token');
    const closed = await log.wait('disconnected', 1_000);
    assert.equal(closed.code, 4001);
    assert.equal(closed.willReconnect, false);
    assert.equal((await log.wait('error', 1_000)).kind, 'token');
    assert.equal(client.state, 'disconnected');
    await sleep(300);
    assert.equal(log.all('connecting').length, 1, 'no further attempts');
  });

  it('queues requests made while disconnected (bounded), sends them after the welcome', async () => {
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'u5' }), maxQueuedRequests: 2 });
    const first = client.ping();
    const second = client.presence('chat:q');
    await assert.rejects(client.ping(), (e: unknown) => e instanceof FanoutError && e.kind === 'queue_full');
    await client.connect();
    assert.ok((await first) >= 0);
    assert.deepEqual(await second, []);
  });

  it('with maxQueuedRequests: 0 rejects requests at once while disconnected', async () => {
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'u6' }), maxQueuedRequests: 0 });
    await assert.rejects(client.publish('chat:a', 'e', 1), (e: unknown) => e instanceof FanoutError && e.kind === 'queue_full');
  });

  it('a queued request times out from the call when no connection comes', async () => {
    const client = makeClient('ws://127.0.0.1:9/ws', { token: mintToken({ sub: 'u7' }) });
    void client.connect();
    const started = Date.now();
    await assert.rejects(client.ping({ timeoutMs: 300 }), (e: unknown) => e instanceof FanoutError && e.kind === 'timeout');
    assert.ok(Date.now() - started < 1_000);
  });

  it('disconnect() rejects waiting requests, keeps subscriptions, and stops', async () => {
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'u8' }) });
    const log = new EventLog(client);
    const queued = client.ping();
    const sub = client.subscribe('chat:keep');
    client.disconnect();
    await assert.rejects(queued, (e: unknown) => e instanceof FanoutError && e.kind === 'disconnected');
    await client.connect();
    const subscribed = await within('subscribed', 5_000, sub.ready);
    assert.equal(subscribed.recovered, false);
    client.disconnect();
    assert.equal(client.state, 'disconnected');
    const closed = log.all('disconnected').at(-1);
    assert.deepEqual(closed, { code: 1000, reason: 'client disconnect', willReconnect: false });
    assert.deepEqual(client.subscriptions.map((s) => s.room), ['chat:keep']);
  });

  it('with reconnect disabled, a close ends the client (the application decides what next)', async () => {
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'manual' }), reconnect: { enabled: false } });
    const log = new EventLog(client);
    await client.connect();
    const answer = await node.api('POST', '/v1/tenants/t1/users/manual/disconnect');
    assert.equal(answer.status, 202);
    const closed = await log.wait('disconnected', 5_000);
    assert.deepEqual([closed.code, closed.willReconnect], [4001, false]);
    assert.equal(client.state, 'disconnected');
    await sleep(200);
    assert.equal(log.all('connecting').length, 1);
  });

  it('without a WebSocket implementation on a runtime that has none, says what to pass', () => {
    if (typeof (globalThis as { WebSocket?: unknown }).WebSocket === 'function') {
      // Node ≥ 22: the global is used, nothing to pass.
      assert.doesNotThrow(() => new FanoutClient(node.wsUrl, { token: 't' }));
    } else {
      assert.throws(() => new FanoutClient(node.wsUrl, { token: 't' }), /no global WebSocket; pass one as the `WebSocket` option/);
    }
    assert.throws(() => new FanoutClient(node.wsUrl, { WebSocket }), /pass `token` or `getToken`/);
  });
});
