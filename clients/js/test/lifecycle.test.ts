// Network and page signals (a fake `Lifecycle`, as a browser's or a React
// Native app's would deliver them) against a real node: no attempts while
// offline, an immediate one when the network is back, and a liveness check
// when the page becomes visible.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import type { Lifecycle, LifecycleHandlers } from '@fanout/client';
import { EventLog, disconnectAll, makeClient } from './support/client.js';
import { FanoutNode } from './support/node.js';
import { mintToken } from './support/tokens.js';
import { sleep } from './support/wait.js';

/** A lifecycle the test drives by hand. */
class FakeLifecycle implements Lifecycle {
  online = true;
  private handlers: LifecycleHandlers | undefined;
  isOnline(): boolean {
    return this.online;
  }
  listen(handlers: LifecycleHandlers): () => void {
    this.handlers = handlers;
    return () => {
      this.handlers = undefined;
    };
  }
  goOffline(): void {
    this.online = false;
    this.handlers?.offline();
  }
  goOnline(): void {
    this.online = true;
    this.handlers?.online();
  }
  show(): void {
    this.handlers?.visible();
  }
}

describe('lifecycle signals', () => {
  const nodes: FanoutNode[] = [];
  afterEach(async () => {
    disconnectAll();
    await Promise.all(nodes.splice(0).map((n) => n.stop()));
  });

  it('offline: no attempts; online: reconnects at once', async () => {
    const node = await FanoutNode.start();
    nodes.push(node);
    const lifecycle = new FakeLifecycle();
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'roamer' }), lifecycle, reconnect: { minDelayMs: 2_000, maxDelayMs: 5_000 } });
    const log = new EventLog(client);
    await client.connect();
    lifecycle.goOffline();
    await node.kill();
    const closed = await log.wait('disconnected', 5_000);
    assert.equal(closed.willReconnect, true);
    assert.equal(closed.delayMs, undefined, 'waiting for the network, not for a timer');
    await sleep(300);
    assert.equal(log.all('connecting').length, 1, 'no attempt while offline');
    await node.restart();
    const back = Date.now();
    lifecycle.goOnline();
    await log.wait('connected', 2_000);
    assert.ok(Date.now() - back < 1_000, 'at once, not after the 2 s backoff');
  });

  it('visible: checks the connection at once (a frozen node is found dead without waiting for the ping interval)', async () => {
    const node = await FanoutNode.start();
    nodes.push(node);
    const lifecycle = new FakeLifecycle();
    const client = makeClient(node.wsUrl, { token: mintToken({ sub: 'tab' }), lifecycle, heartbeat: { timeoutMs: 500 } });
    const log = new EventLog(client);
    await client.connect();
    assert.equal(client.welcome?.pingInterval, 25);
    await node.freeze();
    lifecycle.show();
    const closed = await log.wait('disconnected', 3_000);
    assert.equal(closed.code, 1006);
    assert.match(closed.reason, /ping went unanswered/);
    node.thaw();
  });
});
