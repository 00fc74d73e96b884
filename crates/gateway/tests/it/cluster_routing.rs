//! Hybrid routing across nodes (issue 3, test 2): rooms spread over three
//! nodes deliver everything with K=1 and K=5, and numbered streams stay
//! exact (no loss, no duplicate, in order) while the rooms switch between
//! direct sends to node inboxes and their room channels. Every scenario runs
//! on one Redis and on a Redis Cluster, where the rooms live on all three
//! primaries (issue 12).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fanout_protocol::Codec;
use serde_json::json;
use tokio::time::sleep;

use crate::backend_support::{RedisBackend, on_both_backends};
use crate::cluster_support::{
    ClusterNode, PREFIX, ProcessNode, QUIET, any_room, recv_messages, redis_toml, request_keeping,
    seq_of, spawn_cluster, spawn_node, wait_for_cluster,
};
use crate::support::WAIT;

/// The rooms of these tests. On a Redis Cluster their slots belong to the
/// three primaries (`acme/lobby` 14447, `acme/room-2` 2917, `acme/room-3`
/// 6980; asserted, not assumed), so every shard's routing is exercised.
const ROOMS: [&str; 3] = ["lobby", "room-2", "room-3"];

/// The hash tags of [`ROOMS`].
fn room_tags() -> Vec<String> {
    ROOMS.iter().map(|r| format!("acme/{r}")).collect()
}

/// `(room, source)` → the `seq`s received from that source, in arrival order.
type Runs = BTreeMap<(String, String), Vec<u64>>;

fn runs(got: &[serde_json::Value]) -> Runs {
    let mut runs = Runs::new();
    for m in got {
        let room = m["room"].as_str().unwrap_or_default().to_owned();
        let src = m["data"]["src"].to_string();
        runs.entry((room, src)).or_default().push(seq_of(m));
    }
    runs
}

/// Members of [`ROOMS`] on all three nodes (two on A, one speaking
/// MessagePack); every node's API publishes a numbered run into every room
/// and one member publishes over its socket into each: everybody gets
/// everything once, each publisher's run in order.
async fn room_over_three_nodes_delivers_everything(backend: RedisBackend, k: usize) {
    const RUN: u64 = 15;
    backend.assert_on_every_primary(&room_tags()).await;
    let nodes = spawn_cluster(&backend.url(), 3, |c| {
        c.redis.as_mut().unwrap().direct_max_nodes = k;
    })
    .await;
    let mut m0 = nodes[0].connect(&any_room("u0", "acme")).await;
    let mut m1 = nodes[0]
        .connect_with(Codec::MsgPack, &any_room("u1", "acme"))
        .await;
    let mut m2 = nodes[1].connect(&any_room("u2", "acme")).await;
    let mut m3 = nodes[2].connect(&any_room("u3", "acme")).await;
    for m in [&mut m0, &mut m1, &mut m2, &mut m3] {
        for room in ROOMS {
            m.subscribe(room).await;
        }
    }

    for seq in 0..RUN {
        for room in ROOMS {
            for (src, node) in nodes.iter().enumerate() {
                let data = json!({"src": src, "seq": seq});
                node.publish_ok(json!({"tenant":"acme","room":room,"event":"e","data":data}))
                    .await;
            }
        }
    }
    let mut early = Vec::new();
    for (i, room) in ROOMS.iter().enumerate() {
        let frame = json!({"type":"publish","room":room,"event":"e","data":{"src":"ws","seq":0}});
        let ack = request_keeping(&mut m2, frame, 9 + i as i64, &mut early).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }

    let rooms = ROOMS.len();
    let total = RUN as usize * nodes.len() * rooms;
    for (name, c, want) in [
        ("m0", &mut m0, total + rooms),
        ("m1", &mut m1, total + rooms),
        ("m2", &mut m2, total),
        ("m3", &mut m3, total + rooms),
    ] {
        let mut got = if name == "m2" {
            early.clone()
        } else {
            Vec::new()
        };
        got.extend(recv_messages(c, want - got.len(), WAIT).await);
        // Anything beyond the expected count is a duplicate or a stray: keep it for the check.
        got.extend(recv_messages(c, usize::MAX, QUIET).await);
        let mut runs = runs(&got);
        let on = backend.name();
        for room in ROOMS {
            for src in 0..nodes.len() {
                let seqs = runs
                    .remove(&(room.to_owned(), src.to_string()))
                    .unwrap_or_default();
                assert_eq!(
                    seqs,
                    (0..RUN).collect::<Vec<_>>(),
                    "{on}, K={k}: {name} in {room} from node {src}"
                );
            }
            let ws = runs
                .remove(&(room.to_owned(), "\"ws\"".to_owned()))
                .unwrap_or_default();
            let want_ws = if name == "m2" { vec![] } else { vec![0] };
            assert_eq!(
                ws, want_ws,
                "{on}, K={k}: {name} in {room}: client publish (never echoed)"
            );
        }
        assert!(runs.is_empty(), "{on}, K={k}: {name}: unexpected {runs:?}");
    }
}

on_both_backends!(
    |b| room_over_three_nodes_delivers_everything(b, 1) =>
    room_over_three_nodes_with_k1_delivers_everything_once_on_one_redis,
    room_over_three_nodes_with_k1_delivers_everything_once_on_redis_cluster
);

on_both_backends!(
    |b| room_over_three_nodes_delivers_everything(b, 5) =>
    room_over_three_nodes_with_k5_delivers_everything_once_on_one_redis,
    room_over_three_nodes_with_k5_delivers_everything_once_on_redis_cluster
);

/// A numbered stream into each of [`ROOMS`], published through node B — a
/// real process, so its `/metrics` are its own — while churners join and
/// leave every room on `churn` nodes, so each room's node count crosses K
/// both ways. Stayers (on `stay` nodes) get every message of every room
/// once, in order; churners never get one twice or out of order; B's route
/// counters prove both routes carried part of the stream.
async fn stream_across_route_switches(
    backend: RedisBackend,
    k: usize,
    stay: &[usize],
    churn: &[usize],
) {
    const N: u64 = 300;
    backend.assert_on_every_primary(&room_tags()).await;
    let url = backend.url();
    let k_of = |c: &mut fanout_gateway::Config| c.redis.as_mut().unwrap().direct_max_nodes = k;
    let a = spawn_node(&url, PREFIX, "node-a", k_of).await;
    let b_toml = format!("{}direct_max_nodes = {k}\n", redis_toml(&url, PREFIX));
    let b = ProcessNode::spawn(&b_toml).await;
    let c = spawn_node(&url, PREFIX, "node-c", k_of).await;
    let nodes = [a.addr, b.addr, c.addr];
    for n in &nodes {
        wait_for_cluster(n, 3).await;
    }
    let mut stayers = Vec::new();
    for (i, &n) in stay.iter().enumerate() {
        let codec = if i % 2 == 0 {
            Codec::Json
        } else {
            Codec::MsgPack
        };
        let mut c = nodes[n]
            .connect_with(codec, &any_room(&format!("stay{i}"), "acme"))
            .await;
        for room in ROOMS {
            c.subscribe(room).await;
        }
        stayers.push(c);
    }

    let on = backend.name();
    let routes_before = routed(&b).await;
    let done = AtomicBool::new(false);
    let publisher = async {
        for seq in 0..N {
            for room in ROOMS {
                let body = json!({"tenant":"acme","room":room,"event":"seq","data":{"seq":seq}});
                b.publish_ok(body).await;
            }
            sleep(Duration::from_millis(5)).await;
        }
        done.store(true, Ordering::SeqCst);
    };
    let churner = async {
        let (mut cycles, mut received) = (0usize, 0usize);
        while !done.load(Ordering::SeqCst) {
            let node = nodes[churn[cycles % churn.len()]];
            let mut c = node
                .connect(&any_room(&format!("churn{cycles}"), "acme"))
                .await;
            let mut got = Vec::new();
            for (i, room) in ROOMS.iter().enumerate() {
                let sub = json!({"type":"subscribe","room":room});
                let ack = request_keeping(&mut c, sub, 1 + i as i64, &mut got).await;
                assert_eq!(ack["type"], "ack", "{ack}");
            }
            sleep(Duration::from_millis(60)).await;
            if cycles % 2 == 0 {
                for (i, room) in ROOMS.iter().enumerate() {
                    let unsub = json!({"type":"unsubscribe","room":room});
                    let ack = request_keeping(&mut c, unsub, 11 + i as i64, &mut got).await;
                    assert_eq!(ack["type"], "ack", "{ack}");
                }
            } else {
                got.extend(recv_messages(&mut c, usize::MAX, Duration::from_millis(20)).await);
            }
            c.ws.close(None).await.expect("close churner");
            for room in ROOMS {
                let seqs: Vec<u64> = got
                    .iter()
                    .filter(|m| m["room"] == room)
                    .map(seq_of)
                    .collect();
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "{on}, K={k}: churner {cycles} on {node} in {room}: duplicate or out of order: {seqs:?}"
                );
            }
            received += got.len();
            cycles += 1;
        }
        (cycles, received)
    };
    let (_, (cycles, received)) = tokio::join!(publisher, churner);
    assert!(
        cycles >= 6,
        "{on}, K={k}: only {cycles} membership changes during the stream"
    );
    assert!(
        received > 0,
        "{on}, K={k}: no churner received anything while subscribed"
    );
    let routes_after = routed(&b).await;
    for (route, before, after) in [
        ("direct", routes_before.0, routes_after.0),
        ("room_channel", routes_before.1, routes_after.1),
    ] {
        assert!(
            after > before,
            "{on}, K={k}: no message went {route} during the stream\n{}",
            b.log()
        );
    }

    let want = N as usize * ROOMS.len();
    for (i, c) in stayers.iter_mut().enumerate() {
        let mut got = recv_messages(c, want, Duration::from_secs(10)).await;
        got.extend(recv_messages(c, usize::MAX, QUIET).await);
        for room in ROOMS {
            let seqs: Vec<u64> = got
                .iter()
                .filter(|m| m["room"] == room)
                .map(seq_of)
                .collect();
            if let Some(at) =
                (0..seqs.len().max(N as usize)).find(|&j| seqs.get(j) != Some(&(j as u64)))
            {
                let near = &seqs[at.saturating_sub(3)..(at + 3).min(seqs.len())];
                panic!(
                    "{on}, K={k} stayer {i} on node {} in {room}: {} messages for {N}; the stream breaks at index {at}: …{near:?}…",
                    stay[i],
                    seqs.len()
                );
            }
        }
        assert_eq!(got.len(), want, "{on}, K={k} stayer {i}: strays");
    }
}

/// `fanout_routed_messages_total` for routes `direct` and `room_channel` on one node.
async fn routed(node: &ProcessNode) -> (f64, f64) {
    let text = reqwest::get(node.http_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |route: &str| {
        let label = format!("route=\"{route}\"");
        text.lines()
            .filter(|l| l.starts_with("fanout_routed_messages_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("direct"), value("room_channel"))
}

// Publisher B. Each room on {A} (direct: B sends to A's inbox) ↔ {A,B} / {A,C} (channel).
on_both_backends!(
    |b| stream_across_route_switches(b, 1, &[0, 0], &[1, 2]) =>
    k1_stream_stays_exact_while_the_room_switches_between_direct_and_channel_on_one_redis,
    k1_stream_stays_exact_while_the_room_switches_between_direct_and_channel_on_redis_cluster
);

// Publisher B. Each room on {A,C} (direct, both remote to B) ↔ {A,B,C} (channel).
on_both_backends!(
    |b| stream_across_route_switches(b, 2, &[0, 2, 2], &[1, 0]) =>
    k2_stream_stays_exact_while_the_room_switches_between_direct_and_channel_on_one_redis,
    k2_stream_stays_exact_while_the_room_switches_between_direct_and_channel_on_redis_cluster
);
