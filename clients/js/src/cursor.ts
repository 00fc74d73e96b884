/**
 * A subscription's position in its room's stream, and the exactly-once filter.
 *
 * In a room with history every message carries `(epoch, offset)` (§7). The
 * cursor remembers the last position delivered to the application; after a
 * reconnect the subscription resubscribes with `since` = that position and
 * the server replays what was missed. Two things make this more than "keep
 * the last offset":
 *
 * - Duplicates are dropped as a safety net: a message whose offset is at or
 *   below the last delivered one, in the same epoch, is not delivered again.
 * - The client's own publishes are not echoed back to it, but their `ack`
 *   carries their position. An ack can arrive *before* the messages just
 *   below it (another node's publish still on its way), so an acked offset
 *   must not move the cursor past messages not yet delivered — that would
 *   make the duplicate filter drop them. Own offsets above the cursor are
 *   kept aside and absorbed when the cursor reaches them; if they come back
 *   in a replay after a reconnect they are skipped, as live they never arrive.
 */

import type { StreamPosition } from './frames.js';

/** Own offsets kept aside at most (a client publishing into a stream it does not receive). */
const MAX_OWN = 10_000;

export class StreamCursor {
  private epoch: string | undefined;
  private offset = 0;
  private readonly own = new Set<number>();

  constructor(start?: StreamPosition) {
    if (start) this.reset(start);
  }

  /** The last position delivered (or the baseline of the subscription), if the room keeps history. */
  get position(): StreamPosition | undefined {
    return this.epoch === undefined ? undefined : { epoch: this.epoch, offset: this.offset };
  }

  /** A new baseline: a subscribe `ack` that did not recover (or a first subscribe). */
  reset(position: StreamPosition | undefined): void {
    this.epoch = position?.epoch;
    this.offset = position?.offset ?? 0;
    this.own.clear();
  }

  /**
   * Whether a message at `(epoch, offset)` is to be delivered; moves the
   * cursor when it is. Messages without a position (rooms without history)
   * are always delivered.
   */
  accept(epoch: string | undefined, offset: number | undefined): boolean {
    if (epoch === undefined || offset === undefined) return true;
    if (epoch !== this.epoch) {
      // A first positioned message, or a new stream: it becomes the baseline.
      this.reset({ epoch, offset });
      return true;
    }
    if (offset <= this.offset) return false;
    this.offset = offset;
    if (this.own.delete(offset)) {
      this.absorbOwn();
      return false;
    }
    this.absorbOwn();
    return true;
  }

  /** The `ack` of this client's own publish into the room, at `(epoch, offset)`. */
  published(epoch: string | undefined, offset: number | undefined): void {
    if (epoch === undefined || offset === undefined || epoch !== this.epoch) return;
    if (offset <= this.offset) return;
    if (this.own.size >= MAX_OWN) this.own.clear();
    this.own.add(offset);
    this.absorbOwn();
  }

  private absorbOwn(): void {
    while (this.own.delete(this.offset + 1)) this.offset += 1;
  }
}
