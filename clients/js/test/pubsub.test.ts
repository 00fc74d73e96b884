// Subscribe, publish, presence and history against a real node, once per
// codec (JSON text frames and MessagePack binary frames).
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';

import { FanoutError, jsonCodec } from '@fanout/client';
import type { Codec, FanoutClient } from '@fanout/client';
import { msgpackCodec } from '@fanout/client/msgpack';
import { EventLog, Inbox, disconnectAll, makeClient } from './support/client.js';
import { FanoutNode } from './support/node.js';
import { mintToken } from './support/tokens.js';
import { sleep, waitFor, within } from './support/wait.js';

const codecs: readonly Codec[] = [jsonCodec, msgpackCodec];

describe('subscribe, publish, presence, history', () => {
  let node: FanoutNode;
  before(async () => {
    node = await FanoutNode.start();
  });
  after(async () => {
    await node.stop();
  });
  afterEach(() => disconnectAll());

  for (const codec of codecs) {
    describe(`with the ${codec.name} codec`, () => {
      const room = `chat:${codec.name}`;
      const connected = async (sub: string, rooms: string[] = ['chat:*', 'lobby']): Promise<FanoutClient> => {
        const client = makeClient(node.wsUrl, { token: mintToken({ sub, rooms }), codec });
        await within(`${sub} connects`, 5_000, client.connect());
        return client;
      };

      it('delivers a publish to other subscribers with its position, not back to the publisher', async () => {
        const alice = await connected(`alice-${codec.name}`);
        const bob = await connected(`bob-${codec.name}`);
        const aliceInbox = new Inbox(alice.subscribe(room));
        const bobSub = bob.subscribe(room);
        const bobInbox = new Inbox(bobSub);
        const subscribed = await within('bob subscribed', 5_000, bobSub.ready);
        await within('alice subscribed', 5_000, aliceInbox.subscription.ready);
        assert.equal(subscribed.recovered, false);
        assert.equal(subscribed.resubscribed, false);
        assert.equal(typeof subscribed.epoch, 'string');
        assert.equal(bobSub.state, 'subscribed');

        const data = { text: 'héllo', n: 1, nested: { list: [1, 'two', null, true] } };
        const result = await alice.publish(room, 'chat', data);
        assert.equal(result.epoch, subscribed.epoch);
        assert.equal(result.offset, (subscribed.offset ?? 0) + 1);
        const [message] = await bobInbox.waitCount(1, 5_000);
        assert.ok(message);
        assert.equal(message.scope, 'room');
        assert.equal(message.room, room);
        assert.equal(message.event, 'chat');
        assert.deepEqual(message.data, data);
        assert.equal(message.offset, result.offset);
        assert.equal(message.epoch, result.epoch);
        assert.match(message.id, /^[0-9a-f-]{36}$/);
        assert.ok(Math.abs(message.ts - Date.now()) < 10_000);
        assert.deepEqual(bobSub.position, { epoch: result.epoch, offset: result.offset });
        assert.deepEqual(alice.subscription(room)?.position, { epoch: result.epoch, offset: result.offset }, 'own publish counted');
        await sleep(100);
        assert.equal(aliceInbox.messages.length, 0, 'not echoed to the publisher');
      });

      it('presence, and join/leave events for subscribers that asked', async () => {
        const watcher = await connected(`watcher-${codec.name}`);
        const sub = watcher.subscribe('lobby', { presenceEvents: true });
        const joins: string[] = [];
        const leaves: string[] = [];
        sub.on('join', (e) => joins.push(e.user));
        sub.on('leave', (e) => leaves.push(e.user));
        await sub.ready;
        const guest = await connected(`guest-${codec.name}`);
        await guest.subscribe('lobby').ready;
        await waitFor('join event', 5_000, () => joins.includes(`guest-${codec.name}`));
        const members = await watcher.presence('lobby');
        assert.deepEqual(
          [...members].sort((a, b) => a.user.localeCompare(b.user)),
          [
            { user: `guest-${codec.name}`, conns: 1 },
            { user: `watcher-${codec.name}`, conns: 1 },
          ],
        );
        assert.deepEqual(await sub.presence(), members);
        await guest.subscription('lobby')?.unsubscribe();
        await waitFor('leave event', 5_000, () => leaves.includes(`guest-${codec.name}`));
      });

      it('history: latest messages, and paging forward with since', async () => {
        const reader = await connected(`reader-${codec.name}`);
        const historyRoom = `chat:history-${codec.name}`;
        for (let seq = 1; seq <= 5; seq += 1) {
          await node.publish({ tenant: 't1', room: historyRoom, event: 'n', data: { seq } });
        }
        const latest = await reader.history(historyRoom, { limit: 2 });
        assert.equal(latest.room, historyRoom);
        assert.equal(latest.offset, 5);
        assert.deepEqual(latest.messages.map((m) => (m.data as { seq: number }).seq), [4, 5]);
        assert.deepEqual(latest.messages.map((m) => m.offset), [4, 5]);
        const page = await reader.subscribe(historyRoom).history({ since: { epoch: latest.epoch, offset: 1 }, limit: 3 });
        assert.deepEqual(page.messages.map((m) => m.offset), [2, 3, 4]);
        await assert.rejects(reader.history('lobby'), (e: unknown) => e instanceof FanoutError && e.kind === 'server' && e.code === 404);
      });

      it('subscribe with `since` (a position kept from an earlier session) replays what was missed', async () => {
        const resumeRoom = `chat:resume-${codec.name}`;
        let epoch = '';
        for (let seq = 1; seq <= 4; seq += 1) {
          epoch = (await node.publish({ tenant: 't1', room: resumeRoom, event: 'n', data: { seq } })).epoch ?? '';
        }
        const client = await connected(`resumer-${codec.name}`);
        const inbox = new Inbox(client.subscribe(resumeRoom, { since: { epoch, offset: 2 } }));
        const subscribed = await inbox.subscription.ready;
        assert.deepEqual([subscribed.recovered, subscribed.offset], [true, 4]);
        await inbox.waitCount(2, 5_000);
        assert.deepEqual(inbox.seqs(), [3, 4]);
        // A position of another epoch cannot be recovered: the subscription starts from the current one.
        const stale = new Inbox(client.subscribe(`${resumeRoom}-b`, { since: { epoch: 'gone', offset: 9 } }));
        assert.equal((await stale.subscription.ready).recovered, false);
      });

      it('user- and tenant-scoped messages reach the client `message` event', async () => {
        const client = await connected(`direct-${codec.name}`);
        const log = new EventLog(client);
        await node.publish({ tenant: 't1', user: `direct-${codec.name}`, event: 'notify', data: { to: 'you' } });
        await node.publish({ tenant: 't1', event: 'maintenance', data: { at: 1 } });
        const user = await log.wait('message', 5_000, (m) => m.scope === 'user');
        assert.deepEqual([user.event, user.data, user.room], ['notify', { to: 'you' }, undefined]);
        const tenant = await log.wait('message', 5_000, (m) => m.scope === 'tenant');
        assert.equal(tenant.event, 'maintenance');
      });

      it('requests refused by the server reject with its code; refused subscriptions end', async () => {
        const client = await connected(`limited-${codec.name}`, ['chat:mine']);
        await assert.rejects(client.publish('chat:other', 'e', 1), (e: unknown) => e instanceof FanoutError && e.kind === 'server' && e.code === 403);
        await assert.rejects(client.publish('bad room!', 'e', 1), (e: unknown) => e instanceof FanoutError && e.code === 400);
        const sub = client.subscribe('chat:other');
        const errors: FanoutError[] = [];
        sub.on('error', (e) => errors.push(e));
        await assert.rejects(sub.ready, (e: unknown) => e instanceof FanoutError && e.code === 403);
        assert.equal(sub.state, 'failed');
        assert.equal(errors.length, 1);
        assert.equal(client.subscription('chat:other'), undefined);
        assert.ok(await client.ping() >= 0, 'the connection is fine');
      });

      it('unsubscribe stops delivery at once', async () => {
        const client = await connected(`leaver-${codec.name}`);
        const leaveRoom = `chat:leave-${codec.name}`;
        const sub = client.subscribe(leaveRoom);
        const inbox = new Inbox(sub);
        await sub.ready;
        await node.publish({ tenant: 't1', room: leaveRoom, event: 'n', data: { seq: 1 } });
        await inbox.waitCount(1, 5_000);
        await sub.unsubscribe();
        assert.equal(sub.state, 'unsubscribed');
        await node.publish({ tenant: 't1', room: leaveRoom, event: 'n', data: { seq: 2 } });
        await sleep(150);
        assert.deepEqual(inbox.seqs(), [1]);
        assert.deepEqual(client.subscriptions, []);
      });
    });
  }
});
