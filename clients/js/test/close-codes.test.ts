// Every close code of docs/protocol.md §4, provoked for real on a node
// configured for it, and what the client does about it.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { FanoutError, jsonCodec } from '@fanout/client';
import { msgpackCodec } from '@fanout/client/msgpack';
import type { Codec, FanoutClient } from '@fanout/client';
import { EventLog, Inbox, TEST_RECONNECT, disconnectAll, makeClient } from './support/client.js';
import { FanoutNode } from './support/node.js';
import type { NodeConfig } from './support/node.js';
import { mintToken } from './support/tokens.js';
import { sleep, waitFor, within } from './support/wait.js';

const nodes: FanoutNode[] = [];

async function startNode(config: NodeConfig = {}): Promise<FanoutNode> {
  const node = await FanoutNode.start(config);
  nodes.push(node);
  return node;
}

async function connected(node: FanoutNode, sub: string, options: Partial<Parameters<typeof makeClient>[1]> = {}): Promise<FanoutClient> {
  const client = makeClient(node.wsUrl, { getToken: () => mintToken({ sub }), ...options });
  await within(`${sub} connects`, 5_000, client.connect());
  return client;
}

const isKind = (kind: FanoutError['kind'], code?: number) => (e: unknown): boolean =>
  e instanceof FanoutError && e.kind === kind && (code === undefined || e.code === code);

describe('close codes', () => {
  afterEach(async () => {
    disconnectAll();
    await Promise.all(nodes.splice(0).map((n) => n.stop()));
  });

  it('4001 (disconnect-user): calls getToken again, reconnects and recovers', async () => {
    const node = await startNode();
    const reasons: string[] = [];
    const client = makeClient(node.wsUrl, {
      getToken: ({ reason }) => {
        reasons.push(reason);
        return mintToken({ sub: 'kicked' });
      },
    });
    const log = new EventLog(client);
    await client.connect();
    const inbox = new Inbox(client.subscribe('chat:kick'));
    await inbox.subscription.ready;
    await node.publish({ tenant: 't1', room: 'chat:kick', event: 'n', data: { seq: 1 } });
    await inbox.waitCount(1, 5_000);

    const answer = await node.api('POST', '/v1/tenants/t1/users/kicked/disconnect');
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 4001);
    assert.equal(closed.willReconnect, true);
    await node.publish({ tenant: 't1', room: 'chat:kick', event: 'n', data: { seq: 2 } });
    await log.wait('connected', 5_000);
    const resubscribed = await inbox.waitSubscribed(2, 5_000);
    assert.deepEqual([resubscribed.resubscribed, resubscribed.recovered], [true, true]);
    await inbox.waitCount(2, 5_000);
    assert.deepEqual(inbox.seqs(), [1, 2]);
    assert.deepEqual(reasons, ['connect', 'rejected']);
  });

  it('4003 (connections per user): backs off within the bounds, connects once a slot frees', async () => {
    const node = await startNode({ limits: { max_connections_per_user: 1 } });
    const first = await connected(node, 'crowded');
    const second = makeClient(node.wsUrl, { getToken: () => mintToken({ sub: 'crowded' }), reconnect: { minDelayMs: 40, maxDelayMs: 300 } });
    const log = new EventLog(second);
    void second.connect();
    const refusals = [];
    for (let i = 0; i < 4; i += 1) refusals.push(await log.wait('disconnected', 5_000, (d) => d.code === 4003));
    // Consecutive failures: the n-th delay is drawn from [min, min(max, min·2^(n+1))].
    refusals.forEach((d, n) => {
      assert.equal(d.willReconnect, true);
      const delay = d.delayMs ?? -1;
      assert.ok(delay >= 40 && delay <= Math.min(300, 40 * 2 ** (n + 1)), `delay #${n}: ${delay}`);
    });
    first.disconnect();
    const welcome = await log.wait('connected', 5_000);
    assert.equal(welcome.user, 'crowded');
  });

  it('4008 (publish rate): pending publishes fail, then the client backs off and reconnects', async () => {
    const node = await startNode({ limits: { publish_rate: 1, publish_burst: 1, rate_limit_strikes: 3 } });
    const client = await connected(node, 'spammer');
    const log = new EventLog(client);
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => client.publish('chat:spam', 'n', { i })));
    assert.equal(results[0]?.status, 'fulfilled');
    const reasons = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as FanoutError);
    assert.ok(reasons.some(isKind('server', 429)), 'some 429s');
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 4008);
    assert.equal(closed.willReconnect, true);
    assert.ok((closed.delayMs ?? 0) >= TEST_RECONNECT.minDelayMs);
    assert.ok(reasons.slice(-2).every((e) => e.kind === 'server' || e.kind === 'connection_lost'));
    await log.wait('connected', 5_000);
    assert.ok(await client.ping() >= 0);
  });

  it('4009 (slow consumer: a burst beyond the send queue): reconnects and recovers the room', async () => {
    // A queue of 8 frames, and 1 000 frames for this user in one batch: the node pushes them into the
    // queue faster than any socket drains it. (A single frame can no longer outgrow a queue: the node
    // measures a message by its larger encoding and wants send_queue_bytes >= 2 x max_message_bytes.)
    const node = await startNode({ limits: { send_queue_messages: 8 } });
    const client = await connected(node, 'slow', { codec: msgpackCodec, reconnect: { minDelayMs: 300, maxDelayMs: 400 } });
    const log = new EventLog(client);
    const inbox = new Inbox(client.subscribe('chat:slow'));
    await inbox.subscription.ready;
    await node.publish({ tenant: 't1', room: 'chat:slow', event: 'n', data: { seq: 1 } });
    await inbox.waitCount(1, 5_000);
    const burst = Array.from({ length: 1_000 }, (_, i) => ({ tenant: 't1', user: 'slow', event: 'burst', data: { i } }));
    const answer = await node.api('POST', '/v1/publish/batch', { messages: burst });
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 4009);
    assert.equal(closed.willReconnect, true);
    // Published while the client waits out its backoff: recovered from history.
    await node.publish({ tenant: 't1', room: 'chat:slow', event: 'n', data: { seq: 2 } });
    await node.publish({ tenant: 't1', room: 'chat:slow', event: 'n', data: { seq: 3 } });
    const resubscribed = await inbox.waitSubscribed(2, 5_000);
    assert.equal(resubscribed.recovered, true);
    await inbox.waitCount(3, 5_000);
    assert.deepEqual(inbox.seqs(), [1, 2, 3]);
    assert.deepEqual(inbox.messages.map((m) => m.offset), [1, 2, 3]);
  });

  it('1009 (frame over max_frame_bytes): reports and stops, no reconnect loop', async () => {
    const node = await startNode({ limits: { max_frame_bytes: 4_096 } });
    const client = await connected(node, 'big');
    const log = new EventLog(client);
    // Nothing follows the big frame here (the node reads on after its close, so a client that keeps
    // sending would still get the 1009; see test/browser/close-codes.test.ts).
    await assert.rejects(client.publish('chat:big', 'n', { blob: 'x'.repeat(8_000) }), isKind('connection_lost', 1009));
    const closed = await log.wait('disconnected', 2_000);
    assert.deepEqual([closed.code, closed.willReconnect], [1009, false]);
    const error = await log.wait('error', 1_000);
    assert.ok(isKind('closed', 1009)(error), error.message);
    assert.equal(client.state, 'disconnected');
    await sleep(300);
    assert.equal(log.all('connecting').length, 0, 'no reconnect');
  });

  it('4000 (repeated malformed frames, through a broken codec): reports and stops', async () => {
    const node = await startNode({ limits: { malformed_strikes: 3 } });
    // A codec that mangles every frame but `auth`: the node answers 400s, then closes with 4000.
    const broken: Codec = {
      ...jsonCodec,
      name: 'broken',
      encode: (frame) => (frame.type === 'auth' ? jsonCodec.encode(frame) : JSON.stringify({ ...frame, type: `no-${frame.type}` })),
    };
    const client = await connected(node, 'sloppy', { codec: broken });
    const log = new EventLog(client);
    const pings = await Promise.allSettled([client.ping(), client.ping(), client.ping()]);
    const reasons = pings.map((p) => (p.status === 'rejected' ? (p.reason as FanoutError) : undefined));
    assert.ok(reasons.every((e) => e !== undefined && (isKind('server', 400)(e) || e.kind === 'connection_lost')), String(reasons));
    const closed = await log.wait('disconnected', 2_000);
    assert.deepEqual([closed.code, closed.willReconnect], [4000, false]);
    assert.ok(isKind('closed', 4000)(await log.wait('error', 1_000)));
    await sleep(300);
    assert.equal(log.all('connecting').length, 0, 'no reconnect');
  });

  it('an unsupported subprotocol is refused by the WebSocket handshake itself (the server\'s 4000 is never seen)', async () => {
    const node = await startNode();
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'odd' }), codec: { ...jsonCodec, subprotocol: 'fanout.bogus' } });
    const log = new EventLog(client);
    void client.connect();
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 1006);
    assert.match(closed.reason, /subprotocol/i);
    assert.equal(closed.willReconnect, true);
  });

  it('1012 (drain on SIGTERM): reconnects at once with jitter, again with backoff until the node is back', async () => {
    const node = await startNode();
    const client = await connected(node, 'drained');
    const log = new EventLog(client);
    const inbox = new Inbox(client.subscribe('chat:drain'));
    await inbox.subscription.ready;
    assert.equal(await node.drain(), 0, 'the node exits cleanly');
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 1012);
    assert.equal(closed.willReconnect, true);
    assert.ok((closed.delayMs ?? -1) >= 0 && (closed.delayMs ?? -1) <= TEST_RECONNECT.drainJitterMs, `${closed.delayMs}`);
    // Nothing listens now: attempts fail (1006) with growing, bounded delays.
    const refused = await log.wait('disconnected', 5_000, (d) => d.code === 1006);
    assert.ok((refused.delayMs ?? -1) >= TEST_RECONNECT.minDelayMs && (refused.delayMs ?? 0) <= TEST_RECONNECT.maxDelayMs);
    await node.restart();
    await log.wait('connected', 5_000);
    // The embedded bus restarted: a new epoch, so the stream cannot be recovered.
    const resubscribed = await inbox.waitSubscribed(2, 5_000);
    assert.deepEqual([resubscribed.resubscribed, resubscribed.recovered], [true, false]);
  });

  it('SIGKILL and a restart on the same port: reconnects and resubscribes', async () => {
    const node = await startNode();
    const client = await connected(node, 'survivor');
    const log = new EventLog(client);
    const inbox = new Inbox(client.subscribe('chat:crash'));
    await inbox.subscription.ready;
    await node.kill();
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 1006);
    assert.equal(closed.willReconnect, true);
    await sleep(300);
    await node.restart();
    await log.wait('connected', 5_000);
    await inbox.waitSubscribed(2, 5_000);
    await node.publish({ tenant: 't1', room: 'chat:crash', event: 'n', data: { seq: 1 } });
    await inbox.waitCount(1, 5_000);
    assert.equal(client.state, 'connected');
  });

  it('liveness: an idle connection stays up; a frozen node is detected by the ping timeout, requests time out', async () => {
    const node = await startNode({ session: { ping_interval: '1s', idle_timeout: '3s' } });
    const client = await connected(node, 'idle', { connectTimeoutMs: 1_000 });
    const log = new EventLog(client);
    assert.equal(client.welcome?.pingInterval, 1);
    await sleep(3_500); // longer than the node's idle timeout
    assert.equal(log.all('disconnected').length, 0, 'idle but alive');

    await node.freeze();
    const frozenAt = Date.now();
    await assert.rejects(client.ping({ timeoutMs: 300 }), isKind('timeout'));
    const closed = await log.wait('disconnected', 6_000);
    assert.equal(closed.code, 1006);
    assert.match(closed.reason, /ping went unanswered/);
    assert.ok(Date.now() - frozenAt < 4_000, 'detected within interval + timeout (+ slack)');
    // While frozen, the TCP handshake completes but no welcome comes: the connect timeout applies.
    await log.wait('disconnected', 5_000, (d) => /no welcome/.test(d.reason));
    node.thaw();
    await log.wait('connected', 5_000);
    await waitFor('a ping to succeed', 3_000, async () => (await client.ping()) >= 0);
  });
});
