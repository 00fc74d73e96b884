#!/usr/bin/env node
// The chat example's server: the page, the client's browser bundle, and the
// one thing a page cannot do itself — get a token. Node's http module only.
//
//   npm run build                              # once: dist/browser/fanout.min.js
//   node examples/serve.mjs                    # against a dev node (cargo run --release --bin fanout)
//   node examples/serve.mjs --cluster          # against deploy/cluster.sh up (wss through nginx)
//
// then open http://localhost:8000/?user=alice (and ?user=bob in another window).
//
// Options: --port N (8000), --cluster-dir DIR (implies --cluster; default
// ../../target/cluster), --url WS_URL, --secret-file FILE, --tenant T.
//
// The token secret stays here: the page asks GET /token?user=NAME and gets a
// short-lived JWT for rooms `lobby` and `chat:*`. That is the part of your
// backend this stands for — except that a real backend takes the user from
// its own session, never from the request: anyone who can reach this server
// gets a token for any name. It listens on 127.0.0.1 only, for that reason.
import { createHmac } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '8000' },
    cluster: { type: 'boolean', default: false },
    'cluster-dir': { type: 'string' },
    url: { type: 'string' },
    'secret-file': { type: 'string' },
    tenant: { type: 'string' },
  },
});

// Development mode's well-known secret (public on purpose: a dev node only listens on loopback).
const DEV_SECRET = 'fanout-dev-secret-DO-NOT-USE-IN-PRODUCTION';
const ROOMS = ['lobby', 'chat:*'];
const TOKEN_TTL_SECONDS = 15 * 60; // the client renews it before it expires, through /token again
const NAME = /^[A-Za-z0-9_.:@-]{1,128}$/; // docs/protocol.md §1

function fail(message) {
  console.error(`serve.mjs: ${message}`);
  process.exit(1);
}

function read(path, what) {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return fail(`cannot read ${what} at ${path}`);
  }
}

// Where the page connects, the secret tokens are signed with, and the tenant.
let url = 'ws://127.0.0.1:8080/ws';
let secret = DEV_SECRET;
let tenant = 't1';
if (args.cluster || args['cluster-dir']) {
  const dir = args['cluster-dir'] ?? join(here, '../../../target/cluster');
  const nginx = read(join(dir, 'nginx.conf'), 'the cluster (run deploy/cluster.sh up first)');
  const port = /listen 127\.0\.0\.1:(\d+) ssl;/.exec(nginx)?.[1] ?? fail(`no TLS listen line in ${dir}/nginx.conf`);
  url = `wss://localhost:${port}/ws`;
  secret = read(join(dir, 'secret'), "the cluster's token secret");
  tenant = 'demo';
}
if (args.url) url = args.url;
if (args['secret-file']) secret = read(args['secret-file'], 'the secret file');
if (args.tenant) tenant = args.tenant;
if (!NAME.test(tenant)) fail(`invalid tenant ${JSON.stringify(tenant)}`);

function mintToken(user) {
  const b64url = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const exp = Math.floor(Date.now() / 1000) + TOKEN_TTL_SECONDS;
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub: user, tenant, exp, rooms: ROOMS, publish: ROOMS })}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

const bundle = join(here, '../dist/browser/fanout.min.js');
if (!existsSync(bundle)) fail(`${bundle} is missing: run \`npm run build\` first`);
const files = {
  '/': [join(here, 'chat.html'), 'text/html'],
  '/chat.js': [join(here, 'chat.js'), 'text/javascript'],
  '/chat.css': [join(here, 'chat.css'), 'text/css'],
  '/fanout.min.js': [bundle, 'text/javascript'],
  '/fanout.min.js.map': [`${bundle}.map`, 'application/json'],
};

const server = createServer((req, res) => {
  const { pathname, searchParams } = new URL(req.url ?? '/', 'http://localhost');
  const send = (status, type, body) => {
    res.writeHead(status, { 'Content-Type': `${type}; charset=utf-8`, 'Cache-Control': 'no-store' }).end(body);
  };
  if (req.method !== 'GET') return send(405, 'text/plain', 'GET only\n');
  if (pathname === '/config') return send(200, 'application/json', JSON.stringify({ url, tenant }));
  if (pathname === '/token') {
    const user = searchParams.get('user') ?? '';
    if (!NAME.test(user)) return send(400, 'text/plain', 'user: 1-128 of A-Z a-z 0-9 _ . : @ -\n');
    return send(200, 'text/plain', mintToken(user));
  }
  if (pathname === '/favicon.ico') return res.writeHead(204).end();
  const file = files[pathname];
  if (!file) return send(404, 'text/plain', 'not found\n');
  return send(200, file[1], readFileSync(file[0])); // read on every request: edit and reload
});
server.listen(Number(args.port), '127.0.0.1', () => {
  console.log(`chat example on http://localhost:${server.address().port}/?user=alice — connects to ${url} (tenant ${tenant})`);
});
