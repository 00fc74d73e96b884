// Three real nodes on a real Redis: recovery across a drain (1012) and a
// crash (SIGKILL + restart on the same port) with a sequence-numbered
// stream — zero loss, zero duplicates — and a 4010 provoked by losing a
// message in Redis on purpose.
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';

import type { FanoutClient } from '@fanout/client';
import { EventLog, Inbox, disconnectAll, makeClient } from './support/client.js';
import { FanoutNode } from './support/node.js';
import { RedisServer } from './support/redis.js';
import { mintToken } from './support/tokens.js';
import { sleep, waitFor, within } from './support/wait.js';

const HEARTBEAT_MS = 200;

describe('cluster: 3 nodes and redis-server', () => {
  let redis: RedisServer;
  let nodes: FanoutNode[] = [];
  let prefix = '';
  let clusters = 0;

  before(async () => {
    redis = await RedisServer.start();
  });
  after(async () => {
    await redis.stop();
  });
  afterEach(async () => {
    disconnectAll();
    await Promise.all(nodes.map((n) => n.stop()));
    nodes = [];
  });

  /** Starts `n` nodes with a fresh key prefix and waits until each one counts all of them. */
  async function cluster(n: number): Promise<FanoutNode[]> {
    clusters += 1;
    prefix = `fanout-js-${process.pid}-${clusters}`;
    const redisTable = {
      url: redis.url,
      prefix,
      heartbeat: `${HEARTBEAT_MS}ms`,
      command_timeout: '1000ms',
      probe_interval: '1000ms',
      channel_linger: '1000ms',
    };
    nodes = await Promise.all(Array.from({ length: n }, () => FanoutNode.start({ redis: redisTable })));
    for (const node of nodes) {
      await waitFor(`${node.id} to see ${n} nodes`, 10_000, async () => {
        const stats = await node.api('GET', '/v1/stats');
        return (stats.body as { cluster?: { nodes?: number } }).cluster?.nodes === n;
      });
    }
    return nodes;
  }

  /** Publishes `{seq}` for seq = 1..count through `via`, one after the other. */
  async function stream(via: FanoutNode, room: string, count: number): Promise<void> {
    for (let seq = 1; seq <= count; seq += 1) {
      await via.publish({ tenant: 't1', room, event: 'n', data: { seq } });
    }
  }

  const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

  it('a drain (1012) mid-stream: the client moves to another node and recovers every message once, in order', async () => {
    const [n0, n1, n2] = await cluster(3);
    assert.ok(n0 && n1 && n2);
    const room = 'chat:drain';
    const N = 600;
    // The load balancer: the first node still running.
    const url = (): string => (n0.running ? n0 : n1).wsUrl;
    const client: FanoutClient = makeClient(url, { getToken: () => mintToken({ sub: 'mover' }) });
    const log = new EventLog(client);
    await client.connect();
    const inbox = new Inbox(client.subscribe(room));
    await inbox.subscription.ready;
    // Own publishes are counted from their acks, never delivered back.
    const own = [];
    for (let i = 1; i <= 5; i += 1) own.push(await client.publish(room, 'own', { own: i }));
    assert.deepEqual(own.map((r) => r.offset), [1, 2, 3, 4, 5]);

    const publishing = stream(n2, room, N);
    await inbox.waitCount(150, 10_000);
    assert.equal(await n0.drain(), 0);
    await within('the publisher', 30_000, publishing);
    await inbox.waitCount(N, 15_000);
    await sleep(200);

    assert.deepEqual(inbox.seqs(), range(N), 'every message once, in order');
    assert.deepEqual(inbox.messages.map((m) => m.offset), range(N).map((s) => s + 5));
    assert.deepEqual(inbox.subscription.position?.offset, N + 5);
    const closes = log.all('disconnected');
    assert.deepEqual(closes.map((d) => d.code), [1012]);
    assert.deepEqual(inbox.subscribed.map((s) => [s.resubscribed, s.recovered]), [[false, false], [true, true]]);
    assert.equal(client.welcome?.node, n1.id);
  });

  it('SIGKILL mid-stream and a restart on the same port: the stream is recovered from Redis', async () => {
    const [n0, n1] = await cluster(3);
    assert.ok(n0 && n1);
    const room = 'chat:crash';
    const N = 400;
    const client = makeClient(n0.wsUrl, { getToken: () => mintToken({ sub: 'crashed' }) });
    const log = new EventLog(client);
    await client.connect();
    const inbox = new Inbox(client.subscribe(room));
    await inbox.subscription.ready;

    const publishing = stream(n1, room, N);
    await inbox.waitCount(100, 10_000);
    await n0.kill();
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 1006);
    // Let the dead node's registry entries expire (three heartbeats) before it comes back under the same id.
    await sleep(4 * HEARTBEAT_MS);
    await n0.restart();
    await within('the publisher', 30_000, publishing);
    await inbox.waitCount(N, 15_000);
    await sleep(200);

    assert.deepEqual(inbox.seqs(), range(N), 'every message once, in order');
    assert.deepEqual(inbox.messages.map((m) => m.offset), range(N));
    const last = inbox.subscribed.at(-1);
    assert.deepEqual([last?.resubscribed, last?.recovered], [true, true]);
    assert.equal(client.welcome?.node, n0.id);
  });

  it('4010 (a message lost for good): reconnects, resubscribes, says it did not recover, and goes on live', async () => {
    const [n0, n1] = await cluster(2);
    assert.ok(n0 && n1);
    const room = 'chat:lost';
    const client = makeClient(n1.wsUrl, { getToken: () => mintToken({ sub: 'unlucky' }) });
    const log = new EventLog(client);
    await client.connect();
    const inbox = new Inbox(client.subscribe(room));
    const first = await inbox.subscription.ready;
    await n0.publish({ tenant: 't1', room, event: 'n', data: { seq: 1 } });
    await inbox.waitCount(1, 5_000);
    // Number offset 2 in Redis without storing or publishing it, as if pub/sub and history both lost it.
    assert.equal(await redis.command(['HINCRBY', `${prefix}:{t1/${room}}:meta`, 'top', '1']), ':2');
    await n0.publish({ tenant: 't1', room, event: 'n', data: { seq: 3 } });

    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.code, 4010);
    assert.equal(closed.willReconnect, true);
    const again = await inbox.waitSubscribed(2, 5_000);
    assert.deepEqual([again.resubscribed, again.recovered, again.epoch, again.offset], [true, false, first.epoch, 3]);
    await n0.publish({ tenant: 't1', room, event: 'n', data: { seq: 4 } });
    await inbox.waitCount(2, 5_000);
    assert.deepEqual(inbox.seqs(), [1, 4]);
    assert.deepEqual(inbox.subscription.position, { epoch: first.epoch, offset: 4 });
  });
});
