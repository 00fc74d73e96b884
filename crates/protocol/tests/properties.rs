//! Property tests of the wire contract's decoders (issue 13, item 8): client
//! frames in both codecs, the name rule, room patterns, API bodies and the
//! stored form of `message` frames. Round trips hold, both codecs agree, no
//! input panics, limits hold.
//!
//! 256 cases per property unless `PROPTEST_CASES` says otherwise (see
//! docs/testing.md). The gateway's fuzz harness (`crates/gateway/tests/fuzz`)
//! reuses the strategies of `strategies/mod.rs`.

#![allow(missing_docs, clippy::unwrap_used)]

mod strategies;

use fanout_protocol::api::{BatchRequest, PublishRequest};
use fanout_protocol::codec::msgpack_from_slice;
use fanout_protocol::frames::MAX_EPOCH_LEN;
use fanout_protocol::names::validate_name;
use fanout_protocol::{
    ClientFrame, Codec, Encoded, ErrorCode, FrameError, RoomPattern, StoredMessage,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value, json};
use strategies::*;

/// Proptest's defaults (`PROPTEST_CASES` is honoured), with failures
/// saved beside this file (`properties.proptest-regressions`) and replayed
/// first on the next run.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn msgpack_bytes(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

/// Decodes `bytes`, checking what every decode must satisfy whatever the
/// input: a refusal is a 400; an accepted frame decodes to itself again
/// when re-sent in either codec (decoding is idempotent).
fn decode_checked(codec: Codec, bytes: &[u8]) -> Result<ClientFrame, FrameError> {
    let out = codec.decode(bytes);
    match &out {
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        Ok(frame) => {
            let again = Value::Object(client_frame_map(frame));
            assert_eq!(Codec::Json.decode(&json_bytes(&again)).as_ref(), Ok(frame));
            assert_eq!(
                Codec::MsgPack.decode(&msgpack_bytes(&again)).as_ref(),
                Ok(frame)
            );
        }
    }
    out
}

/// Same outcome in both codecs: equal frames, or refusals with the same
/// request id and code (messages differ: they name the codec).
fn same_outcome(
    a: &Result<ClientFrame, FrameError>,
    b: &Result<ClientFrame, FrameError>,
) -> Result<(), TestCaseError> {
    match (a, b) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) => prop_assert_eq!((a.id, a.code), (b.id, b.code), "{} / {}", a, b),
        _ => prop_assert!(false, "codecs disagree: json {:?}, msgpack {:?}", a, b),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Every valid client frame, sent as the contract spells it (plus
    /// fields no frame defines), decodes to itself in both codecs.
    #[test]
    fn client_frames_round_trip_in_both_codecs(frame in client_frame(), extra in unknown_fields()) {
        let mut map = extra;
        map.extend(client_frame_map(&frame));
        let v = Value::Object(map);
        prop_assert_eq!(Codec::Json.decode(&json_bytes(&v)), Ok(frame.clone()));
        prop_assert_eq!(Codec::MsgPack.decode(&msgpack_bytes(&v)), Ok(frame));
    }

    /// Whatever a map holds, the JSON and MessagePack codecs decode it alike
    /// ("the same maps, same keys", docs/protocol.md §2).
    #[test]
    fn both_codecs_decode_any_frame_alike(v in frame_like()) {
        let from_json = decode_checked(Codec::Json, &json_bytes(&v));
        let from_msgpack = decode_checked(Codec::MsgPack, &msgpack_bytes(&v));
        same_outcome(&from_json, &from_msgpack)?;
    }

    /// Arbitrary bytes never panic: a frame or a 400.
    #[test]
    fn arbitrary_bytes_decode_or_are_refused(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode_checked(Codec::Json, &bytes);
        let _ = decode_checked(Codec::MsgPack, &bytes);
    }

    /// Every strict prefix of a valid encoding is refused, in both codecs.
    #[test]
    fn truncated_frames_are_refused(frame in client_frame(), cut in any::<prop::sample::Index>()) {
        let v = Value::Object(client_frame_map(&frame));
        for (codec, bytes) in [(Codec::Json, json_bytes(&v)), (Codec::MsgPack, msgpack_bytes(&v))] {
            let at = cut.index(bytes.len());
            let out = decode_checked(codec, &bytes[..at]);
            prop_assert!(out.is_err(), "{:?} accepted a prefix of {} bytes of {}: {:?}", codec, at, v, out);
        }
    }

    /// Edited valid encodings (bit flips, cuts, inserted markers) never panic.
    #[test]
    fn mutated_frames_decode_or_are_refused(frame in client_frame(), edits in mutations()) {
        let v = Value::Object(client_frame_map(&frame));
        let _ = decode_checked(Codec::Json, &mutate(json_bytes(&v), &edits));
        let _ = decode_checked(Codec::MsgPack, &mutate(msgpack_bytes(&v), &edits));
    }

    /// A bad name in any name field is refused with a 400 naming the field,
    /// keeping the request id, in both codecs; never accepted or truncated.
    #[test]
    fn bad_names_are_refused_in_every_field(
        frame in client_frame(),
        bad in bad_name(),
        event in any::<bool>(),
    ) {
        let mut map = client_frame_map(&frame);
        let Some(kind) = map.get("type").and_then(Value::as_str).map(str::to_owned) else {
            unreachable!()
        };
        if !map.contains_key("room") {
            return Ok(()); // auth, refresh, ping: no names
        }
        let field = if event && kind == "publish" { "event" } else { "room" };
        map.insert(field.into(), Value::from(bad.as_str()));
        let v = Value::Object(map);
        for (codec, bytes) in [(Codec::Json, json_bytes(&v)), (Codec::MsgPack, msgpack_bytes(&v))] {
            let err = codec.decode(&bytes).unwrap_err();
            prop_assert_eq!(err.code, ErrorCode::BadRequest);
            prop_assert_eq!(err.id, ClientFrame::id(&frame));
            prop_assert!(err.message.contains(&format!("{field} name")), "{}", err.message);
        }
    }

    /// `since.epoch` must be 1 to 64 bytes.
    #[test]
    fn since_epochs_outside_1_to_64_bytes_are_refused(
        room in name(),
        epoch in prop_oneof![Just(String::new()), "[a-z0-9]{65}", "[a-z0-9]{65,200}"],
        history in any::<bool>(),
    ) {
        let kind = if history { "history" } else { "subscribe" };
        let v = json!({"type": kind, "id": 7, "room": room, "since": {"offset": 1, "epoch": epoch}});
        for (codec, bytes) in [(Codec::Json, json_bytes(&v)), (Codec::MsgPack, msgpack_bytes(&v))] {
            let err = codec.decode(&bytes).unwrap_err();
            prop_assert_eq!((err.id, err.code), (Some(7), ErrorCode::BadRequest));
            prop_assert!(err.message.contains(&MAX_EPOCH_LEN.to_string()), "{}", err.message);
        }
    }

    /// The name rule is exactly `^[A-Za-z0-9_.:@\-]{1,128}$`, and names
    /// that pass are kept unchanged.
    #[test]
    fn the_name_rule_is_the_contracts_regex(s in prop_oneof![any_name(), ".{0,140}", "[a-z]{126,130}"]) {
        prop_assert_eq!(validate_name("room", &s).is_ok(), is_valid_name(&s));
        if let Ok(n) = fanout_protocol::Name::new("room", &s) {
            prop_assert_eq!(n.as_str(), s.as_str());
        }
        let from_json: Result<fanout_protocol::Name, _> = serde_json::from_value(Value::from(s.as_str()));
        prop_assert_eq!(from_json.is_ok(), is_valid_name(&s));
    }

    /// Room patterns parse by their rule and match like a reference matcher.
    #[test]
    fn room_patterns_match_like_the_reference(
        pattern in prop_oneof![4 => "[ab:*]{1,10}", 1 => ".{0,8}", 1 => "[a*]{255,258}"],
        room in "[ab:]{0,12}",
    ) {
        let ok = (1..=256).contains(&pattern.len())
            && pattern.chars().all(|c| c == '*' || c.is_ascii_alphanumeric() || "_.:@-".contains(c));
        let parsed = RoomPattern::parse(&pattern);
        prop_assert_eq!(parsed.is_ok(), ok, "{:?}", parsed);
        if let Ok(p) = parsed {
            prop_assert_eq!(p.matches(&room), reference_match(pattern.as_bytes(), room.as_bytes()));
        }
    }

    /// API bodies survive a trip through either codec unchanged.
    #[test]
    fn api_bodies_round_trip_in_both_codecs(req in publish_request(), batch in batch_request()) {
        let as_json: PublishRequest = serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        prop_assert_eq!(publish_fields(&as_json), publish_fields(&req));
        let as_mp: PublishRequest = msgpack_from_slice(&rmp_serde::to_vec_named(&req).unwrap()).unwrap();
        prop_assert_eq!(publish_fields(&as_mp), publish_fields(&req));
        let b_json: BatchRequest = serde_json::from_slice(&serde_json::to_vec(&batch).unwrap()).unwrap();
        let b_mp: BatchRequest = msgpack_from_slice(&rmp_serde::to_vec_named(&batch).unwrap()).unwrap();
        let want: Vec<_> = batch.messages.iter().map(publish_fields).collect();
        prop_assert_eq!(b_json.messages.iter().map(publish_fields).collect::<Vec<_>>(), want.clone());
        prop_assert_eq!(b_mp.messages.iter().map(publish_fields).collect::<Vec<_>>(), want);
    }

    /// API body decoders never panic on arbitrary or edited input.
    #[test]
    fn api_bodies_decode_or_are_refused(
        req in publish_request(),
        edits in mutations(),
        noise in vec(any::<u8>(), 0..256),
    ) {
        let j = serde_json::to_vec(&req).unwrap();
        let m = rmp_serde::to_vec_named(&req).unwrap();
        for bytes in [mutate(j, &edits), mutate(m, &edits), noise] {
            let _ = serde_json::from_slice::<PublishRequest>(&bytes);
            let _ = serde_json::from_slice::<BatchRequest>(&bytes);
            let _ = msgpack_from_slice::<PublishRequest>(&bytes);
            let _ = msgpack_from_slice::<BatchRequest>(&bytes);
        }
    }

    /// A `message` frame stored as JSON (history) reads back as the same
    /// message, and re-encoding it with a position gives exactly the bytes
    /// of encoding the original with that position, in both codecs.
    #[test]
    fn stored_messages_read_back_what_was_stored(
        msg in message_parts(),
        offset in edge_u64(),
        epoch in epoch(),
    ) {
        let Encoded::Text(stored) = Codec::Json.encode(&msg.frame(None)).unwrap() else { unreachable!() };
        let back: StoredMessage = serde_json::from_str(&stored).unwrap();
        prop_assert_eq!(back.scope, msg.scope);
        prop_assert_eq!(back.room.as_deref(), msg.room.as_deref());
        prop_assert_eq!(&back.event, &msg.event);
        prop_assert_eq!(&back.data, &msg.data);
        prop_assert_eq!(&back.id, &msg.id);
        prop_assert_eq!(back.ts, msg.ts);
        for codec in [Codec::Json, Codec::MsgPack] {
            let again = codec.encode(&fanout_protocol::ServerFrame::Message(back.frame(offset, &epoch))).unwrap();
            let direct = codec.encode(&msg.frame(Some((offset, &epoch)))).unwrap();
            prop_assert_eq!(again, direct);
        }
    }

    /// Stored-message decoding never panics on edited input.
    #[test]
    fn stored_messages_decode_or_are_refused(msg in message_parts(), edits in mutations()) {
        let Encoded::Text(stored) = Codec::Json.encode(&msg.frame(None)).unwrap() else { unreachable!() };
        let _ = serde_json::from_slice::<StoredMessage>(&mutate(stored.into_bytes(), &edits));
    }

    /// Server frames are the same map in both codecs.
    #[test]
    fn server_frames_are_the_same_map_in_both_codecs(msg in message_parts(), pos in proptest::option::of((edge_u64(), epoch()))) {
        let frame = msg.frame(pos.as_ref().map(|(o, e)| (*o, e.as_str())));
        let Encoded::Text(text) = Codec::Json.encode(&frame).unwrap() else { unreachable!() };
        let Encoded::Binary(bin) = Codec::MsgPack.encode(&frame).unwrap() else { unreachable!() };
        let from_json: Value = serde_json::from_str(&text).unwrap();
        let from_mp: Value = rmp_serde::from_slice(&bin).unwrap();
        prop_assert_eq!(from_json, from_mp);
    }
}

type PublishFields = (
    String,
    Option<String>,
    Option<String>,
    String,
    Value,
    Option<String>,
);

fn publish_fields(r: &PublishRequest) -> PublishFields {
    (
        r.tenant.clone(),
        r.room.clone(),
        r.user.clone(),
        r.event.clone(),
        r.data.clone(),
        r.idempotency_key.clone(),
    )
}

/// Whole-name wildcard match by dynamic programming: the definition, not
/// the fast algorithm.
fn reference_match(p: &[u8], t: &[u8]) -> bool {
    // m[i][j]: p[..i] matches t[..j].
    let mut m = vec![vec![false; t.len() + 1]; p.len() + 1];
    m[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=t.len() {
            m[i][j] = if p[i - 1] == b'*' {
                m[i - 1][j] || (j > 0 && m[i][j - 1])
            } else {
                j > 0 && p[i - 1] == t[j - 1] && m[i - 1][j - 1]
            };
        }
    }
    m[p.len()][t.len()]
}

#[test]
fn unknown_fields_are_ignored_even_with_every_value_kind() {
    // A fixed case beside the properties: extensions of every JSON kind.
    let mut m = Map::new();
    m.insert("type".into(), "ping".into());
    m.insert("x".into(), json!({"a": [1, -2, 3.5, null, true, "s"]}));
    let v = Value::Object(m);
    assert_eq!(
        Codec::MsgPack.decode(&msgpack_bytes(&v)),
        Ok(ClientFrame::Ping { id: None })
    );
    assert_eq!(
        Codec::Json.decode(&json_bytes(&v)),
        Ok(ClientFrame::Ping { id: None })
    );
}
