/**
 * The frames of fanout's wire protocol (docs/protocol.md §3, §4, §7), as
 * TypeScript types, and the one place where an incoming frame is checked.
 *
 * Why check at all: a frame comes from the network through a codec and is
 * `unknown` until proven otherwise. Everything after `parseServerFrame`
 * relies on the shapes below (a `message` has a string `id`, an `ack` a
 * numeric one, and so on), so a malformed or future frame is rejected here
 * once instead of being guarded against everywhere. Unknown extra fields are
 * ignored, as the protocol asks, so newer servers keep working.
 */

/** A position in a room's stream: the `offset` of a message in the stream named `epoch` (§7). */
export interface StreamPosition {
  readonly epoch: string;
  readonly offset: number;
}

/** Frames this client sends. Optional fields are omitted, never `undefined`. */
export type ClientFrame =
  | { readonly type: 'auth'; readonly token: string }
  | {
      readonly type: 'subscribe';
      readonly id: number;
      readonly room: string;
      readonly presence_events?: boolean;
      readonly since?: StreamPosition;
    }
  | { readonly type: 'unsubscribe'; readonly id: number; readonly room: string }
  | {
      readonly type: 'publish';
      readonly id: number;
      readonly room: string;
      readonly event: string;
      readonly data: unknown;
    }
  | { readonly type: 'presence'; readonly id: number; readonly room: string }
  | { readonly type: 'refresh'; readonly id: number; readonly token: string }
  | { readonly type: 'ping'; readonly id?: number }
  | {
      readonly type: 'history';
      readonly id: number;
      readonly room: string;
      readonly limit?: number;
      readonly since?: StreamPosition;
    };

/** The server's greeting after a successful authentication. */
export interface WelcomeFrame {
  readonly type: 'welcome';
  readonly conn: string;
  readonly node: string;
  readonly tenant: string;
  readonly user: string;
  /** Seconds between the server's WebSocket pings. */
  readonly ping_interval: number;
}

export interface AckFrame {
  readonly type: 'ack';
  readonly id?: number;
  readonly recovered?: boolean;
  readonly epoch?: string;
  readonly offset?: number;
}

export interface ErrorFrame {
  readonly type: 'error';
  readonly id?: number;
  readonly code: number;
  readonly message: string;
}

export interface PongFrame {
  readonly type: 'pong';
  readonly id?: number;
}

/** One user present in a room, with how many of its connections are in it. */
export interface PresenceMember {
  readonly user: string;
  readonly conns: number;
}

export interface PresenceFrame {
  readonly type: 'presence';
  readonly id?: number;
  readonly room: string;
  readonly members: readonly PresenceMember[];
}

/** A published message: to a room, to one user's connections, or to the whole tenant. */
export interface MessageFrame {
  readonly type: 'message';
  readonly scope: 'room' | 'user' | 'tenant';
  /** Present for `scope: "room"` only. */
  readonly room?: string;
  readonly event: string;
  readonly data: unknown;
  /** The message id (a UUIDv7 string), as the publish API returned it. */
  readonly id: string;
  /** Milliseconds since the epoch at acceptance. */
  readonly ts: number;
  /** In rooms with history: the message's position (§7). */
  readonly offset?: number;
  readonly epoch?: string;
}

export interface HistoryFrame {
  readonly type: 'history';
  readonly id?: number;
  readonly room: string;
  readonly epoch: string;
  readonly offset: number;
  readonly messages: readonly MessageFrame[];
}

export interface JoinLeaveFrame {
  readonly type: 'join' | 'leave';
  readonly room: string;
  readonly user: string;
}

export type ServerFrame =
  | WelcomeFrame
  | AckFrame
  | ErrorFrame
  | PongFrame
  | PresenceFrame
  | MessageFrame
  | HistoryFrame
  | JoinLeaveFrame;

/** Frames that answer a request and carry its `id`. */
export type ReplyFrame = AckFrame | ErrorFrame | PongFrame | PresenceFrame | HistoryFrame;

type Fields = { readonly [key: string]: unknown };

function isFields(v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const optional =
  <T>(check: (v: unknown) => v is T) =>
  (v: unknown): v is T | undefined =>
    v === undefined || v === null || check(v);
const optString = optional(isString);
const optNumber = optional(isNumber);
const optBool = optional((v: unknown): v is boolean => typeof v === 'boolean');

/** `null` (MessagePack nil) and `undefined` both mean "absent". */
function opt<T>(v: T | null | undefined): T | undefined {
  return v === null ? undefined : v;
}

/** Copies the optional fields that are present, so absent ones stay absent. */
function withOptional<T extends object>(base: T, extra: { readonly [key: string]: unknown }): T {
  const out: { [key: string]: unknown } = { ...(base as { readonly [key: string]: unknown }) };
  for (const [key, value] of Object.entries(extra)) {
    if (value !== undefined && value !== null) out[key] = value;
  }
  return out as T;
}

function parseMessage(f: Fields): MessageFrame | undefined {
  const { scope, room, event, id, ts, offset, epoch } = f;
  if (scope !== 'room' && scope !== 'user' && scope !== 'tenant') return undefined;
  if (!isString(event) || !isString(id) || !isNumber(ts)) return undefined;
  if (!optString(room) || !optNumber(offset) || !optString(epoch)) return undefined;
  const data = f['data'] === undefined ? null : f['data'];
  return withOptional<MessageFrame>(
    { type: 'message', scope, event, data, id, ts },
    { room: opt(room), offset: opt(offset), epoch: opt(epoch) },
  );
}

function parseMember(v: unknown): PresenceMember | undefined {
  if (!isFields(v) || !isString(v['user']) || !isNumber(v['conns'])) return undefined;
  return { user: v['user'], conns: v['conns'] };
}

/** Every element through `parse`, or `undefined` if any fails. */
function parseAll<T>(v: unknown, parse: (item: unknown) => T | undefined): T[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: T[] = [];
  for (const item of v) {
    const parsed = parse(item);
    if (parsed === undefined) return undefined;
    out.push(parsed);
  }
  return out;
}

/**
 * The typed frame, or `undefined` when `value` is not a frame this client
 * understands (unknown `type`, a missing or mistyped field).
 */
export function parseServerFrame(value: unknown): ServerFrame | undefined {
  if (!isFields(value)) return undefined;
  const f = value;
  const id = f['id'];
  switch (f['type']) {
    case 'welcome': {
      const { conn, node, tenant, user, ping_interval } = f;
      if (!isString(conn) || !isString(node) || !isString(tenant) || !isString(user)) return undefined;
      if (!isNumber(ping_interval)) return undefined;
      return { type: 'welcome', conn, node, tenant, user, ping_interval };
    }
    case 'ack': {
      const { recovered, epoch, offset } = f;
      if (!optNumber(id) || !optBool(recovered) || !optString(epoch) || !optNumber(offset)) return undefined;
      return withOptional<AckFrame>(
        { type: 'ack' },
        { id: opt(id), recovered: opt(recovered), epoch: opt(epoch), offset: opt(offset) },
      );
    }
    case 'error': {
      const { code, message } = f;
      if (!optNumber(id) || !isNumber(code)) return undefined;
      return withOptional<ErrorFrame>(
        { type: 'error', code, message: isString(message) ? message : '' },
        { id: opt(id) },
      );
    }
    case 'pong':
      if (!optNumber(id)) return undefined;
      return withOptional<PongFrame>({ type: 'pong' }, { id: opt(id) });
    case 'presence': {
      const room = f['room'];
      const members = parseAll(f['members'], parseMember);
      if (!optNumber(id) || !isString(room) || members === undefined) return undefined;
      return withOptional<PresenceFrame>({ type: 'presence', room, members }, { id: opt(id) });
    }
    case 'message':
      return parseMessage(f);
    case 'history': {
      const { room, epoch, offset } = f;
      const messages = parseAll(f['messages'], (m) => (isFields(m) ? parseMessage(m) : undefined));
      if (!optNumber(id) || !isString(room) || !isString(epoch) || !isNumber(offset)) return undefined;
      if (messages === undefined) return undefined;
      return withOptional<HistoryFrame>({ type: 'history', room, epoch, offset, messages }, { id: opt(id) });
    }
    case 'join':
    case 'leave': {
      const { room, user } = f;
      if (!isString(room) || !isString(user)) return undefined;
      return { type: f['type'], room, user };
    }
    default:
      return undefined;
  }
}
