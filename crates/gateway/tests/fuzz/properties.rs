//! Properties that need the gateway: positions appended to encoded frames,
//! cross-node envelopes and the route script's append, token claims into
//! grants, and API bodies into 202 / 400 / 413.

use std::sync::Arc;

use bytes::Bytes;
use fanout_gateway::auth::AuthError;
use fanout_gateway::cluster::redis::envelope::{Envelope, Kind, VERSION};
use fanout_gateway::message::{EncodedFrame, Position};
use fanout_protocol::Codec;
use fanout_protocol::api::PublishRequest;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::node::{
    FuzzNode, HISTORY_ROOMS, MAX_BATCH_MESSAGES, MAX_HTTP_BODY_BYTES, MAX_MESSAGE_BYTES, verifier,
};
use crate::strategies::*;
use crate::targets::{self, is_valid_pattern};

thread_local! {
    /// One node per test thread (proptest runs a test's cases on its thread).
    static NODE: FuzzNode = FuzzNode::start();
}

fn envelope_strategy() -> impl Strategy<Value = Envelope> {
    (
        (
            prop_oneof![4 => Just(VERSION), 1 => any::<u8>()],
            name(),
            prop::sample::select(vec![Kind::Deliver, Kind::Disconnect, Kind::Probe]),
            "[0-9a-f-]{0,36}",
            edge_u64(),
            any_name(),
        ),
        (
            proptest::option::of(any_name()),
            proptest::option::of(any_name()),
            any::<bool>(),
            vec(any::<u8>(), 0..64),
            vec(any::<u8>(), 0..64),
            proptest::option::of(edge_u64()),
            proptest::option::of(epoch()),
        ),
    )
        .prop_map(
            |(
                (v, origin, kind, id, ts, tenant),
                (room, user, presence_only, json, msgpack, offset, epoch),
            )| Envelope {
                v,
                origin,
                kind,
                id,
                ts,
                tenant,
                room,
                user,
                presence_only,
                json: Bytes::from(json),
                msgpack: Bytes::from(msgpack),
                offset,
                epoch,
            },
        )
}

/// What the route script (`ROUTE_ROOM`, cluster/redis/scripts.rs) does to
/// an envelope in a room with history: bump the fixmap's field count and
/// append `offset` and `epoch`, encoded as Lua's cmsgpack encodes an
/// integer and a string.
fn route_script_append(env: &[u8], offset: u64, epoch: &str) -> Vec<u8> {
    let mut out = vec![env[0] + 2];
    out.extend_from_slice(&env[1..]);
    rmp::encode::write_str(&mut out, "offset").unwrap();
    rmp::encode::write_uint(&mut out, offset).unwrap();
    rmp::encode::write_str(&mut out, "epoch").unwrap();
    rmp::encode::write_str(&mut out, epoch).unwrap();
    out
}

/// A claims object: each claim absent, well-formed (valid or not by the
/// contract), or any JSON value at all.
fn claims_like() -> impl Strategy<Value = Value> {
    let field = |typed: BoxedStrategy<Value>| {
        proptest::option::weighted(0.85, prop_oneof![6 => typed, 1 => json_value()])
    };
    let patterns = vec(room_pattern(), 0..4).prop_map(Value::from).boxed();
    (
        field(any_name().prop_map(Value::from).boxed()),
        field(any_name().prop_map(Value::from).boxed()),
        field(exp().prop_map(Value::from).boxed()),
        field(patterns.clone()),
        field(patterns),
        field(any::<bool>().prop_map(Value::from).boxed()),
    )
        .prop_map(|(sub, tenant, exp, rooms, publish, presence)| {
            let mut m = Map::new();
            for (k, v) in [
                ("sub", sub),
                ("tenant", tenant),
                ("exp", exp),
                ("rooms", rooms),
                ("publish", publish),
                ("presence", presence),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

/// Far in the future (2100), or long past.
fn exp() -> impl Strategy<Value = u64> {
    prop_oneof![9 => Just(4_102_444_800u64), 1 => 0u64..1_000_000_000]
}

/// A room pattern: valid (`*` and name characters, 1 to 256 bytes) or not.
fn room_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z:*]{1,10}",
        1 => "[a*]{256,258}",
        1 => ".{0,6}",
    ]
}

fn publish_fields_valid(req: &PublishRequest) -> (bool, bool) {
    let optional = |n: &Option<String>| n.as_deref().is_none_or(is_valid_name);
    let names = is_valid_name(&req.tenant)
        && is_valid_name(&req.event)
        && optional(&req.room)
        && optional(&req.user)
        && optional(&req.idempotency_key);
    (names, req.room.is_some() && req.user.is_some())
}

fn body(req: &impl serde::Serialize, msgpack: bool) -> (&'static str, Vec<u8>) {
    if msgpack {
        ("application/msgpack", rmp_serde::to_vec_named(req).unwrap())
    } else {
        ("application/json", serde_json::to_vec(req).unwrap())
    }
}

proptest! {
    #![proptest_config(crate::property_config())]

    /// Appending a position to an encoded `message` frame gives exactly the
    /// bytes of encoding it with the position, in both codecs, for every
    /// frame, offset and epoch (generalises the unit test in message.rs).
    #[test]
    fn a_position_appended_equals_encoding_with_it(
        msg in message_parts(),
        offset in edge_u64(),
        epoch in epoch(),
    ) {
        let plain = EncodedFrame::encode(&msg.frame(None)).unwrap();
        let pos = Position { offset, epoch: Arc::from(epoch.as_str()) };
        let spliced = plain.with_position(&pos).expect("a message frame takes a position");
        let direct = EncodedFrame::encode(&msg.frame(Some((offset, &epoch)))).unwrap();
        for codec in [Codec::Json, Codec::MsgPack] {
            prop_assert_eq!(spliced.for_codec(codec), direct.for_codec(codec));
        }
    }

    /// Envelopes decode to what was encoded.
    #[test]
    fn envelopes_round_trip(env in envelope_strategy()) {
        let bytes = env.encode().unwrap();
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    /// The whole cross-node path of a message in a room with history: the
    /// origin encodes the frame and the envelope (a fixmap with room for two
    /// more fields, as the route script requires), the route script appends
    /// the position, the receiver decodes the envelope and appends the
    /// position to the frame: every codec's bytes equal encoding the frame
    /// with its position at the origin.
    #[test]
    fn the_route_scripts_append_reaches_every_node_intact(
        msg in message_parts(),
        env in envelope_strategy(),
        offset in 1u64..(1 << 53),
        epoch in epoch(),
    ) {
        let frame = EncodedFrame::encode(&msg.frame(None)).unwrap();
        let (json, msgpack) = frame.wire_parts();
        let origin = Envelope { json, msgpack, offset: None, epoch: None, ..env };
        let bytes = origin.encode().unwrap();
        prop_assert!((0x80..=0x8d).contains(&bytes[0]), "envelope head {:#x}", bytes[0]);
        let received = Envelope::decode(&route_script_append(&bytes, offset, &epoch)).unwrap();
        prop_assert_eq!(received.offset, Some(offset));
        prop_assert_eq!(received.epoch.as_deref(), Some(epoch.as_str()));
        prop_assert_eq!(
            &Envelope { offset: None, epoch: None, ..received.clone() },
            &origin
        );
        let pos = Position { offset, epoch: Arc::from(epoch.as_str()) };
        let delivered = EncodedFrame::from_wire(received.json, received.msgpack)
            .unwrap()
            .with_position(&pos)
            .unwrap();
        let direct = EncodedFrame::encode(&msg.frame(Some((offset, &epoch)))).unwrap();
        for codec in [Codec::Json, Codec::MsgPack] {
            prop_assert_eq!(delivered.for_codec(codec), direct.for_codec(codec));
        }
    }

    /// Envelope bytes of any kind, and edited envelopes, never panic the
    /// receive path.
    #[test]
    fn envelopes_decode_or_are_refused(
        env in envelope_strategy(),
        edits in mutations(),
        noise in vec(any::<u8>(), 0..256),
    ) {
        targets::envelope(&mutate(env.encode().unwrap().to_vec(), &edits));
        targets::envelope(&noise);
    }

    /// A correctly signed token gives a grant exactly when every claim is
    /// valid (names by the name rule, patterns by theirs), and the grant says
    /// what the claims say; otherwise a typed refusal naming a bad claim. An
    /// expired token is refused whatever else it holds.
    #[test]
    fn claims_become_grants_exactly_when_valid(
        sub in any_name(),
        tenant in any_name(),
        exp in exp(),
        rooms in vec(room_pattern(), 0..4),
        publish in vec(room_pattern(), 0..4),
        presence in proptest::option::of(any::<bool>()),
    ) {
        let mut c = json!({"sub": sub, "tenant": tenant, "exp": exp, "rooms": rooms, "publish": publish});
        if let Some(p) = presence {
            c["presence"] = Value::from(p);
        }
        let out = verifier().verify(&targets::token_around(&serde_json::to_vec(&c).unwrap()));
        let mut bad = Vec::new();
        if !is_valid_name(&tenant) { bad.push("tenant"); }
        if !is_valid_name(&sub) { bad.push("sub"); }
        if !rooms.iter().all(|p| is_valid_pattern(p)) { bad.push("rooms"); }
        if !publish.iter().all(|p| is_valid_pattern(p)) { bad.push("publish"); }
        match out {
            _ if exp < 4_000_000_000 => {
                let e = out.unwrap_err();
                prop_assert_eq!(e.label(), "expired", "{:?}", e);
            }
            Ok(grant) => {
                prop_assert!(bad.is_empty(), "granted despite bad {:?}", bad);
                prop_assert_eq!(grant.user.as_str(), sub.as_str());
                prop_assert_eq!(grant.tenant.as_str(), tenant.as_str());
                prop_assert_eq!(grant.expires_at, exp);
                prop_assert_eq!(grant.permissions.rooms.iter().map(|p| p.as_str()).collect::<Vec<_>>(), rooms);
                prop_assert_eq!(grant.permissions.publish.iter().map(|p| p.as_str()).collect::<Vec<_>>(), publish);
                prop_assert_eq!(grant.permissions.presence, presence.unwrap_or(true));
            }
            Err(AuthError::Claim { claim, .. }) => {
                prop_assert!(bad.contains(&claim), "refused {} but the bad claims are {:?}", claim, bad);
            }
            Err(e) => prop_assert!(false, "{:?} for claims {}", e, c),
        }
    }

    /// Claims of any shape (missing, mistyped) are granted or refused by a
    /// typed error, consistently with what they say.
    #[test]
    fn claims_of_any_shape_are_granted_or_refused(c in claims_like()) {
        targets::claims(&serde_json::to_vec(&c).unwrap());
    }

    /// A publish body, in either codec, is accepted (202) exactly when its
    /// names are valid and it does not name both a room and a user;
    /// otherwise 400 with the code that says why.
    #[test]
    fn publish_bodies_are_accepted_exactly_when_valid(req in publish_request(), msgpack in any::<bool>()) {
        let (names, both) = publish_fields_valid(&req);
        let small = serde_json::to_vec(&req.data).unwrap().len() < MAX_MESSAGE_BYTES / 2;
        let (ct, bytes) = body(&req, msgpack);
        let answer = NODE.with(|n| n.post("/v1/publish", ct, bytes));
        let status = answer.status.as_u16();
        match (names, both) {
            (true, false) if small => {
                prop_assert_eq!(status, 202, "{}", answer.body);
                prop_assert_eq!(answer.code(), "");
            }
            // Large data: accepted, or refused for its size (the limit counts
            // the larger of its two encodings), nothing else.
            (true, false) => prop_assert!(
                status == 202 || (status == 413 && answer.code() == "too_large"),
                "{}",
                answer.body
            ),
            (true, true) => {
                prop_assert_eq!(status, 400, "{}", answer.body);
                prop_assert_eq!(answer.code(), "bad_request");
            }
            (false, false) => {
                prop_assert_eq!(status, 400, "{}", answer.body);
                prop_assert_eq!(answer.code(), "invalid_name");
            }
            // Both wrong: either reason is a fair 400.
            (false, true) => prop_assert!(
                status == 400 && ["bad_request", "invalid_name"].contains(&answer.code()),
                "{}",
                answer.body
            ),
        }
    }

    /// The message size limit holds in both codecs and in rooms with
    /// history: `data` larger than `max_message_bytes` as JSON is 413, small
    /// data is 202. MessagePack bodies whose JSON form is the larger one
    /// (control characters: 1 byte against 6) are measured as JSON.
    #[test]
    fn oversize_messages_are_refused_with_413(
        len in 0usize..(2 * MAX_MESSAGE_BYTES),
        control in any::<bool>(),
        history in any::<bool>(),
        msgpack in any::<bool>(),
    ) {
        let ch = if control { '\u{1}' } else { 'x' };
        let data: String = std::iter::repeat_n(ch, len).collect();
        let json_len = serde_json::to_string(&data).unwrap().len();
        let room = if history { HISTORY_ROOMS.replace('*', "r") } else { "r".into() };
        let req = json!({"tenant": "t", "room": room, "event": "e", "data": data});
        let (ct, bytes) = body(&req, msgpack);
        let answer = NODE.with(|n| n.post("/v1/publish", ct, bytes));
        if json_len > MAX_MESSAGE_BYTES {
            prop_assert_eq!(answer.status.as_u16(), 413, "{}", answer.body);
            prop_assert_eq!(answer.code(), "too_large");
        } else if json_len + 512 < MAX_MESSAGE_BYTES {
            prop_assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
        }
    }

    /// Bodies over `max_http_body_bytes` are 413 before they are decoded.
    #[test]
    fn oversize_bodies_are_refused_with_413(extra in 1usize..4096, batch in any::<bool>()) {
        let bytes = vec![b' '; MAX_HTTP_BODY_BYTES + extra];
        let path = if batch { "/v1/publish/batch" } else { "/v1/publish" };
        let answer = NODE.with(|n| n.post(path, "application/json", bytes));
        prop_assert_eq!(answer.status.as_u16(), 413, "{}", answer.body);
        prop_assert_eq!(answer.code(), "too_large");
    }

    /// A batch of valid entries is accepted with one id per entry when it
    /// holds at most `max_batch_messages`, refused whole beyond; an invalid
    /// entry refuses the whole batch, naming its index, delivering nothing.
    #[test]
    fn batches_are_bounded_and_all_or_nothing(
        n in 0usize..(2 * MAX_BATCH_MESSAGES),
        bad_at in proptest::option::of(any::<prop::sample::Index>()),
        bad in bad_name(),
        msgpack in any::<bool>(),
    ) {
        let mut messages: Vec<Value> = (0..n)
            .map(|i| json!({"tenant": "t", "room": "r", "event": "e", "data": i}))
            .collect();
        let bad_at = bad_at.filter(|_| n > 0).map(|i| i.index(n));
        if let Some(i) = bad_at {
            messages[i]["room"] = Value::from(bad.as_str());
        }
        let (ct, bytes) = body(&json!({"messages": messages}), msgpack);
        let answer = NODE.with(|n| n.post("/v1/publish/batch", ct, bytes));
        if n > MAX_BATCH_MESSAGES {
            prop_assert_eq!(answer.status.as_u16(), 400, "{}", answer.body);
            prop_assert!(answer.body["error"]["message"].as_str().unwrap().contains("at most"));
        } else if let Some(i) = bad_at {
            prop_assert_eq!(answer.status.as_u16(), 400, "{}", answer.body);
            prop_assert_eq!(answer.code(), "invalid_name");
            let prefix = format!("messages[{i}]");
            prop_assert!(answer.body["error"]["message"].as_str().unwrap().starts_with(&prefix));
            prop_assert!(answer.body.get("ids").is_none(), "{}", answer.body);
        } else {
            prop_assert_eq!(answer.status.as_u16(), 202, "{}", answer.body);
            prop_assert_eq!(answer.body["ids"].as_array().unwrap().len(), n);
        }
    }
}
