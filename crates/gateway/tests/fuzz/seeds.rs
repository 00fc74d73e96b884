//! The generated part of the corpora: valid inputs of every decoder and the
//! refusals worth keeping, written from code so that the MessagePack ones
//! are exactly what the encoders make. `crash-*` files are added by hand
//! (past crashers) and left alone here.
//!
//! Rewrite after changing this list:
//! `cargo test -p fanout-gateway --test fuzz -- --ignored write_seed_corpus`

use std::path::Path;

use bytes::Bytes;
use fanout_gateway::cluster::redis::envelope::{Envelope, Kind, VERSION};
use fanout_gateway::message::EncodedFrame;
use fanout_protocol::{MessageFrame, Scope, ServerFrame};
use serde_json::{Value, json};

use crate::targets::token_around;

/// Far in the future: 2100-01-01.
const EXP: u64 = 4_102_444_800;

fn client_frames() -> Vec<(&'static str, Value)> {
    vec![
        (
            "ok-auth",
            json!({"type":"auth","token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}),
        ),
        (
            "ok-subscribe",
            json!({"type":"subscribe","id":1,"room":"lobby","presence_events":true}),
        ),
        (
            "ok-subscribe-since",
            json!({"type":"subscribe","id":2,"room":"doc:42","since":{"offset":41,"epoch":"k3x9"}}),
        ),
        (
            "ok-history",
            json!({"type":"history","id":7,"room":"lobby","limit":100,"since":{"offset":0,"epoch":"e"}}),
        ),
        (
            "ok-unsubscribe",
            json!({"type":"unsubscribe","id":3,"room":"lobby"}),
        ),
        (
            "ok-publish",
            json!({"type":"publish","id":4,"room":"lobby","event":"chat",
            "data":{"text":"h\u{e9}llo \"q\" \\ \u{1f600}","n":[1,-2,2.5,null,true],"big":18_446_744_073_709_551_615u64,"f":1e-300}}),
        ),
        (
            "ok-publish-no-data",
            json!({"type":"publish","room":"a:b.c@d-e_f","event":"e"}),
        ),
        (
            "ok-presence",
            json!({"type":"presence","id":5,"room":"lobby"}),
        ),
        ("ok-refresh", json!({"type":"refresh","id":6,"token":"t"})),
        (
            "ok-ping",
            json!({"type":"ping","id":-9_223_372_036_854_775_808i64}),
        ),
        (
            "ok-ping-extension",
            json!({"type":"ping","x-trace":{"a":[1,{"b":null}]}}),
        ),
        (
            "ok-room-128",
            json!({"type":"subscribe","room":"r".repeat(128)}),
        ),
        (
            "err-room-129",
            json!({"type":"subscribe","id":8,"room":"r".repeat(129)}),
        ),
        (
            "err-room-bad-char",
            json!({"type":"subscribe","id":8,"room":"a/b"}),
        ),
        ("err-room-empty", json!({"type":"subscribe","room":""})),
        (
            "err-event-bad-char",
            json!({"type":"publish","room":"r","event":"a b","data":1}),
        ),
        (
            "err-no-event",
            json!({"type":"publish","room":"r","data":1}),
        ),
        ("err-no-room", json!({"type":"presence","id":1})),
        ("err-no-token", json!({"type":"auth"})),
        ("err-no-type", json!({"id":1,"room":"r"})),
        ("err-unknown-type", json!({"type":"warp","id":2})),
        (
            "err-epoch-65",
            json!({"type":"subscribe","room":"r","since":{"offset":1,"epoch":"e".repeat(65)}}),
        ),
        (
            "err-epoch-empty",
            json!({"type":"history","room":"r","since":{"offset":1,"epoch":""}}),
        ),
        ("err-id-float", json!({"type":"ping","id":1.5})),
        (
            "err-id-too-big",
            json!({"type":"ping","id":9_223_372_036_854_775_808u64}),
        ),
        (
            "err-limit-negative",
            json!({"type":"history","room":"r","limit":-1}),
        ),
        (
            "err-room-number",
            json!({"type":"subscribe","id":9,"room":7}),
        ),
        ("err-array", json!(["ping"])),
        ("err-string", json!("ping")),
    ]
}

fn publish_bodies() -> Vec<(&'static str, Value)> {
    vec![
        (
            "ok-room",
            json!({"tenant":"acme","room":"lobby","event":"chat","data":{"text":"hello","n":[1,2.5,null]}}),
        ),
        (
            "ok-user",
            json!({"tenant":"acme","user":"u42","event":"notify","data":{}}),
        ),
        ("ok-tenant", json!({"tenant":"acme","event":"maintenance"})),
        (
            "ok-history-room",
            json!({"tenant":"acme","room":"h:1","event":"e","data":"x"}),
        ),
        (
            "ok-idempotency",
            json!({"tenant":"acme","room":"lobby","event":"e","data":1,"idempotency_key":"k-1"}),
        ),
        (
            "ok-null-user",
            json!({"tenant":"acme","room":"lobby","user":null,"event":"e"}),
        ),
        (
            "err-room-and-user",
            json!({"tenant":"acme","room":"r","user":"u","event":"e"}),
        ),
        (
            "err-bad-tenant",
            json!({"tenant":"ac me","room":"r","event":"e"}),
        ),
        (
            "err-long-event",
            json!({"tenant":"acme","room":"r","event":"e".repeat(129)}),
        ),
        (
            "err-bad-idempotency-key",
            json!({"tenant":"acme","event":"e","idempotency_key":"k/1"}),
        ),
        ("err-no-event", json!({"tenant":"acme","room":"r"})),
        ("err-tenant-number", json!({"tenant":1,"event":"e"})),
        (
            "err-too-large",
            json!({"tenant":"acme","room":"r","event":"e","data":"x".repeat(5000)}),
        ),
        // The frame is 4,071 bytes: it fits 4,096, but not with the 51 bytes
        // reserved for a position in a room with history.
        (
            "ok-almost-too-large",
            json!({"tenant":"acme","room":"r:1","event":"e","data":"x".repeat(3940)}),
        ),
        (
            "err-too-large-history",
            json!({"tenant":"acme","room":"h:1","event":"e","data":"x".repeat(3940)}),
        ),
        // 1 byte each in MessagePack, 6 in JSON: too large as delivered.
        (
            "err-control-chars",
            json!({"tenant":"acme","room":"r","event":"e","data":"\u{1}".repeat(1000)}),
        ),
    ]
}

fn batch_bodies() -> Vec<(&'static str, Value)> {
    let entry = |i: usize| json!({"tenant":"acme","room":"lobby","event":"e","data":i});
    vec![
        (
            "ok-three",
            json!({"messages":[entry(1), {"tenant":"acme","user":"u1","event":"e"}, {"tenant":"acme","event":"e"}]}),
        ),
        ("ok-empty", json!({"messages":[]})),
        (
            "ok-eight",
            json!({"messages":(0..8).map(entry).collect::<Vec<_>>()}),
        ),
        (
            "err-nine",
            json!({"messages":(0..9).map(entry).collect::<Vec<_>>()}),
        ),
        (
            "err-bad-entry",
            json!({"messages":[entry(1), {"tenant":"acme","room":"a b","event":"e"}]}),
        ),
        ("err-not-array", json!({"messages":{"tenant":"acme"}})),
        ("err-no-messages", json!({})),
    ]
}

const API_PATHS: &[(&str, &str)] = &[
    ("ok-presence", "acme/rooms/lobby/presence"),
    ("ok-history", "acme/rooms/h:1/history?limit=5"),
    ("ok-history-no-limit", "acme/rooms/h:2/history"),
    (
        "err-history-gap",
        "acme/rooms/h:1/history?since=3&epoch=nope",
    ),
    ("err-no-history", "acme/rooms/lobby/history"),
    ("err-since-without-epoch", "acme/rooms/h:1/history?since=3"),
    ("err-limit-not-a-number", "acme/rooms/h:1/history?limit=ten"),
    (
        "err-since-negative",
        "acme/rooms/h:1/history?since=-1&epoch=e",
    ),
    ("err-bad-room", "acme/rooms/a%20b/presence"),
    ("err-room-not-utf8", "acme/rooms/%ff%fe/presence"),
    (
        "err-long-tenant",
        "tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt/rooms/r/presence",
    ),
    ("err-disconnect-by-get", "acme/users/u1/disconnect"),
    ("err-unknown-route", "acme/rooms"),
];

fn claims() -> Vec<(&'static str, Value)> {
    vec![
        (
            "ok-full",
            json!({"sub":"u42","tenant":"acme","exp":EXP,"rooms":["lobby","doc:*"],"publish":["lobby"],"presence":false}),
        ),
        ("ok-minimal", json!({"sub":"u1","tenant":"t1","exp":EXP})),
        (
            "ok-extra-claims",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"iat":1,"jti":"x","custom":{"a":[1]}}),
        ),
        (
            "ok-star",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"rooms":["*"],"publish":["*:*"]}),
        ),
        ("err-expired", json!({"sub":"u1","tenant":"t1","exp":1})),
        ("err-no-sub", json!({"tenant":"t1","exp":EXP})),
        ("err-no-tenant", json!({"sub":"u1","exp":EXP})),
        ("err-no-exp", json!({"sub":"u1","tenant":"t1"})),
        (
            "err-bad-tenant",
            json!({"sub":"u1","tenant":"t 1","exp":EXP}),
        ),
        (
            "err-long-sub",
            json!({"sub":"u".repeat(129),"tenant":"t1","exp":EXP}),
        ),
        (
            "err-bad-pattern",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"rooms":["a?"]}),
        ),
        (
            "err-long-pattern",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"publish":["a".repeat(257)]}),
        ),
        (
            "err-empty-pattern",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"rooms":[""]}),
        ),
        (
            "err-exp-string",
            json!({"sub":"u1","tenant":"t1","exp":"4102444800"}),
        ),
        (
            "err-rooms-string",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"rooms":"lobby"}),
        ),
        (
            "err-presence-string",
            json!({"sub":"u1","tenant":"t1","exp":EXP,"presence":"no"}),
        ),
        ("err-sub-number", json!({"sub":42,"tenant":"t1","exp":EXP})),
        ("err-array", json!([1, 2])),
    ]
}

fn tokens() -> Vec<(&'static str, String)> {
    let valid = token_around(
        serde_json::to_vec(&json!({"sub":"u1","tenant":"acme","exp":EXP,"rooms":["lobby"]}))
            .unwrap()
            .as_slice(),
    );
    let (head_payload, _sig) = valid.rsplit_once('.').unwrap();
    let (_, payload) = head_payload.split_once('.').unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    vec![
        ("ok-valid.txt", valid.clone()),
        ("err-bad-signature.txt", format!("{head_payload}.AAAA")),
        (
            "err-alg-none.txt",
            format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#)),
        ),
        (
            "err-alg-hs512.txt",
            format!("{}.{payload}.{}", b64(r#"{"alg":"HS512"}"#), "A".repeat(86)),
        ),
        (
            "err-alg-unknown.txt",
            format!("{}.{payload}.x", b64(r#"{"alg":"XX1"}"#)),
        ),
        ("err-two-parts.txt", head_payload.to_owned()),
        ("err-four-parts.txt", format!("{valid}.x")),
        ("err-not-base64.txt", "a!b.c!d.e!f".into()),
        ("err-empty.txt", String::new()),
        (
            "err-payload-not-json.txt",
            format!("{}.{}.x", b64(r#"{"alg":"HS256"}"#), b64("not json")),
        ),
    ]
}

fn message<'a>(data: &'a Value, scope: Scope, room: Option<&'a str>) -> ServerFrame<'a> {
    ServerFrame::Message(MessageFrame {
        scope,
        room,
        event: "chat",
        data,
        id: "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        ts: 1_763_800_000_000,
        offset: None,
        epoch: None,
    })
}

fn envelope(
    kind: Kind,
    frame: Option<&ServerFrame<'_>>,
    room: Option<&str>,
    user: Option<&str>,
) -> Envelope {
    let (json, msgpack) = frame
        .map(|f| EncodedFrame::encode(f).unwrap().wire_parts())
        .unwrap_or_default();
    Envelope {
        v: VERSION,
        origin: "node-a".into(),
        kind,
        id: frame
            .map(|_| "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into())
            .unwrap_or_default(),
        ts: 1_763_800_000_000,
        tenant: "acme".into(),
        room: room.map(Into::into),
        user: user.map(Into::into),
        presence_only: false,
        json,
        msgpack,
        offset: None,
        epoch: None,
    }
}

fn envelopes() -> Vec<(&'static str, Vec<u8>)> {
    let data = json!({"text":"hi","n":[1,2.5]});
    let room_msg = message(&data, Scope::Room, Some("lobby"));
    let user_msg = message(&data, Scope::User, None);
    let join = ServerFrame::Join {
        room: "lobby",
        user: "u7",
    };
    let enc = |e: Envelope| e.encode().unwrap().to_vec();
    let deliver_room = envelope(Kind::Deliver, Some(&room_msg), Some("lobby"), None);
    // As the route script leaves it in a room with history (see properties.rs).
    let mut positioned = enc(deliver_room.clone());
    positioned[0] += 2;
    rmp::encode::write_str(&mut positioned, "offset").unwrap();
    rmp::encode::write_uint(&mut positioned, 42).unwrap();
    rmp::encode::write_str(&mut positioned, "epoch").unwrap();
    rmp::encode::write_str(&mut positioned, "k3x9").unwrap();
    let mut presence = envelope(Kind::Deliver, Some(&join), Some("lobby"), None);
    presence.presence_only = true;
    presence.id = String::new();
    let not_utf8 = Envelope {
        json: Bytes::from_static(b"\xff\xfe"),
        ..deliver_room.clone()
    };
    let bad_tenant = Envelope {
        tenant: "ac me".into(),
        ..deliver_room.clone()
    };
    let mut truncated = enc(deliver_room.clone());
    truncated.truncate(truncated.len() / 2);
    vec![
        ("ok-deliver-room", enc(deliver_room.clone())),
        ("ok-deliver-room-positioned", positioned),
        (
            "ok-deliver-user",
            enc(envelope(Kind::Deliver, Some(&user_msg), None, Some("u42"))),
        ),
        (
            "ok-deliver-tenant",
            enc(envelope(Kind::Deliver, Some(&user_msg), None, None)),
        ),
        ("ok-presence-event", enc(presence)),
        (
            "ok-disconnect",
            enc(envelope(Kind::Disconnect, None, None, Some("u42"))),
        ),
        ("ok-probe", enc(envelope(Kind::Probe, None, None, None))),
        (
            "ok-other-version",
            enc(Envelope {
                v: VERSION + 1,
                ..deliver_room.clone()
            }),
        ),
        ("err-json-not-utf8", enc(not_utf8)),
        ("err-bad-tenant", enc(bad_tenant)),
        ("err-truncated", truncated),
        ("err-empty", Vec::new()),
        ("err-not-msgpack", b"{\"v\":1}".to_vec()),
    ]
}

fn stored_messages() -> Vec<(&'static str, Vec<u8>)> {
    let data = json!({"text":"hi","n":[1,2.5,null],"s":"\u{1f600}\"\\"});
    let json_of = |f: &ServerFrame<'_>| serde_json::to_vec(f).unwrap();
    vec![
        (
            "ok-room.json",
            json_of(&message(&data, Scope::Room, Some("lobby"))),
        ),
        ("ok-user.json", json_of(&message(&data, Scope::User, None))),
        (
            "ok-no-data.json",
            br#"{"type":"message","scope":"tenant","event":"e","id":"i","ts":1}"#.to_vec(),
        ),
        (
            "err-no-id.json",
            br#"{"type":"message","scope":"room","room":"r","event":"e","ts":1}"#.to_vec(),
        ),
        (
            "err-bad-scope.json",
            br#"{"type":"message","scope":"planet","event":"e","id":"i","ts":1}"#.to_vec(),
        ),
        (
            "err-ts-negative.json",
            br#"{"type":"message","scope":"room","event":"e","id":"i","ts":-1}"#.to_vec(),
        ),
        ("err-not-json.json", b"\x00".to_vec()),
    ]
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Writes the generated seeds (overwriting them; `crash-*` files are kept).
#[test]
#[ignore = "writes the corpus; run by hand after changing the seed lists"]
fn write_seed_corpus() {
    for (name, v) in client_frames() {
        write(
            "client_frame_json",
            &format!("{name}.json"),
            &serde_json::to_vec(&v).unwrap(),
        );
        write(
            "client_frame_msgpack",
            &format!("{name}.msgpack"),
            &rmp_serde::to_vec_named(&v).unwrap(),
        );
    }
    for (target, bodies) in [
        ("api_publish", publish_bodies()),
        ("api_batch", batch_bodies()),
    ] {
        for (name, v) in bodies {
            write(
                target,
                &format!("{name}.json"),
                &serde_json::to_vec(&v).unwrap(),
            );
            write(
                target,
                &format!("{name}.msgpack"),
                &rmp_serde::to_vec_named(&v).unwrap(),
            );
        }
    }
    for (name, path) in API_PATHS {
        write("api_path", &format!("{name}.txt"), path.as_bytes());
    }
    for (name, v) in claims() {
        write(
            "claims",
            &format!("{name}.json"),
            &serde_json::to_vec(&v).unwrap(),
        );
    }
    for (name, t) in tokens() {
        write("token", name, t.as_bytes());
    }
    for (name, bytes) in envelopes() {
        write("envelope", &format!("{name}.msgpack"), &bytes);
    }
    for (name, bytes) in stored_messages() {
        write("stored_message", name, &bytes);
    }
}
