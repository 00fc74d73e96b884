/**
 * Debian's headless Chromium, driven by playwright-core (which ships no
 * browser and downloads none), made to accept the cluster's self-signed
 * certificate — and nothing else it would not accept anyway.
 *
 * How: `--ignore-certificate-errors-spki-list` with the SHA-256 of the
 * certificate's public key. Chromium then ignores a chain it cannot verify
 * only when that chain carries this one key, which cluster.sh generated for
 * this run; every other certificate is verified as usual, and the TLS
 * handshake itself (versions, ciphers) is untouched, so the page really
 * speaks wss through nginx's shipped TLS profile. Chromium honours the flag
 * only with a --user-data-dir of its own, which Playwright always gives it
 * (a temporary profile). The alternatives weaken more or leak out of the test:
 * - `--ignore-certificate-errors` or Playwright's `ignoreHTTPSErrors`
 *   accept any certificate of any host;
 * - trusting the certificate as a root means writing it into the user's
 *   NSS database ($HOME/.pki/nssdb), shared by every Chromium the user runs
 *   and outliving the test; and cluster.sh's certificate is a CA:FALSE leaf,
 *   with no CA to trust.
 */

import { X509Certificate, createHash } from 'node:crypto';

import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';

import { chromiumBinary } from '../../support/paths.js';
import { within } from '../../support/wait.js';

/** base64(SHA-256(SubjectPublicKeyInfo)): the form the Chromium flag takes (RFC 7469 pins). */
export function spkiHash(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

/**
 * Headless Chromium that accepts certificates with `certPem`'s key (without
 * `certPem`: a browser that trusts only what the system trusts). Close it
 * with `closeBrowser`.
 */
export async function launchChromium(certPem?: string): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumBinary(),
    headless: true,
    timeout: 30_000,
    args: certPem === undefined ? [] : [`--ignore-certificate-errors-spki-list=${spkiHash(certPem)}`],
  });
}

/** Closes the browser, bounded: a hung browser process is killed by Playwright at exit at the latest. */
export async function closeBrowser(browser: Browser | undefined): Promise<void> {
  if (!browser) return;
  await within('Chromium to close', 10_000, browser.close()).catch((thrown: unknown) => {
    console.error(thrown instanceof Error ? thrown.message : String(thrown));
  });
}
