/**
 * A minimal typed event emitter, the same in browsers and Node.
 *
 * Why not Node's `EventEmitter` or the DOM's `EventTarget`: the first is not
 * in browsers, the second loses the payload types. Listeners run
 * synchronously in registration order, which the client relies on (a
 * subscription's `subscribed` listener runs before the replayed messages are
 * delivered). A listener that throws does not break the client's state: the
 * exception is rethrown asynchronously, as browsers report errors from event
 * handlers, and the other listeners still run.
 */

export type Listener<T> = (payload: T) => void;

export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(event, listener);
  }

  /** Adds a listener that runs at most once. */
  once<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(event, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }

  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): void {
    this.listeners.get(event)?.delete(listener as Listener<never>);
  }

  /** Whether anyone listens to `event`. */
  has<K extends keyof Events>(event: K): boolean {
    return (this.listeners.get(event)?.size ?? 0) > 0;
  }

  emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<Events[K]>)(payload);
      } catch (thrown) {
        setTimeout(() => {
          throw thrown;
        }, 0);
      }
    }
  }

  removeAll(): void {
    this.listeners.clear();
  }
}
