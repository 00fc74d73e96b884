/**
 * `FanoutClient`: the connection life cycle and the public API.
 *
 * The client is a small state machine — `disconnected` → `connecting` →
 * `connected` → (close) → `reconnecting` → `connecting` … — around one
 * `Connection` at a time. It owns what must survive a reconnect: the token
 * (token.ts), the subscriptions and their stream positions
 * (subscriptions.ts), and the requests waiting for a connection
 * (requests.ts). After every welcome it resubscribes every room with
 * `since`, then sends the queued requests; after every close it asks the
 * close policy (close-policy.ts) whether and how soon to try again.
 *
 * Every asynchronous step (waiting for `getToken`, a reconnect timer)
 * remembers the `run` it belongs to; `connect()` and `disconnect()` start a
 * new run, so a step that finishes after the user changed their mind does
 * nothing.
 */

import { closeAction } from './close-policy.js';
import { Connection } from './connection.js';
import type { CloseInfo } from './connection.js';
import { Emitter } from './emitter.js';
import type { Listener } from './emitter.js';
import { FanoutError, toFanoutError } from './errors.js';
import type { ClientFrame, PresenceMember, ReplyFrame, ServerFrame, WelcomeFrame } from './frames.js';
import { resolveOptions } from './options.js';
import type { FanoutClientOptions, ResolvedOptions } from './options.js';
import { Reconnector } from './reconnector.js';
import { TokenRefresher } from './refresher.js';
import { Requests } from './requests.js';
import type { RequestFrame, RequestOptions } from './requests.js';
import { toMessage } from './subscription.js';
import type { SubscribeOptions, Subscription } from './subscription.js';
import { Subscriptions } from './subscriptions.js';
import { TokenManager } from './token.js';
import type {
  ClientEvents,
  ClientState,
  HistoryOptions,
  HistoryPage,
  PublishResult,
  RequestCallOptions,
  Welcome,
} from './types.js';

/** Where to connect: a fixed URL, or a function called before every attempt (e.g. to pick a node). */
export type UrlSource = string | (() => string);

interface Waiter {
  resolve(welcome: Welcome): void;
  reject(error: FanoutError): void;
}

export class FanoutClient {
  private readonly options: ResolvedOptions;
  private readonly events = new Emitter<ClientEvents>();
  private readonly tokens: TokenManager;
  private readonly requests: Requests;
  private readonly reconnector: Reconnector;
  private readonly refresher: TokenRefresher;
  private readonly subs: Subscriptions;
  private connection: Connection | undefined;
  private current: ClientState = 'disconnected';
  private welcomed: Welcome | undefined;
  private run = 0;
  private attempt = 0;
  private renewToken = false;
  private waiters: Waiter[] = [];
  private stopLifecycle: (() => void) | undefined;

  constructor(
    private readonly url: UrlSource,
    options: FanoutClientOptions,
  ) {
    this.options = resolveOptions(options);
    const o = this.options;
    this.tokens = new TokenManager(o.token, o.getToken, o.tokenRefreshMarginMs);
    this.requests = new Requests(
      { isOpen: () => this.isOpen(), send: (frame) => this.sendFrame(frame) },
      o.maxQueuedRequests,
    );
    this.reconnector = new Reconnector(o.reconnect, o.lifecycle);
    this.refresher = new TokenRefresher({
      tokens: this.tokens,
      sendRefresh: (token) => this.call({ type: 'refresh', token }, { queue: false }).then(() => undefined),
      onError: (error) => this.events.emit('error', error),
      retryDelay: (failures) => this.reconnector.retryDelay(failures),
    });
    this.subs = new Subscriptions({
      isOpen: () => this.isOpen(),
      call: (frame, callOptions) => this.call(frame, callOptions),
      requestTimeoutMs: o.requestTimeoutMs,
      publish: (room, event, data, callOptions) => this.publish(room, event, data, callOptions),
      presence: (room, callOptions) => this.presence(room, callOptions),
      history: (room, historyOptions) => this.history(room, historyOptions),
    });
  }

  /** The connection state; `state` events report every change. */
  get state(): ClientState {
    return this.current;
  }

  /** The current connection's welcome, while connected. */
  get welcome(): Welcome | undefined {
    return this.welcomed;
  }

  /** Every active subscription. */
  get subscriptions(): readonly Subscription[] {
    return this.subs.handles();
  }

  /** The subscription to `room`, if there is one. */
  subscription(room: string): Subscription | undefined {
    return this.subs.get(room)?.handle;
  }

  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
    return this.events.on(event, listener);
  }

  once<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): () => void {
    return this.events.once(event, listener);
  }

  off<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): void {
    this.events.off(event, listener);
  }

  /**
   * Starts connecting (and reconnecting whenever the connection drops).
   * Resolves with the next welcome (at once when connected); rejects if the
   * client stops for good first (`disconnect()`, or a close that is not
   * retried). While waiting out a backoff delay it tries again at once.
   */
  connect(): Promise<Welcome> {
    const promise = new Promise<Welcome>((resolve, reject) => {
      if (this.current === 'connected' && this.welcomed) resolve(this.welcomed);
      else this.waiters.push({ resolve, reject });
    });
    promise.catch(() => {});
    if (this.current === 'disconnected') {
      this.run += 1;
      this.attempt = 0;
      this.reconnector.reset();
      this.listenLifecycle();
      void this.open(this.run);
    } else if (this.current === 'reconnecting') {
      // Waiting out a backoff: the caller wants a connection now.
      this.reconnector.resume();
    }
    return promise;
  }

  /**
   * Closes the connection and stops reconnecting. Requests waiting for an
   * answer or for a connection are rejected (`disconnected`). Subscriptions
   * are kept, with their positions: a later `connect()` resubscribes and
   * recovers what was missed in between.
   */
  disconnect(code = 1000, reason = 'client disconnect'): void {
    const connection = this.connection;
    this.connection = undefined;
    connection?.close(code, reason);
    if (this.current === 'disconnected') {
      // Not connecting: only requests queued for a connection may be waiting.
      this.requests.failAll(new FanoutError('disconnected', 'disconnect() was called'));
      return;
    }
    this.stop({ code, reason, upMs: undefined }, undefined);
  }

  /**
   * Subscribes to `room` (sent now if connected, else after the next
   * welcome). Listeners attached right after the call see every message.
   * Subscribing again to a room returns the existing subscription (and
   * updates its `presenceEvents` if given).
   */
  subscribe(room: string, options: SubscribeOptions = {}): Subscription {
    return this.subs.add(room, options);
  }

  /**
   * Publishes into a room (the token's `publish` claim must allow it). The
   * message reaches every subscriber but this connection. Resolves with the
   * server's ack — in rooms with history, the message's `offset`/`epoch`.
   */
  async publish(room: string, event: string, data: unknown, options?: RequestCallOptions): Promise<PublishResult> {
    const reply = await this.call(
      { type: 'publish', room, event, data: data === undefined ? null : data },
      {
        ...options,
        onReply: (ack) => {
          if (ack.type === 'ack') this.subs.published(room, ack.epoch, ack.offset);
        },
      },
    );
    const ack = expect(reply, 'ack');
    return {
      ...(ack.offset === undefined ? {} : { offset: ack.offset }),
      ...(ack.epoch === undefined ? {} : { epoch: ack.epoch }),
    };
  }

  /** Who is in `room`: users with their connection counts. */
  async presence(room: string, options?: RequestCallOptions): Promise<readonly PresenceMember[]> {
    const reply = await this.call({ type: 'presence', room }, options);
    return expect(reply, 'presence').members;
  }

  /** The room's history: the latest `limit` messages, or the first `limit` after `since`. */
  async history(room: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    const reply = await this.call(
      {
        type: 'history',
        room,
        ...(options.limit === undefined ? {} : { limit: options.limit }),
        ...(options.since === undefined ? {} : { since: options.since }),
      },
      options,
    );
    const page = expect(reply, 'history');
    return { room: page.room, epoch: page.epoch, offset: page.offset, messages: page.messages.map(toMessage) };
  }

  /** An application-level ping; resolves with the round-trip time in ms. */
  async ping(options?: RequestCallOptions): Promise<number> {
    const started = Date.now();
    expect(await this.call({ type: 'ping' }, options), 'pong');
    return Date.now() - started;
  }

  // ---- connection life cycle ----

  private isOpen(): boolean {
    return this.current === 'connected' && this.connection?.isOpen === true;
  }

  /** Changes the state; `before` runs after the change but before listeners hear of it. */
  private setState(next: ClientState, before?: () => void): void {
    const previous = this.current;
    if (previous === next) return;
    this.current = next;
    before?.();
    this.events.emit('state', { state: next, previous });
  }

  private async open(run: number): Promise<void> {
    this.attempt += 1;
    this.setState('connecting');
    this.events.emit('connecting', { attempt: this.attempt });
    let token: string;
    try {
      token = await this.tokens.get(this.renewToken ? 'rejected' : 'connect', this.renewToken);
      this.renewToken = false;
    } catch (thrown) {
      if (run !== this.run) return;
      this.events.emit('error', toFanoutError('token', 'cannot connect without a token', thrown));
      this.retry(run, this.reconnector.delayAfterFailure(), undefined);
      return;
    }
    if (run !== this.run) return;
    let url: string;
    try {
      url = typeof this.url === 'function' ? this.url() : this.url;
    } catch (thrown) {
      this.events.emit('error', toFanoutError('protocol', 'the url function threw', thrown));
      this.retry(run, this.reconnector.delayAfterFailure(), undefined);
      return;
    }
    const o = this.options;
    const connection: Connection = new Connection(
      {
        url,
        token,
        codec: o.codec,
        auth: o.auth,
        WebSocket: o.WebSocket,
        connectTimeoutMs: o.connectTimeoutMs,
        heartbeatIntervalMs: o.heartbeatIntervalMs,
        heartbeatTimeoutMs: o.heartbeatTimeoutMs,
      },
      {
        welcome: (frame) => this.onWelcome(connection, frame),
        frame: (frame) => {
          if (connection === this.connection) this.onFrame(frame);
        },
        invalidFrame: (error) => this.events.emit('error', error),
        closed: (info) => this.onClosed(connection, info),
      },
    );
    this.connection = connection;
    connection.open();
  }

  private onWelcome(connection: Connection, frame: WelcomeFrame): void {
    if (connection !== this.connection) return;
    const welcome: Welcome = {
      conn: frame.conn,
      node: frame.node,
      tenant: frame.tenant,
      user: frame.user,
      pingInterval: frame.ping_interval,
    };
    this.welcomed = welcome;
    this.attempt = 0;
    // Subscriptions first, then the queued requests in call order — all before any
    // listener runs, so a request made from a `state` listener cannot overtake them.
    this.setState('connected', () => {
      this.subs.resubscribeAll();
      this.requests.flush();
    });
    this.refresher.start();
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.resolve(welcome);
    this.events.emit('connected', welcome);
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'message':
        if (frame.scope === 'room') this.subs.deliver(frame);
        else this.events.emit('message', toMessage(frame));
        return;
      case 'join':
      case 'leave':
        this.subs.presence(frame);
        return;
      case 'welcome':
        return;
      default:
        if (this.requests.settle(frame)) return;
        if (frame.type === 'error') {
          this.events.emit('error', new FanoutError('server', `server error (${frame.code}): ${frame.message}`, frame.code));
        }
    }
  }

  private onClosed(connection: Connection, info: CloseInfo): void {
    if (connection !== this.connection) return;
    this.connection = undefined;
    this.welcomed = undefined;
    this.refresher.stop();
    const detail = `close ${info.code}${info.reason ? `: ${info.reason}` : ''}`;
    this.requests.failSent(new FanoutError('connection_lost', `the connection closed before the answer (${detail})`, info.code));
    this.subs.disconnected();
    const action = closeAction(info.code);
    if (!this.options.reconnect.enabled) {
      this.stop(info, undefined);
    } else if (!action.reconnect) {
      this.stop(info, new FanoutError('closed', `${action.reason} (${detail}); not reconnecting`, info.code));
    } else if (action.renewToken && !this.tokens.renewable && this.tokens.expired()) {
      this.stop(info, new FanoutError('token', `the token expired and there is no getToken to renew it (${detail})`, info.code));
    } else {
      this.renewToken = action.renewToken && this.tokens.renewable;
      this.retry(this.run, this.reconnector.delayAfterClose(action, info.upMs), info);
    }
  }

  /** Waits, then tries again; `close` is reported as a `disconnected` event. */
  private retry(run: number, delayMs: number, close: CloseInfo | undefined): void {
    const timed = this.reconnector.schedule(delayMs, () => {
      if (run === this.run) void this.open(run);
    });
    this.setState('reconnecting');
    if (close) {
      this.events.emit('disconnected', {
        code: close.code,
        reason: close.reason,
        willReconnect: true,
        ...(timed ? { delayMs } : {}),
      });
    }
  }

  /** Stops for good: no more attempts; everything waiting is rejected. */
  private stop(close: CloseInfo, error: FanoutError | undefined): void {
    this.run += 1;
    this.reconnector.cancel();
    this.refresher.stop();
    this.stopLifecycle?.();
    this.stopLifecycle = undefined;
    this.welcomed = undefined;
    const rejection = error ?? new FanoutError('disconnected', `the client disconnected (close ${close.code})`, close.code);
    this.requests.failAll(rejection);
    this.subs.disconnected();
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.reject(rejection);
    this.setState('disconnected');
    if (error) this.events.emit('error', error);
    this.events.emit('disconnected', { code: close.code, reason: close.reason, willReconnect: false });
  }

  private listenLifecycle(): void {
    const lifecycle = this.options.lifecycle;
    if (!lifecycle || this.stopLifecycle) return;
    this.stopLifecycle = lifecycle.listen({
      online: () => {
        if (this.current === 'connected') this.connection?.checkLiveness();
        else this.reconnector.resume();
      },
      offline: () => {
        if (this.current === 'connected') this.connection?.checkLiveness();
        else this.reconnector.pause();
      },
      visible: () => {
        if (this.current === 'connected') this.connection?.checkLiveness();
        else this.reconnector.resume();
      },
    });
  }

  // ---- frames and requests ----

  private sendFrame(frame: ClientFrame): void {
    if (!this.connection) throw new FanoutError('disconnected', 'not connected');
    this.connection.send(frame);
  }

  private call(frame: RequestFrame, options: Partial<RequestOptions> = {}): Promise<ReplyFrame> {
    return this.requests.request(frame, { ...options, timeoutMs: options.timeoutMs ?? this.options.requestTimeoutMs });
  }
}

/** The reply narrowed to the expected frame type; anything else is a protocol error. */
function expect<T extends ReplyFrame['type']>(reply: ReplyFrame, type: T): Extract<ReplyFrame, { type: T }> {
  if (reply.type !== type) {
    throw new FanoutError('protocol', `expected a ${type} frame in reply, got ${reply.type}`);
  }
  return reply as Extract<ReplyFrame, { type: T }>;
}
