//! History and recovery (docs/protocol.md §7) and idempotent publish (§8),
//! on the embedded bus, over a real Redis and over a Redis Cluster: offsets
//! and epochs, recovery after a reconnect (to the same node and to another),
//! replay racing live messages, the `history` frame and endpoint,
//! idempotency keys.

use std::time::Duration;

use fanout_gateway::Config;
use fanout_gateway::config::HistoryRule;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backend_support::{RedisBackend, on_both_backends};
use crate::cluster_support::{ClusterNode, any_room, recv_messages, spawn_cluster};
use crate::redis_support::RedisServer;
use crate::support::{Client, Event, TestServer, WAIT};

/// Rooms `chat:*` keep `size` messages for 5 minutes.
fn with_history(size: usize) -> impl Fn(&mut Config) {
    move |c: &mut Config| {
        c.history = vec![HistoryRule {
            tenant: "*".into(),
            rooms: "chat:*".into(),
            size,
            ttl: Duration::from_secs(300),
        }];
    }
}

fn offset(m: &Value) -> u64 {
    m["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {m}"))
}

fn epoch(v: &Value) -> String {
    v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {v}"))
        .to_owned()
}

async fn publish_seq(node: &impl ClusterNode, room: &str, seq: u64) -> Value {
    let (status, reply) = node
        .publish(json!({"tenant":"acme","room":room,"event":"n","data":{"seq":seq}}))
        .await;
    assert_eq!(status, 202, "{reply}");
    reply
}

/// Subscribes (with `since` if given) and returns the ack; messages that
/// arrive before it would be a protocol violation and fail the test.
async fn subscribe(c: &mut Client, room: &str, since: Option<(u64, &str)>) -> Value {
    let mut frame = json!({"type":"subscribe","id":1,"room":room});
    if let Some((offset, epoch)) = since {
        frame["since"] = json!({"offset": offset, "epoch": epoch});
    }
    c.send(frame).await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "ack", "the ack comes first: {ack}");
    assert_eq!(ack["id"], 1, "{ack}");
    ack
}

/// Receives messages until offset `last`; asserts they are exactly
/// `first..=last`, in order, of one epoch.
async fn expect_offsets(c: &mut Client, first: u64, last: u64, epoch_is: &str) -> Vec<Value> {
    let n = (last + 1 - first) as usize;
    let got = recv_messages(c, n, WAIT * 2).await;
    let offsets: Vec<u64> = got.iter().map(offset).collect();
    let want: Vec<u64> = (first..=last).collect();
    assert_eq!(offsets, want, "exactly once, in order");
    for m in &got {
        assert_eq!(epoch(m), epoch_is, "{m}");
        assert_eq!(
            m["data"]["seq"], m["offset"],
            "offset {} carries seq {}",
            m["offset"], m["data"]["seq"]
        );
    }
    got
}

// ---- the same scenarios on any node(s) ----

async fn offsets_and_acks(node: &impl ClusterNode) {
    let mut a = node.connect(&any_room("a", "acme")).await;
    let ack = subscribe(&mut a, "chat:1", None).await;
    assert_eq!(ack["offset"], 0, "{ack}");
    let e = epoch(&ack);
    for seq in 1..=3 {
        let reply = publish_seq(node, "chat:1", seq).await;
        assert_eq!(
            (reply["offset"].as_u64(), epoch(&reply)),
            (Some(seq), e.clone())
        );
    }
    expect_offsets(&mut a, 1, 3, &e).await;
    let mut b = node.connect(&any_room("b", "acme")).await;
    let ack = subscribe(&mut b, "chat:1", None).await;
    assert_eq!((ack["offset"].as_u64(), epoch(&ack)), (Some(3), e.clone()));
    // A client publish is acked with its position (its own message is not echoed).
    let reply = a
        .request(
            json!({"type":"publish","room":"chat:1","event":"n","data":{"seq":4}}),
            9,
        )
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["offset"].as_u64()),
        (Some("ack"), Some(4))
    );
    expect_offsets(&mut b, 4, 4, &e).await;
    // A room without history: no positions anywhere.
    let ack = subscribe(&mut a, "lobby", None).await;
    assert!(
        ack.get("epoch").is_none() && ack.get("offset").is_none(),
        "{ack}"
    );
    let reply = node
        .publish(json!({"tenant":"acme","room":"lobby","event":"n","data":1}))
        .await
        .1;
    assert!(reply.get("offset").is_none(), "{reply}");
    let m = a.recv_type("message").await;
    assert!(m.get("offset").is_none() && m.get("epoch").is_none(), "{m}");
}

/// A client sees 1..3, goes away, 4..8 are published, it comes back (to
/// `back`) with `since` 3: ack recovered, then 4..8, then live 9.
async fn recovery(first: &impl ClusterNode, back: &impl ClusterNode) {
    let mut c = first.connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:r", None).await);
    for seq in 1..=3 {
        publish_seq(first, "chat:r", seq).await;
    }
    expect_offsets(&mut c, 1, 3, &e).await;
    drop(c);
    for seq in 4..=8 {
        publish_seq(first, "chat:r", seq).await;
    }
    let mut c = back.connect(&any_room("u", "acme")).await;
    let ack = subscribe(&mut c, "chat:r", Some((3, &e))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!((ack["offset"].as_u64(), epoch(&ack)), (Some(8), e.clone()));
    expect_offsets(&mut c, 4, 8, &e).await;
    publish_seq(back, "chat:r", 9).await;
    expect_offsets(&mut c, 9, 9, &e).await;
    c.expect_silence(Duration::from_millis(200)).await;
}

/// Messages keep coming while clients recover: each recovering client gets
/// every offset after its `since` exactly once, in order.
async fn replay_races_live(
    publish_to: &[&(impl ClusterNode + Sync)],
    recover_on: &[&impl ClusterNode],
) {
    const N: u64 = 300;
    let room = "chat:race";
    let mut watcher = recover_on[0].connect(&any_room("w", "acme")).await;
    let e = epoch(&subscribe(&mut watcher, room, None).await);
    let addrs: Vec<_> = publish_to.iter().map(|n| n.addr()).collect();
    let publisher = tokio::spawn(async move {
        for seq in 1..=N {
            let node = addrs[(seq as usize) % addrs.len()];
            let (status, reply) = node
                .publish(json!({"tenant":"acme","room":room,"event":"n","data":{"seq":seq}}))
                .await;
            assert_eq!(status, 202, "{reply}");
            // Offsets follow the order of the publish calls here (one at a time).
            assert_eq!(reply["offset"], seq, "{reply}");
        }
    });
    // Clients that recover at different points of the stream.
    let mut recovering = Vec::new();
    for (i, node) in recover_on.iter().cycle().take(4).enumerate() {
        let mut c = node.connect(&any_room(&format!("r{i}"), "acme")).await;
        subscribe(&mut c, room, None).await;
        let seen = recv_messages(&mut c, 20 * (i + 1), WAIT * 2).await;
        let last = seen.last().map_or(0, offset);
        drop(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut c = node.connect(&any_room(&format!("r{i}"), "acme")).await;
        let ack = subscribe(&mut c, room, Some((last, &e))).await;
        assert_eq!(ack["recovered"], true, "{ack}");
        recovering.push((c, last));
    }
    publisher.await.expect("publisher");
    for (c, last) in &mut recovering {
        expect_offsets(c, *last + 1, N, &e).await;
    }
    expect_offsets(&mut watcher, 1, N, &e).await;
}

async fn not_recovered(node: &impl ClusterNode) {
    let room = "chat:short"; // the rule keeps 5 here
    let mut c = node.connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, room, None).await);
    drop(c);
    for seq in 1..=10 {
        publish_seq(node, room, seq).await;
    }
    let mut top = 10;
    // Trimmed (the rule keeps 5), another epoch, ahead of the stream.
    for since in [(2, e.as_str()), (3, "another-epoch"), (99, e.as_str())] {
        let mut c = node.connect(&any_room("u", "acme")).await;
        let ack = subscribe(&mut c, room, Some(since)).await;
        assert_eq!(ack["recovered"], false, "since {since:?}: {ack}");
        assert_eq!(
            (ack["offset"].as_u64(), epoch(&ack)),
            (Some(top), e.clone())
        );
        c.expect_silence(Duration::from_millis(150)).await;
        top += 1;
        publish_seq(node, room, top).await;
        let m = c.recv_type("message").await;
        assert_eq!(offset(&m), top, "live from the current offset on: {m}");
    }
    let mut c = node.connect(&any_room("u", "acme")).await;
    let ack = subscribe(&mut c, "lobby", Some((1, &e))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert!(ack.get("epoch").is_none(), "{ack}");
}

async fn history_reads(node: &impl ClusterNode) {
    for seq in 1..=5 {
        publish_seq(node, "chat:h", seq).await;
    }
    let mut c = node.connect(&any_room("u", "acme")).await;
    let h = c
        .request(json!({"type":"history","room":"chat:h","limit":3}), 4)
        .await;
    assert_eq!(
        (h["type"].as_str(), h["offset"].as_u64()),
        (Some("history"), Some(5)),
        "{h}"
    );
    let e = epoch(&h);
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, vec![3, 4, 5], "the latest 3, oldest first");
    assert_eq!(h["messages"][0]["type"], "message");
    assert_eq!(h["messages"][0]["data"]["seq"], 3);
    let h = c
        .request(
            json!({"type":"history","room":"chat:h","limit":2,"since":{"offset":1,"epoch":e}}),
            5,
        )
        .await;
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, vec![2, 3], "the first 2 after 1");
    let gap = c
        .request(
            json!({"type":"history","room":"chat:h","since":{"offset":1,"epoch":"nope"}}),
            6,
        )
        .await;
    assert_eq!(
        (gap["type"].as_str(), gap["code"].as_u64()),
        (Some("error"), Some(409)),
        "{gap}"
    );
    let none = c.request(json!({"type":"history","room":"lobby"}), 7).await;
    assert_eq!(none["code"], 404, "{none}");

    let (status, body) = node
        .api_get("/v1/tenants/acme/rooms/chat:h/history?limit=2")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["room"].as_str(), body["offset"].as_u64()),
        (Some("chat:h"), Some(5))
    );
    let offsets: Vec<u64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect();
    assert_eq!(offsets, vec![4, 5]);
    let (status, body) = node
        .api_get(&format!(
            "/v1/tenants/acme/rooms/chat:h/history?since=1&epoch={e}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(4));
    let (status, body) = node
        .api_get("/v1/tenants/acme/rooms/chat:h/history?since=1&epoch=nope")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("history_gap")),
        "{body}"
    );
    let (status, body) = node.api_get("/v1/tenants/acme/rooms/lobby/history").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_history")),
        "{body}"
    );
    let (status, _) = node
        .api_get("/v1/tenants/acme/rooms/chat:h/history?since=1")
        .await;
    assert_eq!(status, 400);
}

async fn idempotent(publish_to: &[&impl ClusterNode], member_on: &impl ClusterNode) {
    let mut c = member_on.connect(&any_room("u", "acme")).await;
    subscribe(&mut c, "chat:i", None).await;
    subscribe(&mut c, "lobby", None).await;
    for room in ["chat:i", "lobby"] {
        let body = json!({"tenant":"acme","room":room,"event":"n","data":{"seq":1},"idempotency_key":format!("k-{room}")});
        let mut replies = Vec::new();
        for node in publish_to.iter().cycle().take(3) {
            let (status, reply) = node.publish(body.clone()).await;
            assert_eq!(status, 202, "{reply}");
            replies.push(reply);
        }
        assert!(
            replies.iter().all(|r| *r == replies[0]),
            "every retry answers the first publish: {replies:?}"
        );
        let got = recv_messages(&mut c, 2, Duration::from_millis(400)).await;
        assert_eq!(got.len(), 1, "delivered once: {got:?}");
        assert_eq!(got[0]["id"], replies[0]["id"]);
    }
    // Batch entries carry keys too.
    let entry = json!({"tenant":"acme","room":"chat:i","event":"n","data":{"seq":2},"idempotency_key":"batch-1"});
    let (s1, r1) = publish_to[0]
        .api_post(
            "/v1/publish/batch",
            &json!({"messages":[entry.clone(), entry]}),
        )
        .await;
    assert_eq!(s1, 202, "{r1}");
    assert_eq!(
        r1["ids"][0], r1["ids"][1],
        "the second entry repeats the first: {r1}"
    );
    assert_eq!(
        recv_messages(&mut c, 2, Duration::from_millis(400))
            .await
            .len(),
        1
    );
    // A key is a name.
    let (status, reply) = publish_to[0]
        .publish(json!({"tenant":"acme","room":"lobby","event":"n","idempotency_key":"not a name"}))
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("invalid_name")),
        "{reply}"
    );
}

// ---- embedded bus ----

/// The rules of these tests: `chat:short` keeps 5 messages, other `chat:*` rooms 100.
fn scenario_rules(c: &mut Config) {
    with_history(100)(c);
    c.history.insert(
        0,
        HistoryRule {
            tenant: "*".into(),
            rooms: "chat:short".into(),
            size: 5,
            ttl: Duration::from_secs(300),
        },
    );
}

async fn embedded() -> TestServer {
    TestServer::spawn_with(scenario_rules).await
}

#[tokio::test]
async fn embedded_offsets_epochs_and_acks() {
    offsets_and_acks(&embedded().await).await;
}

#[tokio::test]
async fn embedded_recovery_after_a_reconnect_is_exact() {
    let node = embedded().await;
    recovery(&node, &node).await;
}

#[tokio::test]
async fn embedded_replay_racing_live_messages_leaves_no_gap_and_no_duplicate() {
    let node = embedded().await;
    replay_races_live(&[&node], &[&node]).await;
}

#[tokio::test]
async fn embedded_out_of_history_or_other_epoch_is_not_recovered() {
    not_recovered(&embedded().await).await;
}

#[tokio::test]
async fn embedded_history_frame_and_endpoint() {
    history_reads(&embedded().await).await;
}

#[tokio::test]
async fn embedded_idempotent_publish() {
    let node = embedded().await;
    idempotent(&[&node], &node).await;
}

// ---- a cluster over a real Redis, and over a Redis Cluster ----

async fn cluster(backend: &RedisBackend, n: usize) -> Vec<TestServer> {
    spawn_cluster(&backend.url(), n, scenario_rules).await
}

on_both_backends!(
    cluster_offsets_epochs_and_acks =>
    cluster_offsets_epochs_and_acks_on_one_redis,
    cluster_offsets_epochs_and_acks_on_redis_cluster
);

async fn cluster_offsets_epochs_and_acks(backend: RedisBackend) {
    let nodes = cluster(&backend, 1).await;
    offsets_and_acks(&nodes[0]).await;
}

on_both_backends!(
    cluster_recovery_on_another_node_is_exact =>
    cluster_recovery_on_another_node_is_exact_on_one_redis,
    cluster_recovery_on_another_node_is_exact_on_redis_cluster
);

async fn cluster_recovery_on_another_node_is_exact(backend: RedisBackend) {
    let nodes = cluster(&backend, 2).await;
    recovery(&nodes[0], &nodes[1]).await;
}

on_both_backends!(
    cluster_replay_racing_live_messages_from_two_nodes_leaves_no_gap_and_no_duplicate =>
    cluster_replay_racing_live_messages_from_two_nodes_leaves_no_gap_and_no_duplicate_on_one_redis,
    cluster_replay_racing_live_messages_from_two_nodes_leaves_no_gap_and_no_duplicate_on_redis_cluster
);

async fn cluster_replay_racing_live_messages_from_two_nodes_leaves_no_gap_and_no_duplicate(
    backend: RedisBackend,
) {
    let nodes = cluster(&backend, 2).await;
    replay_races_live(&[&nodes[0], &nodes[1]], &[&nodes[0], &nodes[1]]).await;
}

on_both_backends!(
    cluster_out_of_history_or_other_epoch_is_not_recovered =>
    cluster_out_of_history_or_other_epoch_is_not_recovered_on_one_redis,
    cluster_out_of_history_or_other_epoch_is_not_recovered_on_redis_cluster
);

async fn cluster_out_of_history_or_other_epoch_is_not_recovered(backend: RedisBackend) {
    let nodes = cluster(&backend, 1).await;
    not_recovered(&nodes[0]).await;
}

on_both_backends!(
    cluster_history_frame_and_endpoint =>
    cluster_history_frame_and_endpoint_on_one_redis,
    cluster_history_frame_and_endpoint_on_redis_cluster
);

async fn cluster_history_frame_and_endpoint(backend: RedisBackend) {
    let nodes = cluster(&backend, 1).await;
    history_reads(&nodes[0]).await;
}

on_both_backends!(
    cluster_idempotent_publish_across_nodes =>
    cluster_idempotent_publish_across_nodes_on_one_redis,
    cluster_idempotent_publish_across_nodes_on_redis_cluster
);

async fn cluster_idempotent_publish_across_nodes(backend: RedisBackend) {
    let nodes = cluster(&backend, 2).await;
    idempotent(&[&nodes[0], &nodes[1]], &nodes[1]).await;
}

on_both_backends!(
    cluster_concurrent_publishes_from_three_nodes_get_one_order_everywhere =>
    cluster_concurrent_publishes_from_three_nodes_get_one_order_everywhere_on_one_redis,
    cluster_concurrent_publishes_from_three_nodes_get_one_order_everywhere_on_redis_cluster
);

/// Three nodes publish into one room at once: every subscriber, on every
/// node, sees offsets 1..=N contiguous and in order, and the same message
/// at each offset.
async fn cluster_concurrent_publishes_from_three_nodes_get_one_order_everywhere(
    backend: RedisBackend,
) {
    const PER_NODE: u64 = 60;
    let nodes = cluster(&backend, 3).await;
    let mut subs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.connect(&any_room(&format!("s{i}"), "acme")).await;
        subscribe(&mut c, "chat:c", None).await;
        subs.push(c);
    }
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let addr = node.addr();
        tasks.push(tokio::spawn(async move {
            for k in 0..PER_NODE {
                let (status, reply) = addr
                    .publish(json!({"tenant":"acme","room":"chat:c","event":"n","data":{"from":i,"k":k}}))
                    .await;
                assert_eq!(status, 202, "{reply}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let total = PER_NODE * 3;
    let mut orders = Vec::new();
    for c in &mut subs {
        let got = recv_messages(c, total as usize, WAIT * 3).await;
        let offsets: Vec<u64> = got.iter().map(offset).collect();
        assert_eq!(
            offsets,
            (1..=total).collect::<Vec<_>>(),
            "contiguous and in order"
        );
        orders.push(got.iter().map(|m| m["id"].clone()).collect::<Vec<_>>());
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "the same message at each offset on every node"
    );
}

/// Redis restarted empty: the room's stream starts a new epoch, and a
/// client recovering from the old one is told it did not recover. (One
/// Redis only: a Redis Cluster's counterpart, a failover, is in
/// `redis_cluster_failover.rs`.)
#[tokio::test]
async fn cluster_a_redis_restarted_empty_gives_a_new_epoch() {
    let mut redis = RedisServer::start().await;
    let nodes = spawn_cluster(&redis.url(), 1, scenario_rules).await;
    let node = &nodes[0];
    let mut c = node.connect(&any_room("u", "acme")).await;
    let old = epoch(&subscribe(&mut c, "chat:e", None).await);
    for seq in 1..=3 {
        publish_seq(node, "chat:e", seq).await;
    }
    drop(c);
    redis.restart().await;
    let ready = crate::redis_support::eventually(crate::cluster_support::READY_WAIT, async || {
        node.readyz().await.0 == 200
    })
    .await;
    assert!(ready, "node ready again: {:?}", node.readyz().await);
    let reply = publish_seq(node, "chat:e", 1).await;
    let new = epoch(&reply);
    assert_ne!(new, old, "a new epoch");
    assert_eq!(reply["offset"], 1, "offsets start again at 1");
    let mut c = node.connect(&any_room("u", "acme")).await;
    let ack = subscribe(&mut c, "chat:e", Some((3, &old))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!((ack["offset"].as_u64(), epoch(&ack)), (Some(1), new));
}

on_both_backends!(
    cluster_recovery_across_a_drain_is_exact =>
    cluster_recovery_across_a_drain_is_exact_on_one_redis,
    cluster_recovery_across_a_drain_is_exact_on_redis_cluster
);

/// A node drains (1012) while messages keep coming; its client reconnects
/// to the other node with `since` and misses nothing, sees nothing twice.
async fn cluster_recovery_across_a_drain_is_exact(backend: RedisBackend) {
    const N: u64 = 200;
    let mut nodes = cluster(&backend, 2).await;
    let survivor = nodes.pop().expect("node-1");
    let draining = nodes.pop().expect("node-0");
    let mut c = draining.connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:d", None).await);
    let to = survivor.addr();
    let publisher = tokio::spawn(async move {
        for seq in 1..=N {
            let (status, reply) = to
                .publish(json!({"tenant":"acme","room":"chat:d","event":"n","data":{"seq":seq}}))
                .await;
            assert_eq!(status, 202, "{reply}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut seen = recv_messages(&mut c, 30, WAIT).await;
    draining.shutdown.cancel();
    // Read to the close: whatever arrived before it counts as seen.
    let deadline = Instant::now() + WAIT;
    loop {
        match c
            .next_event(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Event::Frame(m)) if m["type"] == "message" => seen.push(m),
            Some(Event::Frame(_)) => {}
            Some(Event::Closed(cf)) => {
                assert_eq!(cf.map(|c| c.0), Some(1012));
                break;
            }
            None => panic!("no 1012 within {WAIT:?}"),
        }
    }
    let last = seen.last().map_or(0, offset);
    let offsets: Vec<u64> = seen.iter().map(offset).collect();
    assert_eq!(offsets, (1..=last).collect::<Vec<_>>());
    let mut c = survivor.connect(&any_room("u", "acme")).await;
    let ack = subscribe(&mut c, "chat:d", Some((last, &e))).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    publisher.await.expect("publisher");
    expect_offsets(&mut c, last + 1, N, &e).await;
}

/// Does what the route script does for a message, except publishing it:
/// the message is numbered and stored, as if pub/sub had lost it on its way
/// to every node.
async fn lose_on_pubsub(backend: &RedisBackend, room: &str, seq: u64, store: bool) {
    let prefix = crate::cluster_support::PREFIX;
    let meta = format!("{prefix}:{{acme/{room}}}:meta");
    let stream = format!("{prefix}:{{acme/{room}}}:stream");
    let top = backend
        .command(&meta, &["HINCRBY", &meta, "top", "1"])
        .await;
    assert_eq!(
        top,
        vec![seq.to_string()],
        "the lost message is offset {seq}"
    );
    if store {
        let json = json!({"type":"message","scope":"room","room":room,"event":"n","data":{"seq":seq},"id":format!("lost-{seq}"),"ts":1}).to_string();
        backend
            .command(&stream, &["XADD", &stream, &format!("{seq}-0"), "j", &json])
            .await;
    }
}

on_both_backends!(
    cluster_a_gap_left_by_pubsub_is_filled_from_history =>
    cluster_a_gap_left_by_pubsub_is_filled_from_history_on_one_redis,
    cluster_a_gap_left_by_pubsub_is_filled_from_history_on_redis_cluster
);

/// Messages pub/sub lost are read from history when the next one shows the
/// gap, and delivered in order before it: the client sees every offset once.
async fn cluster_a_gap_left_by_pubsub_is_filled_from_history(backend: RedisBackend) {
    let nodes = cluster(&backend, 2).await;
    let mut c = nodes[1].connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:g", None).await);
    for seq in 1..=2 {
        publish_seq(&nodes[0], "chat:g", seq).await;
    }
    expect_offsets(&mut c, 1, 2, &e).await;
    for seq in 3..=5 {
        lose_on_pubsub(&backend, "chat:g", seq, true).await;
    }
    publish_seq(&nodes[0], "chat:g", 6).await;
    let got = expect_offsets(&mut c, 3, 6, &e).await;
    assert_eq!(got[0]["id"], "lost-3", "filled from history: {}", got[0]);
    c.expect_silence(Duration::from_millis(300)).await;
}

on_both_backends!(
    cluster_a_gap_history_cannot_fill_closes_members_with_4010 =>
    cluster_a_gap_history_cannot_fill_closes_members_with_4010_on_one_redis,
    cluster_a_gap_history_cannot_fill_closes_members_with_4010_on_redis_cluster
);

/// A gap history no longer covers is not delivered silently: the room's
/// members on the node are closed with 4010, and recover on reconnect as
/// far as history allows.
async fn cluster_a_gap_history_cannot_fill_closes_members_with_4010(backend: RedisBackend) {
    let nodes = cluster(&backend, 2).await;
    let mut c = nodes[1].connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:lost", None).await);
    publish_seq(&nodes[0], "chat:lost", 1).await;
    expect_offsets(&mut c, 1, 1, &e).await;
    lose_on_pubsub(&backend, "chat:lost", 2, false).await;
    publish_seq(&nodes[0], "chat:lost", 3).await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 4010, "{reason}");
    let mut c = nodes[1].connect(&any_room("u", "acme")).await;
    let ack = subscribe(&mut c, "chat:lost", Some((1, &e))).await;
    assert_eq!(ack["recovered"], false, "offset 2 is lost for good: {ack}");
    assert_eq!(ack["offset"], 3, "{ack}");
}

/// Concurrent publishes into one room of the embedded bus: local delivery
/// races the numbering, and the hub puts it back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_concurrent_publishes_arrive_in_offset_order() {
    const TASKS: u64 = 4;
    const EACH: u64 = 75;
    let node = embedded().await;
    let mut c = node.connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:c", None).await);
    let addr = node.addr();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(async move {
                for k in 0..EACH {
                    let (status, reply) = addr
                        .publish(json!({"tenant":"acme","room":"chat:c","event":"n","data":{"t":t,"k":k}}))
                        .await;
                    assert_eq!(status, 202, "{reply}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
    let got = recv_messages(&mut c, (TASKS * EACH) as usize, WAIT * 2).await;
    let offsets: Vec<u64> = got.iter().map(offset).collect();
    assert_eq!(offsets, (1..=TASKS * EACH).collect::<Vec<_>>());
    assert!(got.iter().all(|m| epoch(m) == e));
}

on_both_backends!(
    cluster_a_batch_failing_part_way_answers_the_ids_it_delivered =>
    cluster_a_batch_failing_part_way_answers_the_ids_it_delivered_on_one_redis,
    cluster_a_batch_failing_part_way_answers_the_ids_it_delivered_on_redis_cluster
);

/// A batch that fails part-way says which entries were delivered: the
/// entries before the failing one, by id; nothing after it is sent.
async fn cluster_a_batch_failing_part_way_answers_the_ids_it_delivered(backend: RedisBackend) {
    let nodes = cluster(&backend, 1).await;
    let node = &nodes[0];
    let mut c = node.connect(&any_room("u", "acme")).await;
    subscribe(&mut c, "lobby", None).await;
    subscribe(&mut c, "chat:ok", None).await;
    // A key of the wrong type makes the route script of `chat:broken` fail
    // in Redis: the third entry cannot be sent.
    let meta = format!(
        "{}:{{acme/chat:broken}}:meta",
        crate::cluster_support::PREFIX
    );
    backend.command(&meta, &["SET", &meta, "not-a-hash"]).await;
    let entry =
        |room: &str, seq: u64| json!({"tenant":"acme","room":room,"event":"n","data":{"seq":seq}});
    let (status, body) = node
        .api_post(
            "/v1/publish/batch",
            &json!({"messages":[entry("lobby",1), entry("chat:ok",2), entry("chat:broken",3), entry("lobby",4)]}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("messages[2]"),
        "{body}"
    );
    let ids = body["ids"]
        .as_array()
        .expect("ids of the delivered entries");
    assert_eq!(ids.len(), 2, "{body}");
    let got = recv_messages(&mut c, 3, Duration::from_millis(500)).await;
    let seqs: Vec<u64> = got
        .iter()
        .map(|m| m["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2],
        "the first two, and nothing after the failure"
    );
    assert_eq!((&got[0]["id"], &got[1]["id"]), (&ids[0], &ids[1]));
}

/// The message size limit holds for the frame as delivered, position
/// included: a message that fits it without history but not with its
/// `offset`/`epoch` is refused in a room with history (and so can never
/// overflow a reader's queue on its own, replayed or live).
#[tokio::test]
async fn the_size_limit_counts_the_position_a_room_with_history_adds() {
    let node = TestServer::spawn_with(|c| {
        with_history(10)(c);
        c.limits.max_message_bytes = 1024;
        c.limits.send_queue_bytes = 2048;
    })
    .await;
    // A frame of about 1,000 bytes: under the limit alone, over it with a position.
    let data = "x".repeat(880);
    let body = |room: &str| json!({"tenant":"acme","room":room,"event":"n","data":data});
    let (status, reply) = node.publish(body("lobby")).await;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = node.publish(body("chat:big")).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{reply}"
    );
}

/// A replay that would not fit the connection's send queue is not sent (it
/// would close the client with 4009 on every retry): the client is told
/// `recovered:false`. A `history` answer is cut to fit, newest kept.
#[tokio::test]
async fn a_replay_or_history_too_big_for_the_queue_is_not_sent_whole() {
    let node = TestServer::spawn_with(|c| {
        with_history(100)(c);
        c.limits.max_message_bytes = 32 * 1024;
        c.limits.send_queue_bytes = 64 * 1024;
    })
    .await;
    let mut c = node.connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:big", None).await);
    drop(c);
    let data = "x".repeat(2000);
    for _ in 0..40 {
        let (status, reply) = node
            .publish(json!({"tenant":"acme","room":"chat:big","event":"n","data":data}))
            .await;
        assert_eq!(status, 202, "{reply}");
    }
    // 40 × ~2 KB = 80 KB to replay: over half of the 64 KiB queue.
    let mut c = node.connect(&any_room("u", "acme")).await;
    let ack = subscribe(&mut c, "chat:big", Some((0, &e))).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    c.expect_silence(Duration::from_millis(200)).await;
    let h = c
        .request(json!({"type":"history","room":"chat:big"}), 3)
        .await;
    assert_eq!(h["type"], "history", "answered, not closed: {h}");
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect();
    assert!(!offsets.is_empty() && offsets.len() < 40, "{offsets:?}");
    assert_eq!(*offsets.last().unwrap(), 40, "the newest are kept");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
}

on_both_backends!(
    cluster_a_huge_since_is_not_recovered_rather_than_an_error =>
    cluster_a_huge_since_is_not_recovered_rather_than_an_error_on_one_redis,
    cluster_a_huge_since_is_not_recovered_rather_than_an_error_on_redis_cluster
);

/// A `since` far ahead of any stream (or at the very end of u64) is an
/// ordinary "not recovered" / 409, not a Redis error.
async fn cluster_a_huge_since_is_not_recovered_rather_than_an_error(backend: RedisBackend) {
    let nodes = cluster(&backend, 1).await;
    let node = &nodes[0];
    let mut c = node.connect(&any_room("u", "acme")).await;
    let e = epoch(&subscribe(&mut c, "chat:far", None).await);
    publish_seq(node, "chat:far", 1).await;
    for far in [100_000_000_000_000u64, u64::MAX] {
        let mut c = node.connect(&any_room("u", "acme")).await;
        let ack = subscribe(&mut c, "chat:far", Some((far, &e))).await;
        assert_eq!(
            (ack["type"].as_str(), ack["recovered"].as_bool()),
            (Some("ack"), Some(false)),
            "{ack}"
        );
        let h = c
            .request(
                json!({"type":"history","room":"chat:far","since":{"offset":far,"epoch":e}}),
                4,
            )
            .await;
        assert_eq!(h["code"], 409, "{h}");
    }
}
