/**
 * Serves the test page and the client's minified browser bundle over HTTPS
 * with the cluster's certificate. Why HTTPS on localhost: the page is then
 * same-site with `wss://localhost:<nginx>` (ports do not count), as an
 * application and its real-time endpoint usually are, so the browser sends
 * nginx's sticky cookie (`Secure; SameSite=Lax`) on reconnects exactly as it
 * would in production.
 */

import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { Server } from 'node:https';
import { join } from 'node:path';

import { packageRoot } from '../../support/paths.js';

/** `dist/browser/fanout.min.js`, built by `npm run build`. */
export function bundlePath(): string {
  const path = join(packageRoot, 'dist', 'browser', 'fanout.min.js');
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`npm run build\` first (npm run test:browser does)`);
  return path;
}

const PAGE = '<!doctype html><meta charset="utf-8"><title>fanout browser test</title><script src="/fanout.min.js"></script>';

export class PageServer {
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(certPem: string, keyPem: string): Promise<PageServer> {
    const bundle = readFileSync(bundlePath());
    const server = createServer({ cert: certPem, key: keyPem }, (req, res) => {
      if (req.url === '/') {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' }).end(PAGE);
      } else if (req.url === '/fanout.min.js') {
        res.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8' }).end(bundle);
      } else if (req.url === '/favicon.ico') {
        res.writeHead(204).end(); // no 404 in the page's console
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('the page server has no port');
    return new PageServer(server, address.port);
  }

  get url(): string {
    return `https://localhost:${this.port}/`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
