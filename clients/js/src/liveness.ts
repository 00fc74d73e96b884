/**
 * Detects a dead connection from the client side, in a way browsers allow.
 *
 * The server pings every `ping_interval` seconds with WebSocket pings, but
 * browsers answer those invisibly: page code never sees them. So liveness is
 * judged on what page code *can* see — any inbound frame — and, when the
 * connection has been quiet for `intervalMs`, the client sends an
 * application `ping` frame, which the server answers with `pong`. If nothing
 * at all arrives within `timeoutMs` of that ping, the connection is
 * declared dead.
 *
 * The verdict is only ever "no traffic since a ping that was sent at least
 * `timeoutMs` ago", never "the timer fired late": background tabs throttle
 * timers to a minute or more, and a late timer must not kill a healthy
 * connection. `touch()` is called for every inbound frame and only stores a
 * timestamp, so busy connections cost no timer work.
 */

type Timer = ReturnType<typeof setTimeout>;

export interface LivenessOptions {
  /** Quiet time after which a `ping` is sent. */
  readonly intervalMs: number;
  /** Time a ping may go unanswered (by any frame) before the connection is dead. */
  readonly timeoutMs: number;
  readonly sendPing: () => void;
  readonly onDead: (silentMs: number) => void;
}

export class Liveness {
  private lastInbound = Date.now();
  /** Inbound frames so far: "answered" compares counts, since timestamps can tie within a millisecond. */
  private inbound = 0;
  private pingSentAt: number | undefined;
  private inboundAtPing = 0;
  private timer: Timer | undefined;
  private stopped = false;

  constructor(private readonly options: LivenessOptions) {
    this.schedule(options.intervalMs);
  }

  /** An inbound frame arrived. */
  touch(): void {
    this.lastInbound = Date.now();
    this.inbound += 1;
  }

  /** Checks now instead of waiting (the page became visible, the network changed). */
  checkNow(): void {
    if (this.stopped) return;
    if (this.pingSentAt === undefined) this.ping(Date.now());
    this.tick();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private tick(): void {
    if (this.stopped) return;
    const now = Date.now();
    const { intervalMs, timeoutMs } = this.options;
    if (this.pingSentAt !== undefined) {
      if (this.inbound !== this.inboundAtPing) {
        this.pingSentAt = undefined; // answered (by the pong or anything else)
      } else if (now - this.pingSentAt >= timeoutMs) {
        this.stop();
        this.options.onDead(now - this.lastInbound);
        return;
      } else {
        this.schedule(this.pingSentAt + timeoutMs - now);
        return;
      }
    }
    const quiet = now - this.lastInbound;
    if (quiet >= intervalMs) {
      this.ping(now);
      this.schedule(timeoutMs);
    } else {
      this.schedule(intervalMs - quiet);
    }
  }

  private ping(now: number): void {
    this.pingSentAt = now;
    this.inboundAtPing = this.inbound;
    this.options.sendPing();
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.tick(), Math.max(0, delayMs));
  }
}
