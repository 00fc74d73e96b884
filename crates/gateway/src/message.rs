//! A message on its way to connections: encoded once per codec, addressed
//! to a room, a user or a whole tenant.
//!
//! [`EncodedFrame`] is the "encode once" of the data path: the router
//! serialises a frame into one JSON text frame and one MessagePack binary
//! frame, both backed by reference-counted `Bytes`, and every member's send
//! queue gets a clone (a reference-count increment, not a copy). Both codecs
//! are encoded eagerly because cross-node envelopes carry both, so a
//! receiving node never re-serialises what the origin already encoded.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fanout_protocol::codec::EncodeError;
use fanout_protocol::{Codec, Encoded, Name, ServerFrame};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Node-local connection number; unique for the life of the process.
///
/// It lives here, beside [`Broadcast`], because a broadcast names the
/// connection it must skip (the publisher); the hub hands the numbers out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// The id numbered `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One server frame, encoded in every codec.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    json: Message,
    msgpack: Message,
}

impl EncodedFrame {
    /// Encodes `frame` in both codecs.
    pub fn encode(frame: &ServerFrame<'_>) -> Result<Self, EncodeError> {
        Ok(Self {
            json: to_message(Codec::Json.encode(frame)?),
            msgpack: to_message(Codec::MsgPack.encode(frame)?),
        })
    }

    /// Rebuilds a frame from bytes encoded by another node. The JSON part
    /// is checked to be UTF-8 (once per node, not per member); nothing is
    /// re-serialised.
    pub fn from_wire(json: Bytes, msgpack: Bytes) -> Result<Self, std::str::Utf8Error> {
        Ok(Self {
            json: Message::Text(Utf8Bytes::try_from(json)?),
            msgpack: Message::Binary(msgpack),
        })
    }

    /// The encoded bytes of both codecs, for a cross-node envelope.
    pub fn wire_parts(&self) -> (Bytes, Bytes) {
        let json = match &self.json {
            Message::Text(t) => Bytes::from(t.clone()),
            other => other.clone().into_data(),
        };
        (json, self.msgpack.clone().into_data())
    }

    /// The WebSocket message for a connection speaking `codec`.
    pub fn for_codec(&self, codec: Codec) -> &Message {
        match codec {
            Codec::Json => &self.json,
            Codec::MsgPack => &self.msgpack,
        }
    }

    /// Size of the JSON encoding, used for payload limits.
    pub fn json_len(&self) -> usize {
        self.json.len()
    }
}

/// Wraps an encoded frame in the WebSocket message type of its codec.
pub fn to_message(encoded: Encoded) -> Message {
    match encoded {
        Encoded::Text(text) => Message::Text(text.into()),
        Encoded::Binary(bin) => Message::Binary(bin.into()),
    }
}

/// Who a broadcast is for, inside its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Subscribers of a room.
    Room(Name),
    /// Connections of a user.
    User(Name),
    /// Every connection of the tenant.
    Tenant,
}

/// Which members of the audience receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// Every member (messages).
    Everyone,
    /// Only room members that subscribed with `presence_events` (join/leave).
    PresenceWatchers,
}

/// A message ready for delivery.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// Tenant; nothing crosses it.
    pub tenant: Name,
    /// Room, user or tenant.
    pub audience: Audience,
    /// Who among the audience.
    pub recipients: Recipients,
    /// A connection that must not receive it: the publishing connection.
    pub exclude: Option<ConnId>,
    /// The frame, encoded once per codec.
    pub frame: Arc<EncodedFrame>,
    /// When this node accepted (or received) it, for the fan-out latency histogram.
    pub accepted_at: Instant,
    /// Milliseconds since the epoch at which the cluster accepted it.
    pub ts: u64,
    /// Message id (empty for presence events), carried in cross-node envelopes.
    pub id: Arc<str>,
}
