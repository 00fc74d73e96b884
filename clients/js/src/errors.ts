/**
 * The one error type the client produces.
 *
 * Every failure a caller can see — a request refused by the server, a
 * timeout, a connection lost under a request, a token that could not be
 * obtained, a close the client will not retry — is a `FanoutError` with a
 * `kind` to branch on, so applications need no `instanceof` ladder and no
 * parsing of messages.
 */

export type FanoutErrorKind =
  /** The server answered the request with an `error` frame; `code` is its code (400, 403, 429, …). */
  | 'server'
  /** No answer within the request's timeout. */
  | 'timeout'
  /** The connection closed after the request was sent; the server may or may not have acted on it. */
  | 'connection_lost'
  /** `disconnect()` was called, or the client stopped for good, before the request was answered. */
  | 'disconnected'
  /** The client is disconnected and the queue of requests waiting for a connection is full (or disabled). */
  | 'queue_full'
  /** `getToken` failed or returned something unusable, or a static token expired. */
  | 'token'
  /** The server closed the connection with a code the client does not retry; `code` is the close code. */
  | 'closed'
  /** A frame could not be encoded or decoded, or the server sent something unexpected. */
  | 'protocol';

export class FanoutError extends Error {
  readonly kind: FanoutErrorKind;
  /** The server's error code (`kind: "server"`) or close code (`kind: "closed"`). */
  readonly code: number | undefined;

  constructor(kind: FanoutErrorKind, message: string, code?: number, options?: { cause?: unknown }) {
    super(message);
    this.name = 'FanoutError';
    this.kind = kind;
    this.code = code;
    if (options && 'cause' in options) {
      Object.defineProperty(this, 'cause', { value: options.cause, enumerable: false, configurable: true });
    }
  }
}

/**
 * A `FanoutError` saying `context: <what was thrown>`, keeping the original
 * as `cause`. A `FanoutError` keeps its own kind and code (a refresh refused
 * by the server stays a `server` error with its 403).
 */
export function toFanoutError(kind: FanoutErrorKind, context: string, thrown: unknown): FanoutError {
  const detail = thrown instanceof Error ? thrown.message : String(thrown);
  if (thrown instanceof FanoutError) {
    return new FanoutError(thrown.kind, `${context}: ${detail}`, thrown.code, { cause: thrown });
  }
  return new FanoutError(kind, `${context}: ${detail}`, undefined, { cause: thrown });
}
