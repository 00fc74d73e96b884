// Token renewal on a live connection with short-lived tokens minted by the
// test: `getToken` before `exp`, the new token sent with `refresh`, and
// failures reported as `error` events and retried.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import type { FanoutError, TokenReason } from '@fanout/client';
import { EventLog, disconnectAll, makeClient } from './support/client.js';
import { FanoutNode } from './support/node.js';
import { mintToken } from './support/tokens.js';
import { sleep, within } from './support/wait.js';

/** Lifetime of the tokens below, in seconds: the node closes a connection at `exp` without a refresh. */
const TTL = 3;

// The tests wait out token lifetimes, so they run side by side (each with its own users).
describe('token refresh', { concurrency: true }, () => {
  let node: FanoutNode;
  before(async () => {
    node = await FanoutNode.start();
  });
  after(async () => {
    disconnectAll();
    await node.stop();
  });

  it('renews before exp and sends the new token with `refresh`: the connection outlives every token', async () => {
    const reasons: TokenReason[] = [];
    const renewing = makeClient(node.wsUrl, {
      getToken: ({ reason }) => {
        reasons.push(reason);
        return mintToken({ sub: 'renewer', ttlSec: TTL });
      },
    });
    // The control: the same lifetime without getToken. The node closes it at exp, and it cannot renew.
    const control = makeClient(node.wsUrl, { token: mintToken({ sub: 'control', ttlSec: TTL }) });
    const renewingLog = new EventLog(renewing);
    const controlLog = new EventLog(control);
    const started = Date.now();
    const welcome = await within('connect', 5_000, renewing.connect());
    await control.connect();

    const controlClosed = await controlLog.wait('disconnected', (TTL + 2) * 1_000);
    assert.deepEqual([controlClosed.code, controlClosed.willReconnect], [4001, false]);
    assert.equal((await controlLog.wait('error', 1_000)).kind, 'token');

    await sleep(Math.max(0, started + 2 * TTL * 1_000 + 500 - Date.now()));
    assert.deepEqual(renewingLog.all('disconnected'), [], 'never closed');
    assert.equal(renewing.welcome?.conn, welcome.conn, 'the same connection');
    assert.equal(reasons[0], 'connect');
    assert.ok(reasons.filter((r) => r === 'refresh').length >= 2, `getToken calls: ${reasons.join(', ')}`);
    assert.ok(await renewing.ping() >= 0);
  });

  it('getToken failures surface as `error` events and are retried with backoff, on connect and on refresh', async () => {
    let calls = 0;
    const client = makeClient(node.wsUrl, {
      getToken: () => {
        calls += 1;
        // Calls 1 and 2 (connect) and 4 (the first refresh) fail.
        if (calls === 1 || calls === 2 || calls === 4) throw new Error(`token service unavailable (call ${calls})`);
        return mintToken({ sub: 'flaky', ttlSec: TTL });
      },
    });
    const log = new EventLog(client);
    const started = Date.now();
    await within('connect', 5_000, client.connect());
    const connectErrors = log.all('error');
    assert.equal(connectErrors.length, 2);
    assert.ok(connectErrors.every((e) => e.kind === 'token' && /token service unavailable/.test(e.message)));
    const refreshError: FanoutError = await log.wait('error', TTL * 1_000, (e) => /call 4/.test(e.message));
    assert.equal(refreshError.kind, 'token');
    assert.match(refreshError.message, /token refresh failed/);
    await sleep(Math.max(0, started + (TTL + 1) * 1_000 - Date.now()));
    assert.deepEqual(log.all('disconnected'), [], 'the retried refresh kept the connection');
    assert.ok(calls >= 5, `${calls} calls`);
  });

  it('a token the server refuses for refresh is reported and a new one is asked for', async () => {
    let calls = 0;
    const client = makeClient(node.wsUrl, {
      getToken: () => {
        calls += 1;
        // The first refresh brings a token of another user: the node answers 403.
        return mintToken({ sub: calls === 2 ? 'someone-else' : 'switcher', ttlSec: TTL });
      },
    });
    const log = new EventLog(client);
    const started = Date.now();
    await client.connect();
    const refused = await log.wait('error', TTL * 1_000);
    assert.equal(refused.kind, 'server');
    assert.equal(refused.code, 403);
    await sleep(Math.max(0, started + (TTL + 1) * 1_000 - Date.now()));
    assert.deepEqual(log.all('disconnected'), []);
    assert.ok(calls >= 3);
  });
});
