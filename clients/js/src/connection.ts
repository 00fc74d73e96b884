/**
 * One WebSocket connection attempt, from `new WebSocket` to its close.
 *
 * A `Connection` authenticates (the first `auth` frame, or the
 * `Authorization` header where the implementation can send one), waits for
 * the `welcome` within `connectTimeoutMs`, decodes and checks every inbound
 * frame, watches liveness once welcomed, and reports exactly one `closed`.
 * It knows nothing about reconnecting, subscriptions or requests: the
 * client creates a new `Connection` for every attempt and decides what a
 * close means. Keeping one object per socket makes stale events harmless:
 * once a connection has reported its close, its socket is detached and
 * nothing it does later reaches the client.
 */

import type { Codec } from './codec.js';
import { FanoutError, toFanoutError } from './errors.js';
import { parseServerFrame } from './frames.js';
import type { ClientFrame, ServerFrame, WelcomeFrame } from './frames.js';
import { Liveness } from './liveness.js';
import { OPEN, describeSocketError, toWireData } from './socket.js';
import type {
  SocketCloseEvent,
  SocketErrorEvent,
  SocketMessageEvent,
  WebSocketConstructor,
  WebSocketLike,
} from './socket.js';

/** Close code reported for closes the client detects itself (timeouts, dead connections). */
export const ABNORMAL_CLOSURE = 1006;

export interface ConnectionParams {
  readonly url: string;
  readonly token: string;
  readonly codec: Codec;
  readonly auth: 'frame' | 'header';
  readonly WebSocket: WebSocketConstructor;
  readonly connectTimeoutMs: number;
  /** Liveness overrides; by default the interval is the welcome's `ping_interval`. */
  readonly heartbeatIntervalMs: number | undefined;
  readonly heartbeatTimeoutMs: number | undefined;
}

export interface CloseInfo {
  readonly code: number;
  readonly reason: string;
  /** How long the connection was up after its welcome, ms; `undefined` if it was never welcomed. */
  readonly upMs: number | undefined;
}

export interface ConnectionHandlers {
  welcome(welcome: WelcomeFrame): void;
  frame(frame: ServerFrame): void;
  /** An inbound message that is not a frame this client understands; it is skipped. */
  invalidFrame(error: FanoutError): void;
  closed(info: CloseInfo): void;
}

/** The liveness timeout when none is configured: the ping interval, kept within 1–10 s. */
function defaultHeartbeatTimeout(intervalMs: number): number {
  return Math.min(10_000, Math.max(1_000, intervalMs));
}

const ignore = (): void => {};

export class Connection {
  private socket: WebSocketLike | undefined;
  private welcomed = false;
  private welcomedAt = 0;
  private finished = false;
  private liveness: Liveness | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private lastError: string | undefined;

  constructor(
    private readonly params: ConnectionParams,
    private readonly handlers: ConnectionHandlers,
  ) {}

  /** Opens the socket. Failures, even synchronous ones, are reported through `closed`. */
  open(): void {
    const { url, token, codec, auth, WebSocket, connectTimeoutMs } = this.params;
    let socket: WebSocketLike;
    try {
      socket =
        auth === 'header'
          ? new WebSocket(url, [codec.subprotocol], { headers: { Authorization: `Bearer ${token}` } })
          : new WebSocket(url, [codec.subprotocol]);
    } catch (thrown) {
      const detail = thrown instanceof Error ? thrown.message : String(thrown);
      setTimeout(() => this.finish(ABNORMAL_CLOSURE, `cannot open ${url}: ${detail}`), 0);
      return;
    }
    this.socket = socket;
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      if (auth === 'frame') this.trySend({ type: 'auth', token });
    };
    socket.onmessage = (event: SocketMessageEvent) => this.receive(event.data);
    socket.onerror = (event: SocketErrorEvent) => {
      this.lastError = describeSocketError(event);
    };
    socket.onclose = (event: SocketCloseEvent) => {
      const reason = event.reason || this.lastError || '';
      this.finish(event.code || ABNORMAL_CLOSURE, reason);
    };
    this.connectTimer = setTimeout(
      () => this.abort(`no welcome within ${connectTimeoutMs} ms`),
      connectTimeoutMs,
    );
  }

  /** Welcomed and the socket is open: requests can be sent. */
  get isOpen(): boolean {
    return this.welcomed && !this.finished && this.socket?.readyState === OPEN;
  }

  /** Encodes and sends a frame; throws if it cannot. */
  send(frame: ClientFrame): void {
    if (!this.socket || this.finished) throw new FanoutError('disconnected', 'the connection is closed');
    this.socket.send(this.params.codec.encode(frame));
  }

  /** Closes on the client's initiative; reports `closed` with this code at once. */
  close(code: number, reason: string): void {
    if (this.finished) return;
    try {
      this.socket?.close(code, reason);
    } catch {
      // Browsers refuse codes other than 1000 and 3000–4999 (and reasons over 123 bytes): close plainly.
      try {
        this.socket?.close();
      } catch {
        // Already closing: it is detached below either way.
      }
    }
    this.finish(code, reason);
  }

  /** Gives up on the connection (it is dead or never got welcomed): drops it and reports 1006. */
  abort(reason: string): void {
    if (this.finished) return;
    const socket = this.socket;
    try {
      if (socket?.terminate) socket.terminate();
      else socket?.close();
    } catch {
      // Nothing more to do for a socket that refuses to close: it is detached below.
    }
    this.finish(ABNORMAL_CLOSURE, reason);
  }

  /** Checks liveness now (the page became visible, the network changed). */
  checkLiveness(): void {
    this.liveness?.checkNow();
  }

  private trySend(frame: ClientFrame): void {
    try {
      this.send(frame);
    } catch {
      // The close that follows a failed send reports the problem.
    }
  }

  private receive(data: unknown): void {
    if (this.finished) return;
    this.liveness?.touch();
    const frame = this.decode(data);
    if (!frame) return;
    if (frame.type === 'welcome') {
      if (this.welcomed) return;
      this.welcomed = true;
      this.welcomedAt = Date.now();
      clearTimeout(this.connectTimer);
      this.startLiveness(frame.ping_interval * 1000);
      this.handlers.welcome(frame);
      return;
    }
    this.handlers.frame(frame);
  }

  private decode(data: unknown): ServerFrame | undefined {
    const wire = toWireData(data);
    if (wire === undefined) {
      this.handlers.invalidFrame(new FanoutError('protocol', 'received a message that is neither text nor binary'));
      return undefined;
    }
    let value: unknown;
    try {
      value = this.params.codec.decode(wire);
    } catch (thrown) {
      this.handlers.invalidFrame(toFanoutError('protocol', `cannot decode a ${this.params.codec.name} frame`, thrown));
      return undefined;
    }
    const frame = parseServerFrame(value);
    if (!frame) {
      const sample = JSON.stringify(value)?.slice(0, 200) ?? String(value);
      this.handlers.invalidFrame(new FanoutError('protocol', `unexpected frame from the server: ${sample}`));
    }
    return frame;
  }

  private startLiveness(serverIntervalMs: number): void {
    const intervalMs = this.params.heartbeatIntervalMs ?? serverIntervalMs;
    if (!(intervalMs > 0)) return;
    this.liveness = new Liveness({
      intervalMs,
      timeoutMs: this.params.heartbeatTimeoutMs ?? defaultHeartbeatTimeout(intervalMs),
      sendPing: () => this.trySend({ type: 'ping' }),
      onDead: (silentMs) => this.abort(`no traffic from the server for ${silentMs} ms, a ping went unanswered`),
    });
  }

  private finish(code: number, reason: string): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.connectTimer);
    this.liveness?.stop();
    const socket = this.socket;
    if (socket) {
      socket.onopen = null;
      socket.onmessage = null;
      // Handlers stay set (to nothing): `ws` throws on an `error` event nobody listens to.
      socket.onerror = ignore;
      socket.onclose = ignore;
    }
    this.handlers.closed({ code, reason, upMs: this.welcomed ? Date.now() - this.welcomedAt : undefined });
  }
}
