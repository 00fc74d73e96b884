// The package as consumers get it: the CommonJS build, the browser bundle
// (evaluated in a fresh context where `WebSocket` is the only host object,
// as on a page), and no runtime dependency outside the msgpack entry.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createContext, runInContext } from 'node:vm';

import { decode, encode } from '@msgpack/msgpack';
import WebSocket from 'ws';

import * as esm from '@fanout/client';
import { FanoutNode } from './support/node.js';
import { packageRoot } from './support/paths.js';
import { mintToken } from './support/tokens.js';
import { within } from './support/wait.js';

type Api = typeof esm;

/** Connects with `api`'s client, subscribes, and checks a message published by the node arrives. */
async function roundTrip(api: Api, url: string, options: Partial<esm.FanoutClientOptions> = {}): Promise<void> {
  const client = new api.FanoutClient(url, { token: mintToken({ sub: 'pkg' }), lifecycle: null, ...options });
  try {
    await within('connect', 5_000, client.connect());
    const sub = client.subscribe('chat:pkg');
    await within('subscribe', 5_000, sub.ready);
    const got = new Promise<unknown>((resolve) => sub.once('message', (m) => resolve(m.data)));
    const response = await fetch(`${url.replace('ws://', 'http://').replace('/ws', '')}/v1/publish`, {
      method: 'POST',
      headers: { Authorization: 'Bearer test-api-key-0123456789', 'Content-Type': 'application/json' },
      body: JSON.stringify({ tenant: 't1', room: 'chat:pkg', event: 'n', data: { ok: true } }),
    });
    assert.equal(response.status, 202);
    // (Compared as JSON: the bundle's objects come from another realm, with other prototypes.)
    assert.deepEqual(JSON.parse(JSON.stringify(await within('message', 5_000, got))), { ok: true });
  } finally {
    client.disconnect();
  }
}

describe('package', () => {
  let node: FanoutNode;
  before(async () => {
    node = await FanoutNode.start();
  });
  after(async () => {
    await node.stop();
  });

  it('the CommonJS build exports the same API and works', async () => {
    const require = createRequire(import.meta.url);
    const cjs = require('@fanout/client') as Api;
    assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
    const { msgpackCodec } = require('@fanout/client/msgpack') as typeof import('@fanout/client/msgpack');
    assert.equal(msgpackCodec.subprotocol, 'fanout.msgpack');
    await roundTrip(cjs, node.wsUrl, { WebSocket, codec: msgpackCodec });
  });

  it('the browser bundle defines the global `Fanout` and works with the global WebSocket, both codecs', async () => {
    const code = readFileSync(join(packageRoot, 'dist/browser/fanout.min.js'), 'utf8');
    assert.doesNotMatch(code, /\brequire\(|\bprocess\.|@msgpack/, 'no Node-isms, no bundled peer');
    const page = createContext({ WebSocket, setTimeout, clearTimeout });
    runInContext(code, page);
    const Fanout = (page as { Fanout?: Api }).Fanout;
    assert.ok(Fanout, 'global Fanout');
    assert.deepEqual(Object.keys(Fanout).sort(), Object.keys(esm).sort());
    await roundTrip(Fanout, node.wsUrl);
    await roundTrip(Fanout, node.wsUrl, { codec: Fanout.createMsgpackCodec({ encode, decode }) });
  });

  it('has no runtime dependency: only the msgpack entry imports @msgpack/msgpack', () => {
    for (const build of ['esm', 'cjs']) {
      const dir = join(packageRoot, 'dist', build);
      const importers = readdirSync(dir).filter((f) => f.endsWith('.js') && /(from ['"]|require\(['"])@msgpack\/msgpack['"]/.test(readFileSync(join(dir, f), 'utf8')));
      assert.deepEqual(importers, ['msgpack.js'], build);
    }
    const manifest = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { dependencies?: object };
    assert.equal(manifest.dependencies, undefined);
  });
});
