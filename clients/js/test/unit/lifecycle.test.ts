// The browser's online/offline/visibility signals, and their absence elsewhere.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { browserLifecycle } from '#internal/lifecycle.js';

const g = globalThis as { window?: unknown; document?: unknown };

describe('browserLifecycle', () => {
  afterEach(() => {
    delete g.window;
    delete g.document;
  });

  it('is absent in a runtime without window and document (Node, workers, React Native)', () => {
    assert.equal(browserLifecycle(), undefined);
  });

  it('forwards online, offline and visible, and stops when asked', () => {
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: 'hidden' });
    g.window = win;
    g.document = doc;
    const lifecycle = browserLifecycle();
    assert.ok(lifecycle);
    assert.equal(lifecycle.isOnline(), true, 'no navigator.onLine: assumed online');
    const seen: string[] = [];
    const stop = lifecycle.listen({ online: () => seen.push('online'), offline: () => seen.push('offline'), visible: () => seen.push('visible') });
    win.dispatchEvent(new Event('offline'));
    win.dispatchEvent(new Event('online'));
    doc.dispatchEvent(new Event('visibilitychange')); // still hidden: nothing
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    stop();
    win.dispatchEvent(new Event('online'));
    assert.deepEqual(seen, ['offline', 'online', 'visible']);
  });
});
