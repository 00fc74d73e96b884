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
