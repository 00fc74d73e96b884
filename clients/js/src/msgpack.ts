/**
 * `@fanout/client/msgpack`: the `fanout.msgpack` codec on `@msgpack/msgpack`.
 *
 * A separate entry point so that importing `@fanout/client` never loads the
 * optional peer: only applications that choose MessagePack install it and
 * import this module.
 */

import { decode, encode } from '@msgpack/msgpack';

import { createMsgpackCodec } from './codec.js';
import type { Codec } from './codec.js';

/** MessagePack binary frames (`fanout.msgpack`), encoded with `@msgpack/msgpack`. */
export const msgpackCodec: Codec = createMsgpackCodec({
  // `ignoreUndefined`: an absent optional field is omitted, as in JSON.
  encode: (value) => encode(value, { ignoreUndefined: true }),
  decode: (data) => decode(data),
});
