/**
 * Signals from the environment about the network and the page: `online`,
 * `offline`, and the page becoming visible again.
 *
 * Why the client cares: while the device is offline, reconnect attempts only
 * burn through the backoff, so they wait for `online` and then go at once.
 * When a page comes back to the foreground its timers may have been
 * throttled for minutes, so the connection is checked right away rather than
 * at the next (late) liveness tick.
 *
 * Browsers provide these events; Node, workers without a document, and
 * React Native do not (React Native apps can pass their own source built on
 * NetInfo / AppState). Everything here is guarded, so in a runtime without
 * them the default source is simply absent.
 */

export interface LifecycleHandlers {
  online(): void;
  offline(): void;
  /** The page became visible. */
  visible(): void;
}

export interface Lifecycle {
  /** `false` only when the runtime knows it is offline. */
  isOnline(): boolean;
  /** Starts delivering signals; returns a function that stops them. */
  listen(handlers: LifecycleHandlers): () => void;
}

interface EventSource {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

function asEventSource(value: unknown): EventSource | undefined {
  const candidate = value as Partial<EventSource> | undefined;
  return candidate && typeof candidate.addEventListener === 'function' && typeof candidate.removeEventListener === 'function'
    ? (candidate as EventSource)
    : undefined;
}

/** The browser's signals (`window` online/offline, `document` visibility), or `undefined` outside a browser. */
export function browserLifecycle(): Lifecycle | undefined {
  const g = globalThis as { window?: unknown; document?: unknown; navigator?: { onLine?: unknown } };
  const win = asEventSource(g.window);
  const doc = asEventSource(g.document);
  if (!win && !doc) return undefined;
  const visibility = (): unknown => (g.document as { visibilityState?: unknown } | undefined)?.visibilityState;
  return {
    isOnline: () => g.navigator?.onLine !== false,
    listen(handlers) {
      const online = (): void => handlers.online();
      const offline = (): void => handlers.offline();
      const visibilityChange = (): void => {
        if (visibility() === 'visible') handlers.visible();
      };
      win?.addEventListener('online', online);
      win?.addEventListener('offline', offline);
      doc?.addEventListener('visibilitychange', visibilityChange);
      return () => {
        win?.removeEventListener('online', online);
        win?.removeEventListener('offline', offline);
        doc?.removeEventListener('visibilitychange', visibilityChange);
      };
    },
  };
}
