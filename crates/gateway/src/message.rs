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

    /// Size of the JSON encoding.
    pub fn json_len(&self) -> usize {
        self.json.len()
    }

    /// Size of the larger of the two encodings, used for payload limits:
    /// MessagePack is the larger one for arrays of floats (9 bytes per
    /// number against as few as 2 in JSON), and a MessagePack client's queue
    /// must hold what the limit lets through as surely as a JSON client's.
    pub fn encoded_len(&self) -> usize {
        self.json.len().max(self.msgpack.len())
    }

    /// The JSON encoding's bytes (shared, not copied): what history stores.
    pub fn json_bytes(&self) -> Bytes {
        match &self.json {
            Message::Text(t) => Bytes::from(t.clone()),
            other => other.clone().into_data(),
        }
    }

    /// The same `message` frame with its stream position, without
    /// re-encoding: `"offset"` and `"epoch"` are appended to the JSON
    /// object and to the MessagePack map. This gives exactly the bytes that
    /// encoding the frame with `offset` and `epoch` set would give, because
    /// they are the frame's last two fields (tested below). `None` when the
    /// frame is not a JSON object and a MessagePack map of at most 13 fields
    /// (which every `message` frame is).
    pub fn with_position(&self, pos: &Position) -> Option<Self> {
        let json = match &self.json {
            Message::Text(t) => t.as_str(),
            _ => return None,
        };
        let body = json.strip_suffix('}')?;
        let mut epoch_json = String::with_capacity(pos.epoch.len() + 2);
        epoch_json.push('"');
        epoch_json.push_str(&pos.epoch);
        epoch_json.push('"');
        // Epochs are made by fanout from [0-9a-z]; anything else is escaped.
        if pos.epoch.bytes().any(|b| !b.is_ascii_alphanumeric()) {
            epoch_json = serde_json::to_string(&*pos.epoch).ok()?;
        }
        let json = format!("{body},\"offset\":{},\"epoch\":{epoch_json}}}", pos.offset);
        let msgpack = match &self.msgpack {
            Message::Binary(b) => b,
            _ => return None,
        };
        let (&head, rest) = msgpack.split_first()?;
        // A fixmap of n fields is 0x80 | n; two more must still fit (n ≤ 13).
        if !(0x80..=0x8d).contains(&head) {
            return None;
        }
        let mut out = Vec::with_capacity(msgpack.len() + 24 + pos.epoch.len());
        out.push(head + 2);
        out.extend_from_slice(rest);
        rmp::encode::write_str(&mut out, "offset").ok()?;
        rmp::encode::write_uint(&mut out, pos.offset).ok()?;
        rmp::encode::write_str(&mut out, "epoch").ok()?;
        rmp::encode::write_str(&mut out, &pos.epoch).ok()?;
        Some(Self {
            json: Message::Text(json.into()),
            msgpack: Message::Binary(Bytes::from(out)),
        })
    }
}

/// A message's place in its room's stream (rooms with history, §7 of the
/// protocol): `offset` counts the room's messages 1, 2, 3, … within the
/// stream named `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Offset within the stream.
    pub offset: u64,
    /// The stream's name; a new epoch starts again at offset 1.
    pub epoch: Arc<str>,
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
    /// The message's place in its room's stream (rooms with history only);
    /// `frame` then already carries it.
    pub position: Option<Position>,
}

#[cfg(test)]
mod tests {
    use fanout_protocol::{MessageFrame, Scope};
    use serde_json::json;

    use super::*;

    fn frame<'a>(data: &'a serde_json::Value, pos: Option<(u64, &'a str)>) -> ServerFrame<'a> {
        ServerFrame::Message(MessageFrame {
            scope: Scope::Room,
            room: Some("lobby"),
            event: "chat",
            data,
            id: "0199-id",
            ts: 1_763_800_000_000,
            offset: pos.map(|p| p.0),
            epoch: pos.map(|p| p.1),
        })
    }

    #[test]
    fn a_position_appended_to_an_encoded_frame_equals_encoding_it_with_the_position() {
        let data = json!({"text": "hi", "n": [1, 2.5, null], "nested": {"a": "\"q\""}});
        let plain = EncodedFrame::encode(&frame(&data, None)).unwrap();
        for (offset, epoch) in [
            (1, "k3x9"),
            (u64::MAX, "abcdefghijklmnopqrstuvwxyz0123456789"),
        ] {
            let pos = Position {
                offset,
                epoch: Arc::from(epoch),
            };
            let spliced = plain
                .with_position(&pos)
                .expect("a message frame takes a position");
            let direct = EncodedFrame::encode(&frame(&data, Some((offset, epoch)))).unwrap();
            assert_eq!(
                spliced.for_codec(Codec::Json),
                direct.for_codec(Codec::Json)
            );
            assert_eq!(
                spliced.for_codec(Codec::MsgPack),
                direct.for_codec(Codec::MsgPack)
            );
        }
    }

    #[test]
    fn an_unusual_epoch_is_escaped_not_spliced_raw() {
        let data = json!(1);
        let plain = EncodedFrame::encode(&frame(&data, None)).unwrap();
        let pos = Position {
            offset: 7,
            epoch: Arc::from("a\"b"),
        };
        let spliced = plain.with_position(&pos).unwrap();
        let Message::Text(text) = spliced.for_codec(Codec::Json) else {
            panic!("json is text")
        };
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["epoch"], "a\"b");
        assert_eq!(v["offset"], 7);
    }
}
