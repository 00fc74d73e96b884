//! The frames of the wire contract, as Rust types.
//!
//! Client frames are decoded in two steps: first into [`RawClientFrame`], a
//! flat struct of optional fields, then into the typed [`ClientFrame`]. The
//! flat step keeps the request `id` even when the rest of the frame is wrong,
//! so every `error` reply can carry the `id` of the request it answers, and it
//! ignores unknown fields so that clients may send extensions to newer nodes.
//!
//! Server frames borrow their fields: a broadcast is serialised once per codec
//! straight from the data the router already holds.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codes::ErrorCode;
use crate::names::Name;

/// A request id as sent by the client (`"id":1`).
pub type RequestId = i64;

/// Every field any client frame may carry; unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct RawClientFrame {
    /// The frame type (`subscribe`, `publish`, ...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Request id echoed in the reply.
    pub id: Option<RequestId>,
    /// Room name for room operations.
    pub room: Option<String>,
    /// Event name of a publish.
    pub event: Option<String>,
    /// Payload of a publish; any JSON-representable value.
    #[serde(default)]
    pub data: Value,
    /// JWT of `auth` and `refresh`.
    pub token: Option<String>,
    /// `subscribe` option: also receive `join`/`leave` frames.
    pub presence_events: Option<bool>,
    /// `subscribe` and `history`: the last position the client saw (§7).
    pub since: Option<StreamPosition>,
    /// `history`: at most this many messages.
    pub limit: Option<u32>,
}

/// A position in a room's stream: the `offset` of a message within the
/// stream named `epoch` (§7). Offsets count 1, 2, 3, … with no gaps; a new
/// epoch starts again at 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the message (0: before the first).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Longest epoch accepted in a `since` (epochs the server makes are shorter).
pub const MAX_EPOCH_LEN: usize = 64;

/// Only the request id, salvaged from a frame that failed to decode whole.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct IdOnly {
    pub(crate) id: Option<RequestId>,
}

/// A decoded, validated client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// `{"type":"auth","token":T}`: first-frame authentication for browsers.
    Auth {
        /// The JWT.
        token: String,
    },
    /// Join a room.
    Subscribe {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: Name,
        /// Whether to receive `join`/`leave` frames for the room.
        presence_events: bool,
        /// Recover from this position (§7).
        since: Option<StreamPosition>,
    },
    /// Read a room's history (§7).
    History {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: Name,
        /// At most this many messages (the server caps it).
        limit: Option<u32>,
        /// Only messages after this position.
        since: Option<StreamPosition>,
    },
    /// Leave a room (acked also when not subscribed).
    Unsubscribe {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: Name,
    },
    /// Publish into a room.
    Publish {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: Name,
        /// Event name.
        event: Name,
        /// Payload.
        data: Value,
    },
    /// Ask who is in a room.
    Presence {
        /// Request id.
        id: Option<RequestId>,
        /// The room.
        room: Name,
    },
    /// Replace the connection's token with a later one.
    Refresh {
        /// Request id.
        id: Option<RequestId>,
        /// The new JWT.
        token: String,
    },
    /// Application-level ping.
    Ping {
        /// Request id.
        id: Option<RequestId>,
    },
}

impl ClientFrame {
    /// The request id the client gave, echoed in the answer (`auth` has none).
    pub fn id(&self) -> Option<RequestId> {
        match self {
            ClientFrame::Auth { .. } => None,
            ClientFrame::Subscribe { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Unsubscribe { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::Ping { id } => *id,
        }
    }
}

/// Why a client frame was refused; becomes an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// The request id, when it could be read.
    pub id: Option<RequestId>,
    /// The error code.
    pub code: ErrorCode,
    /// A message for the client developer.
    pub message: String,
}

impl FrameError {
    /// A 400 error for a malformed frame.
    pub fn bad_request(id: Option<RequestId>, message: impl Into<String>) -> Self {
        Self {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

impl RawClientFrame {
    /// Checks the fields the frame type needs and validates every name.
    pub fn into_frame(self) -> Result<ClientFrame, FrameError> {
        let id = self.id;
        let bad = |m: String| FrameError::bad_request(id, m);
        let kind = self
            .kind
            .as_deref()
            .ok_or_else(|| bad("missing field `type`".into()))?;
        let room = |r: Option<String>| -> Result<Name, FrameError> {
            let r = r.ok_or_else(|| bad(format!("`{kind}` needs a `room`")))?;
            Name::new("room", &r).map_err(|e| bad(e.to_string()))
        };
        let token = |t: Option<String>| t.ok_or_else(|| bad(format!("`{kind}` needs a `token`")));
        let since = |s: Option<StreamPosition>| match s {
            Some(p) if p.epoch.is_empty() || p.epoch.len() > MAX_EPOCH_LEN => Err(bad(format!(
                "`since.epoch` must be 1 to {MAX_EPOCH_LEN} bytes"
            ))),
            other => Ok(other),
        };
        Ok(match kind {
            "auth" => ClientFrame::Auth {
                token: token(self.token)?,
            },
            "subscribe" => ClientFrame::Subscribe {
                id,
                room: room(self.room)?,
                presence_events: self.presence_events.unwrap_or(false),
                since: since(self.since)?,
            },
            "history" => ClientFrame::History {
                id,
                room: room(self.room)?,
                limit: self.limit,
                since: since(self.since)?,
            },
            "unsubscribe" => ClientFrame::Unsubscribe {
                id,
                room: room(self.room)?,
            },
            "publish" => {
                let room = room(self.room)?;
                let event = self
                    .event
                    .ok_or_else(|| bad("`publish` needs an `event`".into()))?;
                let event = Name::new("event", &event).map_err(|e| bad(e.to_string()))?;
                ClientFrame::Publish {
                    id,
                    room,
                    event,
                    data: self.data,
                }
            }
            "presence" => ClientFrame::Presence {
                id,
                room: room(self.room)?,
            },
            "refresh" => ClientFrame::Refresh {
                id,
                token: token(self.token)?,
            },
            "ping" => ClientFrame::Ping { id },
            other => return Err(bad(format!("unknown frame type {other:?}"))),
        })
    }
}

/// Who a message was addressed to, as shown in its `scope` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everyone subscribed to a room.
    Room,
    /// Every connection of one user.
    User,
    /// Every connection of the tenant.
    Tenant,
}

/// One member of a presence answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMember {
    /// The user id.
    pub user: String,
    /// How many of the user's connections are in the room.
    pub conns: u32,
}

/// A `message` frame: the one frame every fan-out carries.
#[derive(Debug, Clone, Serialize)]
pub struct MessageFrame<'a> {
    /// Room, user or tenant.
    pub scope: Scope,
    /// The room, for room-scoped messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// Event name.
    pub event: &'a str,
    /// Payload.
    pub data: &'a Value,
    /// Message id, as returned by the publish API.
    pub id: &'a str,
    /// Milliseconds since the epoch at which the message was accepted.
    pub ts: u64,
    /// Offset in the room's stream, in rooms with history (§7). Last but
    /// one on purpose: a frame encoded without a position can be given one
    /// by appending these two fields (see the gateway's `EncodedFrame`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Epoch of the room's stream, with `offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
}

/// A `message` frame as read back from history: owned, decoded from the
/// JSON a node stored, to be encoded again (with its position) in any codec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StoredMessage {
    /// Room, user or tenant.
    pub scope: Scope,
    /// The room.
    #[serde(default)]
    pub room: Option<String>,
    /// Event name.
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
    /// Message id.
    pub id: String,
    /// Acceptance time, ms since the epoch.
    pub ts: u64,
}

impl StoredMessage {
    /// The frame, at `offset` of the stream `epoch`.
    pub fn frame<'a>(&'a self, offset: u64, epoch: &'a str) -> MessageFrame<'a> {
        MessageFrame {
            scope: self.scope,
            room: self.room.as_deref(),
            event: &self.event,
            data: &self.data,
            id: &self.id,
            ts: self.ts,
            offset: Some(offset),
            epoch: Some(epoch),
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// Authentication succeeded.
    Welcome {
        /// Connection id.
        conn: &'a str,
        /// Node id.
        node: &'a str,
        /// Tenant of the token.
        tenant: &'a str,
        /// User of the token.
        user: &'a str,
        /// Seconds between server pings.
        ping_interval: u64,
    },
    /// A request succeeded.
    Ack {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// `subscribe` with `since`: whether every missed message follows.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// `subscribe` (and `publish`) in a room with history: the stream's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        /// With `epoch`: the room's latest offset (`subscribe`), or the
        /// published message's (`publish`).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// A request failed.
    Error {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Error code (400, 403, ...).
        code: u16,
        /// What went wrong.
        message: &'a str,
    },
    /// Reply to `ping`.
    Pong {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Reply to `presence`.
    Presence {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room asked about.
        room: &'a str,
        /// Users present, with their connection counts.
        members: &'a [PresenceMember],
    },
    /// A published message.
    Message(MessageFrame<'a>),
    /// Reply to `history`: messages oldest first.
    History {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: &'a str,
        /// The stream's epoch.
        epoch: &'a str,
        /// The room's latest offset.
        offset: u64,
        /// The messages, each a `message` frame (`ServerFrame::Message`)
        /// with its position.
        messages: &'a [ServerFrame<'a>],
    },
    /// A user joined a room (first connection of that user in the room).
    Join {
        /// The room.
        room: &'a str,
        /// The user.
        user: &'a str,
    },
    /// A user left a room (last connection of that user in the room).
    Leave {
        /// The room.
        room: &'a str,
        /// The user.
        user: &'a str,
    },
}

impl<'a> ServerFrame<'a> {
    /// A plain `ack`.
    pub fn ack(id: Option<RequestId>) -> Self {
        ServerFrame::Ack {
            id,
            recovered: None,
            epoch: None,
            offset: None,
        }
    }

    /// An `error` frame for a refused request.
    pub fn error(err: &'a FrameError) -> Self {
        ServerFrame::Error {
            id: err.id,
            code: err.code.as_u16(),
            message: &err.message,
        }
    }
}
