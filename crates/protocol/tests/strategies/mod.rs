//! Proptest strategies for the wire contract's values, shared by the
//! protocol crate's property tests and the gateway's fuzz harness
//! (`crates/gateway/tests/fuzz`, which includes this file by path).
//!
//! Valid values follow docs/protocol.md; the "bad" and "any" strategies
//! generate what a hostile or buggy peer could send.

#![allow(dead_code, unreachable_pub)]

use fanout_protocol::api::{BatchRequest, PublishRequest};
use fanout_protocol::{ClientFrame, MessageFrame, Name, Scope, ServerFrame, StreamPosition};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

/// A name the contract accepts (`^[A-Za-z0-9_.:@\-]{1,128}$`), usually short.
pub fn name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => "[a-z][a-z0-9]{0,7}",
        1 => "[A-Za-z0-9_.:@-]{1,128}",
        1 => "[a-z]{128}",
    ]
}

/// A name the contract refuses: empty, too long, or with a foreign character.
pub fn bad_name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_.:@-]{129}",
        "[A-Za-z0-9_.:@-]{129,300}",
        ("[a-z]{0,5}", "[^A-Za-z0-9_.:@-]", "[a-z]{0,5}").prop_map(|(a, b, c)| a + &b + &c),
    ]
}

/// Any string, mostly valid names.
pub fn any_name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![3 => name(), 1 => bad_name(), 1 => ".{0,20}"]
}

/// The reference name rule: the regex of docs/protocol.md §1, spelled out.
pub fn is_valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:@-".contains(c))
}

/// A finite `f64` as a JSON number.
fn float() -> impl Strategy<Value = Value> + Clone {
    any::<f64>().prop_filter_map("JSON numbers are finite", |f| {
        Number::from_f64(f).map(Value::Number)
    })
}

/// A JSON value of a few levels (every value fanout carries as `data`).
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        edge_u64().prop_map(Value::from),
        float(),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

fn valid(s: &str) -> Name {
    Name::new("name", s).expect("strategy makes valid names")
}

/// A `u64`, often one where an encoding changes (MessagePack's integer
/// widths, JSON's digit counts) or an edge (0, 1, `u64::MAX`).
pub fn edge_u64() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        2 => any::<u64>(),
        1 => 0u64..300,
        1 => prop::sample::select(vec![
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            (1 << 53) - 1,
            1 << 53,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
    ]
}

/// A stream position a client may send (`since`): epoch 1 to 64 bytes.
pub fn stream_position() -> impl Strategy<Value = StreamPosition> + Clone {
    (
        edge_u64(),
        prop_oneof!["[0-9a-z]{1,10}", "[0-9a-z]{64}", ".{1,16}"],
    )
        .prop_map(|(offset, epoch)| StreamPosition { offset, epoch })
}

/// Any valid client frame.
pub fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let id = proptest::option::of(any::<i64>());
    let since = proptest::option::of(stream_position());
    prop_oneof![
        ".{0,40}".prop_map(|token| ClientFrame::Auth { token }),
        (id.clone(), name(), any::<bool>(), since.clone()).prop_map(
            |(id, room, presence_events, since)| ClientFrame::Subscribe {
                id,
                room: valid(&room),
                presence_events,
                since,
            }
        ),
        (
            id.clone(),
            name(),
            proptest::option::of(any::<u32>()),
            since
        )
            .prop_map(|(id, room, limit, since)| ClientFrame::History {
                id,
                room: valid(&room),
                limit,
                since,
            }),
        (id.clone(), name()).prop_map(|(id, room)| ClientFrame::Unsubscribe {
            id,
            room: valid(&room)
        }),
        (id.clone(), name(), name(), json_value()).prop_map(|(id, room, event, data)| {
            ClientFrame::Publish {
                id,
                room: valid(&room),
                event: valid(&event),
                data,
            }
        }),
        (id.clone(), name()).prop_map(|(id, room)| ClientFrame::Presence {
            id,
            room: valid(&room)
        }),
        (id.clone(), ".{0,40}").prop_map(|(id, token)| ClientFrame::Refresh { id, token }),
        id.prop_map(|id| ClientFrame::Ping { id }),
    ]
}

/// The fields a client frame may carry, as the contract spells them.
pub const FRAME_FIELDS: [&str; 9] = [
    "type",
    "id",
    "room",
    "event",
    "data",
    "token",
    "presence_events",
    "since",
    "limit",
];

/// The map a client sends for `frame` (docs/protocol.md §3 and §7): the
/// encoder the server does not have, written from the contract.
pub fn client_frame_map(frame: &ClientFrame) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    let since = |s: &StreamPosition| serde_json::json!({"offset": s.offset, "epoch": s.epoch});
    let (kind, id) = match frame {
        ClientFrame::Auth { token } => {
            put("token", Value::from(token.as_str()));
            ("auth", None)
        }
        ClientFrame::Subscribe {
            id,
            room,
            presence_events,
            since: pos,
        } => {
            put("room", Value::from(room.as_str()));
            // `false` is the default: sometimes said, sometimes not.
            if *presence_events || id.is_some_and(|i| i % 2 == 0) {
                put("presence_events", Value::Bool(*presence_events));
            }
            if let Some(pos) = pos {
                put("since", since(pos));
            }
            ("subscribe", *id)
        }
        ClientFrame::History {
            id,
            room,
            limit,
            since: pos,
        } => {
            put("room", Value::from(room.as_str()));
            if let Some(limit) = limit {
                put("limit", Value::from(*limit));
            }
            if let Some(pos) = pos {
                put("since", since(pos));
            }
            ("history", *id)
        }
        ClientFrame::Unsubscribe { id, room } => {
            put("room", Value::from(room.as_str()));
            ("unsubscribe", *id)
        }
        ClientFrame::Publish {
            id,
            room,
            event,
            data,
        } => {
            put("room", Value::from(room.as_str()));
            put("event", Value::from(event.as_str()));
            // An absent `data` is null.
            if !data.is_null() {
                put("data", data.clone());
            }
            ("publish", *id)
        }
        ClientFrame::Presence { id, room } => {
            put("room", Value::from(room.as_str()));
            ("presence", *id)
        }
        ClientFrame::Refresh { id, token } => {
            put("token", Value::from(token.as_str()));
            ("refresh", *id)
        }
        ClientFrame::Ping { id } => ("ping", *id),
    };
    put("type", Value::from(kind));
    if let Some(id) = id {
        put("id", Value::from(id));
    }
    m
}

/// Fields no frame defines, which a node must ignore (extensions).
pub fn unknown_fields() -> impl Strategy<Value = Map<String, Value>> {
    btree_map("[a-z_]{1,10}", json_value(), 0..3).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !FRAME_FIELDS.contains(&k.as_str()))
            .collect()
    })
}

/// Something shaped like a client frame: every field may be absent, of the
/// right type, or any JSON value at all. Most are refused; the point is
/// that both codecs refuse (or accept) them alike.
pub fn frame_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        4 => prop::sample::select(vec![
            "auth", "subscribe", "history", "unsubscribe", "publish", "presence", "refresh", "ping",
        ])
        .prop_map(Value::from),
        1 => json_value(),
    ];
    let field = |typed: BoxedStrategy<Value>| {
        proptest::option::weighted(0.6, prop_oneof![3 => typed, 1 => json_value()])
    };
    let since = (
        proptest::option::of(any::<u64>().prop_map(Value::from)),
        proptest::option::of(prop_oneof![any_name().prop_map(Value::from), json_value()]),
    )
        .prop_map(|(offset, epoch)| {
            let mut m = Map::new();
            if let Some(o) = offset {
                m.insert("offset".into(), o);
            }
            if let Some(e) = epoch {
                m.insert("epoch".into(), e);
            }
            Value::Object(m)
        });
    (
        proptest::option::weighted(0.9, kind),
        field(any::<i64>().prop_map(Value::from).boxed()),
        field(any_name().prop_map(Value::from).boxed()),
        field(any_name().prop_map(Value::from).boxed()),
        field(json_value()),
        field(".{0,20}".prop_map(Value::from).boxed()),
        field(any::<bool>().prop_map(Value::from).boxed()),
        field(since.boxed()),
        field(any::<u32>().prop_map(Value::from).boxed()),
        unknown_fields(),
    )
        .prop_map(
            |(kind, id, room, event, data, token, pe, since, limit, extra)| {
                let mut m = extra;
                for (k, v) in FRAME_FIELDS
                    .iter()
                    .zip([kind, id, room, event, data, token, pe, since, limit])
                {
                    if let Some(v) = v {
                        m.insert((*k).to_owned(), v);
                    }
                }
                Value::Object(m)
            },
        )
}

/// A publish body (`POST /v1/publish`, one batch entry): names mostly
/// valid, sometimes not; room and user sometimes both (refused).
pub fn publish_request() -> impl Strategy<Value = PublishRequest> {
    (
        any_name(),
        proptest::option::of(any_name()),
        proptest::option::weighted(0.2, any_name()),
        any_name(),
        json_value(),
        proptest::option::weighted(0.3, any_name()),
    )
        .prop_map(
            |(tenant, room, user, event, data, idempotency_key)| PublishRequest {
                tenant,
                room,
                user,
                event,
                data,
                idempotency_key,
            },
        )
}

/// A batch body of a few entries.
pub fn batch_request() -> impl Strategy<Value = BatchRequest> {
    vec(publish_request(), 0..5).prop_map(|messages| BatchRequest { messages })
}

/// The owned parts of a `message` frame, for strategies (frames borrow).
#[derive(Debug, Clone)]
pub struct MessageParts {
    /// Room, user or tenant.
    pub scope: Scope,
    /// The room (room scope only).
    pub room: Option<String>,
    /// Event name.
    pub event: String,
    /// Payload.
    pub data: Value,
    /// Message id.
    pub id: String,
    /// Acceptance time.
    pub ts: u64,
}

impl MessageParts {
    /// The frame, with or without a position.
    pub fn frame<'a>(&'a self, pos: Option<(u64, &'a str)>) -> ServerFrame<'a> {
        ServerFrame::Message(MessageFrame {
            scope: self.scope,
            room: self.room.as_deref(),
            event: &self.event,
            data: &self.data,
            id: &self.id,
            ts: self.ts,
            offset: pos.map(|p| p.0),
            epoch: pos.map(|p| p.1),
        })
    }
}

/// A `message` frame as a node builds one (valid names, a UUID-like id).
pub fn message_parts() -> impl Strategy<Value = MessageParts> {
    (
        prop::sample::select(vec![Scope::Room, Scope::User, Scope::Tenant]),
        name(),
        name(),
        json_value(),
        "[0-9a-f-]{0,36}",
        edge_u64(),
    )
        .prop_map(|(scope, room, event, data, id, ts)| MessageParts {
            scope,
            room: (scope == Scope::Room).then_some(room),
            event,
            data,
            id,
            ts,
        })
}

/// An epoch as the nodes make them, or an unusual one (escaped when spliced).
pub fn epoch() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[0-9a-z]{1,10}", 1 => ".{1,16}"]
}

/// One edit of a valid encoding: what a bit flip, a cut, or a confused
/// peer does to a frame on the wire.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Replace the byte at (index mod len).
    Set(usize, u8),
    /// Flip one bit of the byte at (index mod len).
    Flip(usize, u8),
    /// Insert a byte before (index mod len + 1).
    Insert(usize, u8),
    /// Remove the byte at (index mod len).
    Remove(usize),
    /// Keep only the first (index mod len) bytes.
    Truncate(usize),
    /// Copy a run of the input over another place.
    Splice(usize, usize, usize),
    /// Write an "interesting" value (a MessagePack or JSON marker).
    Magic(usize, &'static [u8]),
}

/// Bytes that change the meaning of what follows them in either codec.
const MAGIC: &[&[u8]] = &[
    b"\xc0",
    b"\xc1",
    b"\xdc\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\x9f",
    b"\x8f",
    b"\xd4\x00\x00",
    b"[[[[[[[[",
    b"\"\\ud800\"",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"null",
    b"\"",
    b"\\",
    b"}",
    b",",
];

/// A random edit.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), 1usize..16)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        (any::<usize>(), prop::sample::select(MAGIC)).prop_map(|(i, m)| Mutation::Magic(i, m)),
    ]
}

/// Applies `edits` to `bytes` in order.
pub fn mutate(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::Flip(i, bit) if len > 0 => bytes[i % len] ^= 1 << bit,
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Splice(from, to, n) if len > 0 => {
                let from = from % len;
                let run: Vec<u8> = bytes[from..(from + n).min(len)].to_vec();
                let to = to % len;
                let end = (to + run.len()).min(len);
                bytes.splice(to..end, run);
            }
            Mutation::Magic(i, m) => {
                let at = i % (len + 1);
                bytes.splice(at..at, m.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

/// A list of edits; usually one or two (small changes to a valid input
/// reach the decoders' deeper paths), sometimes many.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![4 => vec(mutation(), 1..3), 1 => vec(mutation(), 3..16)]
}
