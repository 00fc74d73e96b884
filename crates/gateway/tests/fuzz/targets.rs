//! The fuzz targets: one per decoder, each `bytes → accepted?`, asserting
//! what must hold whatever the bytes are. A target panics only when an
//! invariant breaks (or the decoder itself panics): that is a finding.

use std::sync::Arc;

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fanout_gateway::auth::AuthError;
use fanout_gateway::cluster::redis::envelope::Envelope;
use fanout_gateway::message::{EncodedFrame, Position};
use fanout_protocol::api::{BatchRequest, PublishRequest};
use fanout_protocol::{ClientFrame, Codec, ErrorCode, Name, ServerFrame, StoredMessage};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

use crate::node::{FuzzNode, MAX_BATCH_MESSAGES, MAX_MESSAGE_BYTES, SECRET, verifier};
use crate::strategies::{client_frame_map, is_valid_name};

/// A client frame in `codec` (what the session does with every frame).
/// Refusals are 400s; an accepted frame decodes to itself again when
/// re-sent in either codec.
pub fn client_frame(codec: Codec, bytes: &[u8]) -> bool {
    match codec.decode(bytes) {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
            false
        }
        Ok(frame) => {
            let again = Value::Object(client_frame_map(&frame));
            let json = serde_json::to_vec(&again).unwrap();
            let msgpack = rmp_serde::to_vec_named(&again).unwrap();
            assert_eq!(Codec::Json.decode(&json), Ok(frame.clone()));
            assert_eq!(Codec::MsgPack.decode(&msgpack), Ok(frame.clone()));
            // Every name in it passed the rule (the type says so; check the text).
            if let ClientFrame::Publish { room, event, .. } = &frame {
                assert!(is_valid_name(room.as_str()) && is_valid_name(event.as_str()));
            }
            true
        }
    }
}

/// `client_frame(Codec::Json, …)`.
pub fn client_frame_json(bytes: &[u8]) -> bool {
    client_frame(Codec::Json, bytes)
}

/// `client_frame(Codec::MsgPack, …)`.
pub fn client_frame_msgpack(bytes: &[u8]) -> bool {
    client_frame(Codec::MsgPack, bytes)
}

/// Content type of an API body by its corpus file's extension.
pub fn content_type(file_name: &str) -> &'static str {
    if file_name.ends_with(".msgpack") {
        "application/msgpack"
    } else {
        "application/json"
    }
}

/// The body decoded as the API's type (not as a `Value`: a MessagePack
/// map key that is not UTF-8 is an unknown field the node ignores, and so
/// is a JSON number out of `f64` range in an unknown field).
fn body_as<T: serde::de::DeserializeOwned>(content_type: &str, bytes: &[u8]) -> T {
    let out = if content_type == "application/msgpack" {
        fanout_protocol::codec::msgpack_from_slice(bytes).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    };
    out.unwrap_or_else(|e| panic!("an accepted body does not decode: {e}"))
}

/// Whether a publish entry is one the node may accept: every name valid,
/// not both `room` and `user`, `data` within `max_message_bytes` as JSON.
fn entry_is_valid(e: &PublishRequest) -> bool {
    let optional = |n: &Option<String>| n.as_deref().is_none_or(is_valid_name);
    is_valid_name(&e.tenant)
        && is_valid_name(&e.event)
        && optional(&e.room)
        && optional(&e.user)
        && optional(&e.idempotency_key)
        && !(e.room.is_some() && e.user.is_some())
        && serde_json::to_vec(&e.data).unwrap().len() <= MAX_MESSAGE_BYTES
}

/// Checks an API answer that is not a success: one of the refusals a body
/// can earn, with the error body of the contract (§5).
fn assert_refusal(what: &str, answer: &crate::node::Answer) {
    let expected = [
        (StatusCode::BAD_REQUEST, "bad_request"),
        (StatusCode::BAD_REQUEST, "invalid_name"),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    ];
    assert!(
        expected.contains(&(answer.status, answer.code())),
        "{what}: unexpected answer {} {}",
        answer.status,
        answer.body
    );
    assert!(
        answer.body["error"]["message"].is_string(),
        "{}",
        answer.body
    );
}

/// `POST /v1/publish` with `bytes` as `content_type`: 202 with an id, or a
/// 400 / 413 with an error body; never a 5xx or a panic. A 202 only for an
/// entry that is valid and within `max_message_bytes`.
pub fn api_publish(node: &FuzzNode, content_type: &str, bytes: &[u8]) -> bool {
    let answer = node.post("/v1/publish", content_type, bytes.to_vec());
    if answer.status != StatusCode::ACCEPTED {
        assert_refusal("publish", &answer);
        return false;
    }
    assert!(answer.body["id"].is_string(), "{}", answer.body);
    let body: PublishRequest = body_as(content_type, bytes);
    assert!(
        entry_is_valid(&body),
        "accepted an invalid publish: {body:?}"
    );
    true
}

/// `POST /v1/publish/batch`: as [`api_publish`], and a 202 has one id per
/// entry, at most `max_batch_messages`.
pub fn api_batch(node: &FuzzNode, content_type: &str, bytes: &[u8]) -> bool {
    let answer = node.post("/v1/publish/batch", content_type, bytes.to_vec());
    if answer.status != StatusCode::ACCEPTED {
        assert_refusal("batch", &answer);
        return false;
    }
    let body: BatchRequest = body_as(content_type, bytes);
    let entries = body.messages;
    assert!(entries.len() <= MAX_BATCH_MESSAGES, "{}", entries.len());
    assert_eq!(
        answer.body["ids"].as_array().map(Vec::len),
        Some(entries.len())
    );
    for entry in &entries {
        assert!(
            entry_is_valid(entry),
            "accepted an invalid entry: {entry:?}"
        );
    }
    true
}

/// `GET /v1/tenants/<bytes>`: the path parameters and the query of the
/// presence and history routes (and whatever else the bytes make of the
/// path). Answers are the API's JSON, never a 5xx or a panic.
pub fn api_path(node: &FuzzNode, bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    // What an HTTP parser would not have let through never reaches the router.
    let Ok(uri) = format!("/v1/tenants/{text}").parse::<axum::http::Uri>() else {
        return false;
    };
    let answer = node.get(uri);
    if answer.status == StatusCode::OK {
        assert!(
            answer.body["members"].is_array() || answer.body["messages"].is_array(),
            "{}",
            answer.body
        );
        return true;
    }
    let expected = [
        (StatusCode::BAD_REQUEST, "bad_request"),
        (StatusCode::BAD_REQUEST, "invalid_name"),
        (StatusCode::NOT_FOUND, "not_found"),
        (StatusCode::NOT_FOUND, "no_history"),
        (StatusCode::CONFLICT, "history_gap"),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    assert!(
        expected.contains(&(answer.status, answer.code())),
        "GET {text}: unexpected answer {} {}",
        answer.status,
        answer.body
    );
    false
}

/// An HS256 token of the fuzz node's secret around `claims` (any bytes).
pub fn token_around(claims: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims);
    let message = format!("{header}.{payload}");
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{sig}")
}

/// Token claims (the JWT payload, any bytes) in a correctly signed token:
/// a grant that says exactly what the claims say, or a typed refusal.
pub fn claims(bytes: &[u8]) -> bool {
    let token = token_around(bytes);
    match verifier().verify(&token) {
        Err(e) => {
            assert_typed(&e);
            false
        }
        Ok(grant) => {
            let c: ClaimsView = serde_json::from_slice(bytes).expect("accepted claims decode");
            let got = |ps: &[fanout_protocol::RoomPattern]| -> Vec<String> {
                ps.iter().map(|p| p.as_str().to_owned()).collect()
            };
            assert_eq!(grant.user.as_str(), c.sub);
            assert_eq!(grant.tenant.as_str(), c.tenant);
            assert_eq!(grant.expires_at, c.exp);
            assert_eq!(got(&grant.permissions.rooms), c.rooms);
            assert_eq!(got(&grant.permissions.publish), c.publish);
            assert_eq!(grant.permissions.presence, c.presence.unwrap_or(true));
            assert!(is_valid_name(&c.sub) && is_valid_name(&c.tenant));
            assert!(
                c.rooms
                    .iter()
                    .chain(&c.publish)
                    .all(|p| is_valid_pattern(p))
            );
            true
        }
    }
}

/// The claims of docs/protocol.md §2, read independently of the node.
#[derive(Debug, serde::Deserialize)]
struct ClaimsView {
    sub: String,
    tenant: String,
    exp: u64,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    presence: Option<bool>,
}

/// The room pattern rule: `*` and name characters, 1 to 256 bytes.
pub fn is_valid_pattern(p: &str) -> bool {
    (1..=256).contains(&p.len())
        && p.chars()
            .all(|c| c == '*' || c.is_ascii_alphanumeric() || "_.:@-".contains(c))
}

/// A whole token (any bytes, as text): what `auth` and `refresh` frames
/// and the `Authorization` header carry.
pub fn token(bytes: &[u8]) -> bool {
    let token = String::from_utf8_lossy(bytes);
    match verifier().verify(&token) {
        Err(e) => {
            assert_typed(&e);
            false
        }
        Ok(grant) => {
            assert!(is_valid_name(grant.user.as_str()) && is_valid_name(grant.tenant.as_str()));
            true
        }
    }
}

fn assert_typed(e: &AuthError) {
    // The reason of close 4001: short and one line.
    let reason = e.to_string();
    assert!(!reason.is_empty());
    assert!(
        ["expired", "invalid", "claim", "no_key"].contains(&e.label()),
        "{e:?}"
    );
}

/// A cross-node envelope (MessagePack from Redis), through the receive path:
/// decode, check the names, rebuild the frame, append the position the
/// route script added. A decoded envelope encodes back to itself.
pub fn envelope(bytes: &[u8]) -> bool {
    let Ok(env) = Envelope::decode(bytes) else {
        return false;
    };
    let again = Envelope::decode(&env.encode().expect("a decoded envelope encodes"))
        .expect("a re-encoded envelope decodes");
    assert_eq!(again, env);
    // The receiver's steps (cluster/redis/receiver.rs, `deliver`).
    let names_ok = Name::new("tenant", &env.tenant).is_ok()
        && match (&env.room, &env.user) {
            (Some(room), _) => Name::new("room", room).is_ok(),
            (None, Some(user)) => Name::new("user", user).is_ok(),
            (None, None) => true,
        };
    let Ok(frame) = EncodedFrame::from_wire(env.json.clone(), env.msgpack.clone()) else {
        return false;
    };
    if let (Some(offset), Some(epoch)) = (env.offset, &env.epoch)
        && offset > 0
    {
        let pos = Position {
            offset,
            epoch: Arc::from(epoch.as_str()),
        };
        if let Some(placed) = frame.with_position(&pos) {
            check_placed(&env.json, &placed, &pos);
        }
    }
    names_ok
}

/// A frame given its position: when the original JSON was an object (with
/// fields: `{}` is no frame and the splice does not check for it), the
/// result is that object with `offset` and `epoch` added.
fn check_placed(json: &[u8], placed: &EncodedFrame, pos: &Position) {
    let text = match placed.for_codec(Codec::Json) {
        tokio_tungstenite::tungstenite::Message::Text(t) => t.as_str().to_owned(),
        other => panic!("json part is {other:?}"),
    };
    // `{}` is no frame (and gets no position that parses); every frame has fields.
    if let Ok(Value::Object(mut before)) = serde_json::from_slice::<Value>(json)
        && !before.is_empty()
    {
        let after: Value = serde_json::from_str(&text).expect("an object with a position is JSON");
        // Duplicate keys: the last wins in both, as a client would read them.
        before.insert("offset".into(), Value::from(pos.offset));
        before.insert("epoch".into(), Value::from(&*pos.epoch));
        assert_eq!(after, Value::Object(before));
    }
}

/// A message read back from history (the JSON a node stored): a message
/// that encodes, with any position, in both codecs.
pub fn stored_message(bytes: &[u8]) -> bool {
    let Ok(msg) = serde_json::from_slice::<StoredMessage>(bytes) else {
        return false;
    };
    for codec in [Codec::Json, Codec::MsgPack] {
        codec
            .encode(&ServerFrame::Message(msg.frame(1, "e")))
            .expect("a stored message encodes");
    }
    let text = serde_json::to_string(&ServerFrame::Message(msg.frame(u64::MAX, "e"))).unwrap();
    let back: StoredMessage = serde_json::from_str(&text).unwrap();
    assert_eq!(back, msg);
    true
}
