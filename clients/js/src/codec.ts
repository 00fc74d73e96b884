/**
 * Codecs: how frames become WebSocket messages and back.
 *
 * The codec is chosen by WebSocket subprotocol (docs/protocol.md §2):
 * `fanout.json` uses text frames, `fanout.msgpack` binary frames carrying the
 * same maps. JSON needs nothing beyond the platform, so it is built in.
 * MessagePack needs an implementation; the core only defines how to wrap one
 * (`createMsgpackCodec`) so that the JSON-only build has no runtime
 * dependency. `@fanout/client/msgpack` wraps the optional peer
 * `@msgpack/msgpack`; a browser page using the bundle passes the library's
 * global (`Fanout.createMsgpackCodec(MessagePack)`).
 */

import type { ClientFrame } from './frames.js';
import { utf8Decode } from './utf8.js';

/** What a WebSocket carries: text, or binary bytes. */
export type WireData = string | Uint8Array;

export interface Codec {
  /** A short name for messages and logs, e.g. `json`. */
  readonly name: string;
  /** Offered as `Sec-WebSocket-Protocol`; the server answers in this codec. */
  readonly subprotocol: string;
  /** Whether frames are sent as binary messages (they are text otherwise). */
  readonly binary: boolean;
  encode(frame: ClientFrame): WireData;
  /** The decoded value; it is checked by the client afterwards. */
  decode(data: WireData): unknown;
}

/** The default codec: JSON text frames (`fanout.json`). */
export const jsonCodec: Codec = {
  name: 'json',
  subprotocol: 'fanout.json',
  binary: false,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => JSON.parse(typeof data === 'string' ? data : utf8Decode(data)) as unknown,
};

/** The two functions of a MessagePack library this client needs (e.g. `@msgpack/msgpack`). */
export interface MsgpackImplementation {
  encode(value: unknown): Uint8Array;
  decode(data: Uint8Array): unknown;
}

/**
 * A `fanout.msgpack` codec on top of a MessagePack implementation. The
 * server refuses binary or extension values and non-string map keys inside
 * `data` (it must be representable in JSON), so publish plain JSON-like data.
 */
export function createMsgpackCodec(impl: MsgpackImplementation): Codec {
  return {
    name: 'msgpack',
    subprotocol: 'fanout.msgpack',
    binary: true,
    encode: (frame) => impl.encode(frame),
    decode: (data) => {
      if (typeof data === 'string') throw new TypeError('fanout.msgpack expects binary frames, got text');
      return impl.decode(data);
    },
  };
}
