//! The two codecs, JSON and MessagePack, chosen per connection by subprotocol.
//!
//! Both carry the same maps with the same keys. MessagePack is encoded with
//! string keys (`to_vec_named`), never as positional arrays, so that a frame
//! means the same thing in either codec and new optional fields can be added.
//! Payloads (`data`) are held as `serde_json::Value` in between: a message
//! published by a JSON client must reach MessagePack clients and the other way
//! round, so `data` has to be representable in both. MessagePack binary and
//! extension values, and maps with non-string keys, therefore get a 400.

use serde::Deserialize;

use crate::frames::{ClientFrame, FrameError, IdOnly, RawClientFrame, ServerFrame};

/// Subprotocol name of the JSON codec.
pub const JSON_SUBPROTOCOL: &str = "fanout.json";
/// Subprotocol name of the MessagePack codec.
pub const MSGPACK_SUBPROTOCOL: &str = "fanout.msgpack";

/// The deepest MessagePack nesting accepted, the same as `serde_json`'s
/// recursion limit for JSON. rmp-serde's own default (1024) lets one small
/// frame of nested arrays in `data` overflow a 2 MiB thread stack while it
/// is decoded into `serde_json::Value` (a debug build aborts; a release
/// build keeps little margin), so it is lowered here.
pub const MAX_MSGPACK_DEPTH: usize = 128;

/// `rmp_serde::from_slice` with the nesting limited to [`MAX_MSGPACK_DEPTH`].
/// Use it for every untrusted MessagePack input.
pub fn msgpack_from_slice<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_MSGPACK_DEPTH);
    T::deserialize(&mut de)
}

/// The encoding of a connection's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON text frames (the default).
    Json,
    /// MessagePack binary frames.
    MsgPack,
}

/// Number of codecs; indexes per-codec caches.
pub const CODEC_COUNT: usize = 2;

/// Why a frame could not be encoded (a bug or an unrepresentable value).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON encoding failed.
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack encoding failed.
    #[error("msgpack encoding failed: {0}")]
    MsgPack(#[from] rmp_serde::encode::Error),
}

/// An encoded frame, ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A JSON text frame.
    Text(String),
    /// A MessagePack binary frame.
    Binary(Vec<u8>),
}

impl Encoded {
    /// The encoded length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Text(s) => s.len(),
            Encoded::Binary(b) => b.len(),
        }
    }

    /// Whether the frame is empty (never true for a real frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Codec {
    /// The codec a subprotocol names, if fanout speaks it.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            JSON_SUBPROTOCOL => Some(Codec::Json),
            MSGPACK_SUBPROTOCOL => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// The subprotocol name of this codec.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => JSON_SUBPROTOCOL,
            Codec::MsgPack => MSGPACK_SUBPROTOCOL,
        }
    }

    /// Index into per-codec caches (`0..CODEC_COUNT`).
    pub fn index(self) -> usize {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// Decodes and validates one client frame.
    pub fn decode(self, bytes: &[u8]) -> Result<ClientFrame, FrameError> {
        let raw: Result<RawClientFrame, String> = match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::MsgPack => msgpack_from_slice(bytes).map_err(|e| e.to_string()),
        };
        match raw {
            Ok(raw) => raw.into_frame(),
            Err(reason) => {
                let id = self.salvage_id(bytes);
                Err(FrameError::bad_request(
                    id,
                    format!("malformed {} frame: {reason}", self.label()),
                ))
            }
        }
    }

    /// Reads just the `id` of a frame that did not decode, for the error reply.
    fn salvage_id(self, bytes: &[u8]) -> Option<i64> {
        let only: Option<IdOnly> = match self {
            Codec::Json => serde_json::from_slice(bytes).ok(),
            Codec::MsgPack => msgpack_from_slice(bytes).ok(),
        };
        only.and_then(|o| o.id)
    }

    /// Encodes one server frame.
    pub fn encode(self, frame: &ServerFrame<'_>) -> Result<Encoded, EncodeError> {
        Ok(match self {
            Codec::Json => Encoded::Text(serde_json::to_string(frame)?),
            Codec::MsgPack => Encoded::Binary(rmp_serde::to_vec_named(frame)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::ErrorCode;
    use crate::frames::{MessageFrame, PresenceMember, Scope};
    use serde_json::json;

    fn msgpack_of(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn decodes_every_client_frame_in_both_codecs() {
        let cases = [
            json!({"type":"auth","token":"t"}),
            json!({"type":"subscribe","id":1,"room":"lobby","presence_events":true}),
            json!({"type":"unsubscribe","id":2,"room":"lobby"}),
            json!({"type":"publish","id":3,"room":"lobby","event":"chat","data":{"text":"hi"}}),
            json!({"type":"presence","id":4,"room":"lobby"}),
            json!({"type":"refresh","id":5,"token":"t2"}),
            json!({"type":"ping","id":6}),
        ];
        for case in cases {
            let from_json = Codec::Json.decode(case.to_string().as_bytes()).unwrap();
            let from_mp = Codec::MsgPack.decode(&msgpack_of(&case)).unwrap();
            assert_eq!(from_json, from_mp, "{case}");
        }
        let f = Codec::Json
            .decode(br#"{"type":"publish","id":3,"room":"lobby","event":"chat","data":[1,2]}"#)
            .unwrap();
        match f {
            ClientFrame::Publish {
                id,
                room,
                event,
                data,
            } => {
                assert_eq!(id, Some(3));
                assert_eq!(room.as_str(), "lobby");
                assert_eq!(event.as_str(), "chat");
                assert_eq!(data, json!([1, 2]));
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_400_and_keep_the_id_when_possible() {
        let err = Codec::Json.decode(b"{not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(err.id, None);

        let err = Codec::Json
            .decode(br#"{"type":"subscribe","id":9,"room":7}"#)
            .unwrap_err();
        assert_eq!(err.id, Some(9));
        assert!(
            err.message.contains("malformed json frame"),
            "{}",
            err.message
        );

        let err = Codec::Json
            .decode(br#"{"type":"warp","id":2}"#)
            .unwrap_err();
        assert_eq!((err.id, err.code), (Some(2), ErrorCode::BadRequest));
        assert!(err.message.contains("unknown frame type"));

        let err = Codec::Json
            .decode(br#"{"type":"subscribe","id":4,"room":"a b"}"#)
            .unwrap_err();
        assert_eq!(err.id, Some(4));
        assert!(
            err.message.contains("room name contains"),
            "{}",
            err.message
        );

        let err = Codec::Json
            .decode(br#"{"type":"publish","id":5,"room":"r"}"#)
            .unwrap_err();
        assert!(err.message.contains("needs an `event`"));

        let err = Codec::MsgPack.decode(&[0xc1, 0x00]).unwrap_err();
        assert!(err.message.contains("malformed msgpack frame"));
    }

    #[test]
    fn deep_msgpack_nesting_is_400_not_a_stack_overflow() {
        // {"type":"publish","room":"r","event":"e","data":[[[…]]]}, `depth` deep.
        let nested = |depth: usize| {
            let mut bytes = msgpack_of(&json!({"type":"publish","room":"r","event":"e"}));
            bytes[0] += 1; // a fixmap of one more entry: "data"
            bytes.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a']);
            bytes.extend(std::iter::repeat_n(0x91, depth));
            bytes.push(0xc0);
            bytes
        };
        let deep = nested(100_000);
        // On a small stack, so a regression fails here rather than by chance.
        let err = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || Codec::MsgPack.decode(&deep).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("depth"), "{}", err.message);
        // Nesting within the limit still decodes.
        assert!(Codec::MsgPack.decode(&nested(100)).is_ok());
    }

    #[test]
    fn msgpack_binary_payloads_are_refused_not_mangled() {
        #[derive(serde::Serialize)]
        struct WithBin<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            room: &'a str,
            event: &'a str,
            #[serde(with = "serde_bytes_like")]
            data: &'a [u8],
        }
        mod serde_bytes_like {
            pub(super) fn serialize<S: serde::Serializer>(
                b: &&[u8],
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let frame = WithBin {
            kind: "publish",
            room: "r",
            event: "e",
            data: b"\x00\x01",
        };
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        let err = Codec::MsgPack.decode(&bytes).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn server_frames_have_the_contract_shapes() {
        let data = json!({"text":"hi"});
        let msg = ServerFrame::Message(MessageFrame {
            scope: Scope::Room,
            room: Some("lobby"),
            event: "chat",
            data: &data,
            id: "m1",
            ts: 1763800000000,
            offset: None,
            epoch: None,
        });
        let Encoded::Text(text) = Codec::Json.encode(&msg).unwrap() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","scope":"room","room":"lobby","event":"chat",
                   "data":{"text":"hi"},"id":"m1","ts":1763800000000u64})
        );
        let Encoded::Binary(bin) = Codec::MsgPack.encode(&msg).unwrap() else {
            panic!()
        };
        let from_mp: serde_json::Value = rmp_serde::from_slice(&bin).unwrap();
        assert_eq!(from_mp, v);

        let user_msg = ServerFrame::Message(MessageFrame {
            scope: Scope::User,
            room: None,
            event: "n",
            data: &data,
            id: "m2",
            ts: 1,
            offset: None,
            epoch: None,
        });
        let Encoded::Text(text) = Codec::Json.encode(&user_msg).unwrap() else {
            panic!()
        };
        assert!(!text.contains("\"room\""), "{text}");

        let members = [PresenceMember {
            user: "u42".into(),
            conns: 2,
        }];
        let p = ServerFrame::Presence {
            id: Some(4),
            room: "lobby",
            members: &members,
        };
        let Encoded::Text(text) = Codec::Json.encode(&p).unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            json!({"type":"presence","id":4,"room":"lobby","members":[{"user":"u42","conns":2}]})
        );
        let Encoded::Text(ack) = Codec::Json.encode(&ServerFrame::ack(None)).unwrap() else {
            panic!()
        };
        assert_eq!(ack, r#"{"type":"ack"}"#);
    }

    #[test]
    fn subprotocols_map_to_codecs() {
        assert_eq!(Codec::from_subprotocol("fanout.json"), Some(Codec::Json));
        assert_eq!(
            Codec::from_subprotocol(" fanout.msgpack"),
            Some(Codec::MsgPack)
        );
        assert_eq!(Codec::from_subprotocol("graphql-ws"), None);
    }
}
