//! What travels between nodes: a MessagePack envelope around the frame the
//! origin already encoded in both codecs.
//!
//! The receiving node checks the JSON half is UTF-8 and hands both halves to
//! its hub as they are: no frame is re-serialised on the way. Envelopes are
//! maps with named fields (`to_vec_named`) so that nodes of neighbouring
//! versions can read each other's envelopes during a rolling upgrade.
//!
//! Public so that benchmarks and tools can measure and inspect the format.
//!
//! Compatibility policy: adding an optional field (with a serde default)
//! keeps `v`; anything an older node would misread bumps `v`, and nodes
//! drop envelopes of a version they do not know (counted as
//! `fanout_pubsub_dropped_total{reason="version"}`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Envelope format version.
pub const VERSION: u8 = 1;

/// What the envelope asks the receiving node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Deliver the frame to local members of the audience.
    Deliver,
    /// Close the user's local connections with 4001.
    Disconnect,
    /// A node's probe of its own subscriber connection.
    Probe,
}

/// One cross-node message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version.
    pub v: u8,
    /// The node that accepted the message (a node ignores its own).
    pub origin: String,
    /// What to do.
    pub kind: Kind,
    /// Message id (empty for presence events and control messages).
    #[serde(default)]
    pub id: String,
    /// Milliseconds since the epoch at acceptance (or the probe number).
    pub ts: u64,
    /// Tenant.
    pub tenant: String,
    /// Room, for room audiences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// User, for user audiences and disconnects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only room members that asked for presence events (join/leave).
    #[serde(default)]
    pub presence_only: bool,
    /// The frame as JSON text.
    #[serde(default)]
    pub json: Bytes,
    /// The frame as MessagePack.
    #[serde(default)]
    pub msgpack: Bytes,
    /// Rooms with history: the message's offset. Never set by the origin:
    /// the route script appends it (with `epoch`) to the encoded map, in the
    /// same step that assigns it, so every node receives the position Redis
    /// assigned. An older node ignores both fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Rooms with history: the stream's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl Envelope {
    /// A node's probe of its own subscription through one shard: number `n`
    /// (in `ts`), the shard in `id`.
    pub(crate) fn probe(origin: &str, shard: &str, n: u64) -> Self {
        Envelope {
            v: VERSION,
            origin: origin.to_owned(),
            kind: Kind::Probe,
            id: shard.to_owned(),
            ts: n,
            tenant: String::new(),
            room: None,
            user: None,
            presence_only: false,
            json: Bytes::new(),
            msgpack: Bytes::new(),
            offset: None,
            epoch: None,
        }
    }

    /// Encodes to MessagePack.
    pub fn encode(&self) -> Result<Bytes, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self).map(Bytes::from)
    }

    /// Decodes from MessagePack, with the nesting limited as for client
    /// frames: with rmp_serde's default (1024), an unknown field nested
    /// deep overflowed the stack and aborted the node (found by the fuzz
    /// corpus, `crash-deep-unknown-field.msgpack`).
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        fanout_protocol::codec::msgpack_from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_bytes_as_binary() {
        let e = Envelope {
            v: VERSION,
            origin: "node-a".into(),
            kind: Kind::Deliver,
            id: "m1".into(),
            ts: 1_763_800_000_000,
            tenant: "acme".into(),
            room: Some("lobby".into()),
            user: None,
            presence_only: false,
            json: Bytes::from_static(br#"{"type":"message"}"#),
            msgpack: Bytes::from_static(&[0x81, 0xa1, 0x61, 0x01]),
            offset: None,
            epoch: None,
        };
        let bytes = e.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        // The payload is carried as MessagePack bin (0xc4 + length), not as
        // an array of numbers.
        let bin_header = [0xc4, e.json.len() as u8];
        assert!(bytes.windows(2).any(|w| w == bin_header), "{bytes:x?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Envelope::decode(b"\xc1\xc1").is_err());
        assert!(Envelope::decode(b"").is_err());
    }

    #[test]
    fn deep_nesting_in_an_unknown_field_is_an_error_not_a_stack_overflow() {
        let e = Envelope::probe("node-a", "", 1);
        let mut bytes = e.encode().unwrap().to_vec();
        bytes[0] += 1; // one more field: "x": [[[…]]]
        bytes.extend_from_slice(&[0xa1, b'x']);
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0xc0);
        // On a small stack, so a regression fails here rather than by chance.
        let out = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || Envelope::decode(&bytes).map_err(|e| e.to_string()))
            .unwrap()
            .join()
            .unwrap();
        assert!(out.unwrap_err().contains("depth"));
    }
}
