/**
 * What the client does after each close code (docs/protocol.md §4, "Close codes").
 *
 * Kept as one pure function so the whole policy is readable in one place
 * and testable without a socket:
 *
 * | code | meaning | action |
 * | --- | --- | --- |
 * | 1009 | a frame over `max_frame_bytes` | stop, report (retrying would resend it) |
 * | 4000 | protocol violation | stop, report (a client bug; retrying would loop) |
 * | 1012 | node draining | reconnect at once, with jitter |
 * | 4001 | auth failed / expired / disconnect-user | new token (`getToken`), then reconnect |
 * | 4003, 4008 | connection or rate limit | back off: the failure count keeps growing, however long the connection was up |
 * | 4009, 4010 | slow consumer, lost stream | reconnect and recover (`since`) |
 * | anything else (1000, 1001, 1006, 1011, 1013, …) | | reconnect with backoff |
 *
 * Every reconnect resubscribes with `since`, so "recover" needs no special case.
 */

export type CloseAction =
  | {
      readonly reconnect: true;
      /** `jitter`: at once, with a small random delay (drain); `backoff`: exponential backoff. */
      readonly delay: 'jitter' | 'backoff';
      /** A back-off code: this close counts as a failure even after a welcome. */
      readonly penalize: boolean;
      /** Ask `getToken` for a new token before reconnecting. */
      readonly renewToken: boolean;
    }
  | { readonly reconnect: false; readonly reason: string };

const BACKOFF: CloseAction = { reconnect: true, delay: 'backoff', penalize: false, renewToken: false };

export function closeAction(code: number): CloseAction {
  switch (code) {
    case 1009:
      return { reconnect: false, reason: 'the client sent a frame larger than the server allows (max_frame_bytes)' };
    case 4000:
      return { reconnect: false, reason: 'the server saw a protocol violation from this client' };
    case 1012:
      return { reconnect: true, delay: 'jitter', penalize: false, renewToken: false };
    case 4001:
      return { reconnect: true, delay: 'backoff', penalize: false, renewToken: true };
    case 4003:
    case 4008:
      return { reconnect: true, delay: 'backoff', penalize: true, renewToken: false };
    default:
      return BACKOFF;
  }
}
