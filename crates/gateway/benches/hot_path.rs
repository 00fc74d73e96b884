//! Microbenchmarks of the data path: what one message costs at each step.
//!
//! `cargo bench -p fanout-gateway --bench hot_path` (release profile).
//! - frame encode per codec, and both at once (what `Node::prepare` does);
//! - client frame decode per codec;
//! - hub delivery to a room of N local members (lookup + one `Bytes` clone
//!   and queue push per member), per member count;
//! - cross-node envelope encode and decode.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fanout_gateway::cluster::redis::envelope::{Envelope, Kind, VERSION};
use fanout_gateway::hub::queue::{Next, SendQueue};
use fanout_gateway::hub::{ConnHandle, ConnLimits, Hub};
use fanout_gateway::message::{Audience, Broadcast, EncodedFrame, Position, Recipients};
use fanout_protocol::{Codec, MessageFrame, Name, Scope, ServerFrame};
use serde_json::json;

fn payload() -> serde_json::Value {
    json!({"text": "hello, world", "author": {"id": "u42", "name": "Ada"}, "seq": 123456, "tags": ["a", "b", "c"]})
}

fn message<'a>(data: &'a serde_json::Value) -> ServerFrame<'a> {
    ServerFrame::Message(MessageFrame {
        scope: Scope::Room,
        room: Some("lobby"),
        event: "chat",
        data,
        id: "01a20943-8b78-73c4-acc5-6c7d27a84591",
        ts: 1_763_800_000_000,
        offset: None,
        epoch: None,
    })
}

fn encode(c: &mut Criterion) {
    let data = payload();
    let frame = message(&data);
    let mut g = c.benchmark_group("encode");
    g.bench_function("json", |b| b.iter(|| Codec::Json.encode(&frame).unwrap()));
    g.bench_function("msgpack", |b| {
        b.iter(|| Codec::MsgPack.encode(&frame).unwrap())
    });
    g.bench_function("both_codecs", |b| {
        b.iter(|| EncodedFrame::encode(&frame).unwrap())
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let frame = json!({"type":"publish","id":3,"room":"lobby","event":"chat","data": payload()});
    let as_json = frame.to_string().into_bytes();
    let as_msgpack = rmp_serde::to_vec_named(&frame).unwrap();
    let mut g = c.benchmark_group("decode_client_frame");
    g.bench_function("json", |b| b.iter(|| Codec::Json.decode(&as_json).unwrap()));
    g.bench_function("msgpack", |b| {
        b.iter(|| Codec::MsgPack.decode(&as_msgpack).unwrap())
    });
    g.finish();
}

fn name(s: &str) -> Name {
    Name::new("bench", s).unwrap()
}

/// Delivery into a room of `members` local connections; only `deliver` is timed.
fn hub_deliver(c: &mut Criterion) {
    deliver_group(c, "hub_deliver_room", false);
}

/// The same into a room with history: every message carries the next offset
/// and passes the room's sequencer (members joined and went live as a
/// subscribe does), the ordered path of docs/architecture.md.
fn hub_deliver_in_order(c: &mut Criterion) {
    deliver_group(c, "hub_deliver_room_in_order", true);
}

fn deliver_group(c: &mut Criterion, group: &str, in_order: bool) {
    let data = payload();
    let frame = Arc::new(EncodedFrame::encode(&message(&data)).unwrap());
    let epoch: Arc<str> = Arc::from("bench");
    let mut g = c.benchmark_group(group);
    for members in [10usize, 100, 1_000, 10_000] {
        let hub = Hub::new();
        let mut conns = Vec::with_capacity(members);
        for i in 0..members {
            let id = hub.next_conn_id();
            let codec = if i % 4 == 0 {
                Codec::MsgPack
            } else {
                Codec::Json
            };
            let conn = Arc::new(ConnHandle::new(
                id,
                name("acme"),
                name(&format!("u{i}")),
                codec,
                SendQueue::new(1 << 20, 1 << 30),
            ));
            hub.try_insert(conn.clone(), ConnLimits::default()).unwrap();
            if in_order {
                hub.join_pending(&conn, &name("lobby"), false);
                hub.go_live(&conn, &name("lobby"), &epoch, 0);
            } else {
                hub.join(&conn, &name("lobby"), false);
            }
            conns.push(conn);
        }
        let msg = |offset: u64| Broadcast {
            tenant: name("acme"),
            audience: Audience::Room(name("lobby")),
            recipients: Recipients::Everyone,
            exclude: None,
            frame: frame.clone(),
            accepted_at: Instant::now(),
            ts: 0,
            id: Arc::from("m"),
            position: in_order.then(|| Position {
                offset,
                epoch: epoch.clone(),
            }),
        };
        let mut offset = 0;
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    offset += 1;
                    let m = msg(offset);
                    let start = Instant::now();
                    hub.deliver(&m);
                    total += start.elapsed();
                    for c in &conns {
                        while let Next::Frame(_) = c.queue.pop() {}
                    }
                }
                total
            })
        });
    }
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let data = payload();
    let (json, msgpack) = EncodedFrame::encode(&message(&data)).unwrap().wire_parts();
    let env = Envelope {
        v: VERSION,
        origin: "fanout-0-a1b2c3".into(),
        kind: Kind::Deliver,
        id: "01a20943-8b78-73c4-acc5-6c7d27a84591".into(),
        ts: 1_763_800_000_000,
        tenant: "acme".into(),
        room: Some("lobby".into()),
        user: None,
        presence_only: false,
        json,
        msgpack,
        offset: None,
        epoch: None,
    };
    let bytes: Bytes = env.encode().unwrap();
    let mut g = c.benchmark_group("envelope");
    g.bench_function("encode", |b| b.iter(|| env.encode().unwrap()));
    g.bench_function("decode", |b| b.iter(|| Envelope::decode(&bytes).unwrap()));
    g.bench_function("decode_to_frame", |b| {
        b.iter(|| {
            let e = Envelope::decode(&bytes).unwrap();
            EncodedFrame::from_wire(e.json, e.msgpack).unwrap()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    encode,
    decode,
    hub_deliver,
    hub_deliver_in_order,
    envelope
);
criterion_main!(benches);
