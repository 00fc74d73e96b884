// Builds the package: ESM + CJS + declarations with tsc, and one minified
// browser bundle with esbuild. One command (`npm run build`), no globals.
//
//   dist/esm/      ES modules + .d.ts   (package "import" condition)
//   dist/cjs/      CommonJS + .d.ts     (package "require" condition; its own
//                  package.json says "type": "commonjs")
//   dist/browser/  fanout.min.js: an IIFE exposing the global `Fanout`
//                  (JSON codec built in; MessagePack via Fanout.createMsgpackCodec)
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const tsc = require.resolve('typescript/bin/tsc');

function run(args) {
  const result = spawnSync(process.execPath, [tsc, ...args], { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) {
    console.error(`build failed: tsc ${args.join(' ')}`);
    process.exit(result.status ?? 1);
  }
}

rmSync(join(root, 'dist'), { recursive: true, force: true });
run(['-p', 'tsconfig.esm.json']);
run(['-p', 'tsconfig.cjs.json']);
writeFileSync(join(root, 'dist/cjs/package.json'), `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`);

const bundle = join(root, 'dist/browser/fanout.min.js');
mkdirSync(dirname(bundle), { recursive: true });
await build({
  entryPoints: [join(root, 'src/index.ts')],
  outfile: bundle,
  bundle: true,
  format: 'iife',
  globalName: 'Fanout',
  platform: 'browser',
  target: 'es2020',
  minify: true,
  sourcemap: true,
  legalComments: 'none',
  logLevel: 'warning',
});

const code = readFileSync(bundle);
const gzip = gzipSync(code, { level: 9 }).length;
console.log(`dist/browser/fanout.min.js: ${code.length} bytes, ${gzip} bytes gzipped`);
