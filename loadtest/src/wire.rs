//! What the generator puts on and reads off the wire.
//!
//! Client frames are small `serde_json` values encoded in the connection's
//! codec. Server frames are decoded into [`Incoming`], a flat struct of the
//! few fields the generator reads (`fanout-protocol`'s server frames are
//! serialise-only borrowed types); MessagePack goes through the protocol
//! crate's depth-limited decoder, as every untrusted MessagePack input should.
//!
//! Every published payload is a [`Probe`]: which stream it belongs to, its
//! sequence number in that stream and the wall-clock time it was due to be
//! sent. Loss, duplicates, order and latency are all computed from these
//! three numbers on arrival.
//!
//! In a room with history a `message` frame also carries its position
//! (`offset`, `epoch`) and a `subscribe`'s `ack` the room's position and,
//! for a subscribe with `since`, `recovered`; [`Incoming`] reads those too,
//! the epoch into an inline [`Epoch`] so that decoding a frame still
//! allocates nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use fanout_protocol::Codec;
use fanout_protocol::codec::msgpack_from_slice;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Microseconds since the Unix epoch (all processes of a run share the clock).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Encodes a client frame in `codec`.
pub(crate) fn encode(codec: Codec, frame: &Value) -> Result<Message, rmp_serde::encode::Error> {
    Ok(match codec {
        Codec::Json => Message::Text(frame.to_string().into()),
        Codec::MsgPack => Message::Binary(rmp_serde::to_vec_named(frame)?.into()),
    })
}

/// The payload of every message the generator publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Probe {
    /// Stream id: one publisher's sequence into one room or to one user.
    pub(crate) s: u64,
    /// Sequence number within the stream, from 0.
    pub(crate) q: u64,
    /// When the message was due to be sent, µs since the epoch. The due
    /// time rather than the actual send time, so that a publisher that falls
    /// behind shows up as latency instead of hiding it (coordinated omission).
    pub(crate) t: u64,
}

impl Probe {
    /// The payload as published, with `pad` bytes of padding in `p`.
    pub(crate) fn to_data(self, pad: &str) -> Value {
        let mut v = serde_json::json!({"s": self.s, "q": self.q, "t": self.t});
        if !pad.is_empty() {
            v["p"] = Value::String(pad.to_owned());
        }
        v
    }
}

/// The fields of a server frame the generator reads; the rest is skipped.
#[derive(Debug, Deserialize)]
pub(crate) struct Incoming {
    /// `welcome`, `ack`, `error`, `message`, `pong`, ...
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// Request id of replies.
    #[serde(default, deserialize_with = "lenient_id")]
    pub(crate) id: Option<i64>,
    /// Error code of `error` frames.
    #[serde(default)]
    pub(crate) code: Option<u16>,
    /// Error text of `error` frames.
    #[serde(default)]
    pub(crate) message: Option<String>,
    /// The payload of `message` frames, when it is one of ours.
    #[serde(default)]
    pub(crate) data: Option<Probe>,
    /// In a room with history: the message's offset (`message`), or the
    /// room's latest offset (`ack` of a subscribe).
    #[serde(default)]
    pub(crate) offset: Option<u64>,
    /// In a room with history: the stream's epoch, with `offset`.
    #[serde(default)]
    pub(crate) epoch: Option<Epoch>,
    /// `ack` of a subscribe with `since`: whether every missed message follows.
    #[serde(default)]
    pub(crate) recovered: Option<bool>,
}

/// Longest epoch kept (the protocol's limit on `since.epoch`; the node's
/// own epochs are 10 characters).
const EPOCH_MAX: usize = fanout_protocol::frames::MAX_EPOCH_LEN;

/// A stream epoch held inline: decoding one per message must not allocate
/// (10,000 subscribers of a room with history decode hundreds of thousands
/// of frames a second in the generator, on the machine being measured).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch {
    len: u8,
    bytes: [u8; EPOCH_MAX],
}

impl Epoch {
    /// The epoch, if `s` fits (`None` for an empty or over-long one).
    pub(crate) fn new(s: &str) -> Option<Epoch> {
        if s.is_empty() || s.len() > EPOCH_MAX {
            return None;
        }
        let mut bytes = [0; EPOCH_MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Epoch {
            len: s.len() as u8,
            bytes,
        })
    }

    /// The epoch as text.
    pub(crate) fn as_str(&self) -> &str {
        // Built from a `&str` cut at its own length: always valid UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Epoch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an epoch of 1 to {EPOCH_MAX} bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Epoch, E> {
                Epoch::new(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// `id` is an integer in replies and a string (the message id) in `message`
/// frames; only the integer matters here.
fn lenient_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Int(i64),
        #[allow(dead_code)]
        Other(serde::de::IgnoredAny),
    }
    Ok(match Id::deserialize(d)? {
        Id::Int(i) => Some(i),
        Id::Other(_) => None,
    })
}

/// Why a server frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("undecodable server frame: {0}")]
pub(crate) struct DecodeError(String);

/// Decodes a text or binary server frame; `Ok(None)` for control frames.
pub(crate) fn decode(msg: &Message) -> Result<Option<Incoming>, DecodeError> {
    match msg {
        Message::Text(t) => serde_json::from_str(t)
            .map(Some)
            .map_err(|e| DecodeError(e.to_string())),
        Message::Binary(b) => msgpack_from_slice(b)
            .map(Some)
            .map_err(|e| DecodeError(e.to_string())),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_decode_in_both_codecs_without_allocating_the_epoch() {
        let probe = Probe { s: 1, q: 2, t: 3 };
        let message = serde_json::json!({"type":"message","scope":"room","room":"r","event":"lt",
            "data": probe.to_data(""),"id":"0199-abc","ts":1,"offset":41,"epoch":"k3j9x0a1bq"});
        let ack = serde_json::json!({"type":"ack","id":1,"recovered":true,"epoch":"k3j9x0a1bq","offset":44});
        for codec in [Codec::Json, Codec::MsgPack] {
            let m = decode(&encode(codec, &message).unwrap()).unwrap().unwrap();
            assert_eq!(m.offset, Some(41));
            assert_eq!(m.epoch.unwrap().as_str(), "k3j9x0a1bq");
            let a = decode(&encode(codec, &ack).unwrap()).unwrap().unwrap();
            assert_eq!((a.offset, a.recovered), (Some(44), Some(true)));
            assert_eq!(a.epoch, Epoch::new("k3j9x0a1bq"));
        }
        assert!(Epoch::new("").is_none());
        assert!(Epoch::new(&"e".repeat(65)).is_none());
        assert_eq!(Epoch::new(&"e".repeat(64)).unwrap().as_str().len(), 64);
    }

    #[test]
    fn message_frames_decode_in_both_codecs() {
        let probe = Probe { s: 3, q: 9, t: 42 };
        let frame = serde_json::json!({"type":"message","scope":"room","room":"r","event":"lt",
            "data": probe.to_data("xx"),"id":"0199-abc","ts":1});
        for codec in [Codec::Json, Codec::MsgPack] {
            let msg = encode(codec, &frame).unwrap();
            let inc = decode(&msg).unwrap().unwrap();
            assert_eq!(inc.kind, "message");
            assert_eq!(inc.id, None);
            assert_eq!(inc.data, Some(probe));
        }
        let ack = decode(&Message::Text(r#"{"type":"ack","id":7}"#.into()))
            .unwrap()
            .unwrap();
        assert_eq!((ack.kind.as_str(), ack.id), ("ack", Some(7)));
        assert_eq!((ack.offset, ack.epoch, ack.recovered), (None, None, None));
        let err = decode(&Message::Text(
            r#"{"type":"error","id":1,"code":403,"message":"no"}"#.into(),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(err.code, Some(403));
        assert!(decode(&Message::Text("{".into())).is_err());
        assert!(
            decode(&Message::Ping(Default::default()))
                .unwrap()
                .is_none()
        );
    }
}
