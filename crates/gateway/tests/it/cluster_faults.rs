//! Cluster mode over Redis (issue 3, tests 3 and 5, and Redis down at start):
//! cluster-wide presence and stats, a SIGKILLed node expiring after its TTL
//! (on one Redis and on a Redis Cluster), and outages of one Redis while
//! clients stay connected (a Redis Cluster's failovers are in
//! `redis_cluster_failover.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use crate::backend_support::{RedisBackend, on_both_backends};
use crate::cluster_support::{
    ClusterNode, HEARTBEAT, PREFIX, ProcessNode, QUIET, READY_WAIT, any_room, expect_all_silent,
    heartbeat_for, members, recv_messages, redis_toml, request_keeping, seq_of, spawn_cluster,
    spawn_node, wait_for_cluster,
};
use crate::redis_support::{RedisServer, eventually, eventually_eq, free_port};
use crate::support::{Client, WAIT, scrape};

/// `{"nodes","connections","rooms","bus"}` of a `/v1/stats` cluster section.
fn cluster_counts(stats: &Value) -> Value {
    let c = &stats["cluster"];
    json!({"nodes": c["nodes"], "connections": c["connections"], "rooms": c["rooms"], "bus": c["bus"]})
}

/// A WebSocket `presence` query's members.
async fn ws_presence(c: &mut Client, room: &str) -> Value {
    let mut kept = Vec::new();
    let reply = request_keeping(c, json!({"type":"presence","room":room}), 77, &mut kept).await;
    assert_eq!(reply["type"], "presence", "{reply}");
    reply["members"].clone()
}

on_both_backends!(
    presence_and_stats_agree_everywhere_and_a_sigkilled_node_expires_after_its_ttl =>
    presence_and_stats_agree_everywhere_and_a_sigkilled_node_expires_after_its_ttl_on_one_redis,
    presence_and_stats_agree_everywhere_and_a_sigkilled_node_expires_after_its_ttl_on_redis_cluster
);

async fn presence_and_stats_agree_everywhere_and_a_sigkilled_node_expires_after_its_ttl(
    backend: RedisBackend,
) {
    let url = backend.url();
    let a = spawn_node(&url, PREFIX, "node-a", |_| {}).await;
    let b = spawn_node(&url, PREFIX, "node-b", |_| {}).await;
    let mut c = ProcessNode::spawn(&redis_toml(&url, PREFIX)).await;
    for n in [a.addr, b.addr, c.addr] {
        wait_for_cluster(&n, 3).await;
    }

    let mut u1 = a.member("u1", "acme", "lobby").await;
    let _u1_again = a.member("u1", "acme", "lobby").await;
    let _g1 = a.member("u1", "globex", "lobby").await;
    let mut u2 = b.member("u2", "acme", "lobby").await;
    let mut u3 = c.member("u3", "acme", "lobby").await;
    let _u3_again = c.member("u3", "acme", "lobby").await;
    let _u4 = c.member("u4", "acme", "other").await;

    let everyone = members(&[("u1", 2), ("u2", 1), ("u3", 2)]);
    let full = json!({"nodes": 3, "connections": 7, "rooms": 3, "bus": "redis"});
    let nodes = [a.addr, b.addr, c.addr];
    for (n, local) in nodes.iter().zip([3, 1, 3]) {
        eventually_eq(WAIT, "HTTP presence", &everyone, async || {
            n.presence("acme", "lobby").await
        })
        .await;
        eventually_eq(WAIT, "cluster stats", &full, async || {
            cluster_counts(&n.stats().await)
        })
        .await;
        assert_eq!(n.stats().await["node"]["connections"], local, "on {n}");
    }
    for ws in [&mut u1, &mut u2, &mut u3] {
        assert_eq!(ws_presence(ws, "lobby").await, everyone);
    }
    assert_eq!(a.presence("globex", "lobby").await, members(&[("u1", 1)]));

    // Live nodes never lapse: over several TTLs everything stays put.
    let heartbeat = heartbeat_for(&url);
    let ttl = heartbeat * 3;
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        assert_eq!(
            a.presence("acme", "lobby").await,
            everyone,
            "a live node lapsed"
        );
        assert_eq!(cluster_counts(&b.stats().await), full, "a live node lapsed");
        sleep(heartbeat / 2).await;
    }

    // C dies without any cleanup: after its TTL it is gone from A and B.
    let killed = Instant::now();
    c.kill9().await;
    let survivors = members(&[("u1", 2), ("u2", 1)]);
    let rest = json!({"nodes": 2, "connections": 4, "rooms": 2, "bus": "redis"});
    // The TTL plus a margin for the sweep and a loaded machine, counted from the kill.
    let deadline = killed + ttl + Duration::from_millis(1200);
    let left = || deadline.saturating_duration_since(Instant::now());
    for n in [&a.addr, &b.addr] {
        eventually_eq(left(), "presence after SIGKILL", &survivors, async || {
            n.presence("acme", "lobby").await
        })
        .await;
        eventually_eq(left(), "stats after SIGKILL", &rest, async || {
            cluster_counts(&n.stats().await)
        })
        .await;
        assert_eq!(
            n.presence("acme", "other").await,
            json!([]),
            "u4 swept on {n}"
        );
    }
    assert_eq!(ws_presence(&mut u1, "lobby").await, survivors);
    assert_eq!(ws_presence(&mut u2, "lobby").await, survivors);
}

/// A `/readyz` 503 body names a reason, and it is not the drain.
fn assert_says_why(body: &str) {
    let why = body
        .trim()
        .trim_start_matches("not ready")
        .trim_start_matches(':');
    assert!(
        why.trim().len() > 2,
        "/readyz 503 without a reason: {body:?}"
    );
    assert!(
        !why.contains("draining"),
        "not draining, the bus is down: {body:?}"
    );
}

/// One body per publish kind, each carrying a unique `seq`.
fn bodies(seq: u64) -> [Value; 3] {
    let data = json!({"seq": seq});
    [
        json!({"tenant":"acme","room":"lobby","event":"seq","data":data}),
        json!({"tenant":"acme","user":"u0","event":"seq","data":data}),
        json!({"tenant":"acme","event":"seq","data":data}),
    ]
}

async fn all_ready(nodes: &[impl ClusterNode], status: u16) -> bool {
    for n in nodes {
        if n.readyz().await.0 != status {
            return false;
        }
    }
    true
}

/// Redis goes away mid-stream (SIGKILL or SIGTERM) and comes back empty on the same port.
async fn redis_outage_mid_stream(hard: bool) {
    let mut redis = RedisServer::start().await;
    let nodes = spawn_cluster(&redis.url(), 3, |_| {}).await;
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        clients.push(n.member(&format!("u{i}"), "acme", "lobby").await);
    }
    let mut kept: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
    let (mut seq, mut accepted) = (0u64, BTreeSet::new());
    let room = |seq| bodies(seq)[0].clone();
    for _ in 0..20 {
        nodes[0].publish_ok(room(seq)).await;
        accepted.insert(seq);
        seq += 1;
    }
    // Let Redis flush these to every subscriber first: a SIGKILL between its
    // reply to the publisher and its pushes would lose them inside Redis.
    for (c, kept) in clients.iter_mut().zip(kept.iter_mut()) {
        kept.extend(recv_messages(c, 20, WAIT).await);
        assert_eq!(kept.len(), 20, "conn {} before the outage", c.conn_id);
    }

    if hard {
        redis.kill().await
    } else {
        redis.stop().await
    }
    // Keep publishing until every node says it is not ready: 202 or 503 only.
    let deadline = Instant::now() + WAIT;
    while !all_ready(&nodes, 503).await {
        let (status, body) = nodes[0].publish(room(seq)).await;
        match status {
            202 => {
                accepted.insert(seq);
            }
            503 => {}
            other => panic!("publish during the outage answered {other}: {body}"),
        }
        seq += 1;
        assert!(Instant::now() < deadline, "readiness did not turn false");
        sleep(Duration::from_millis(20)).await;
    }
    // While every node says it is not ready, every publish is refused and never delivered.
    let mut refused = BTreeSet::new();
    for n in &nodes {
        let (status, why) = n.readyz().await;
        assert_eq!(status, 503, "{why}");
        assert_says_why(&why);
        for body in bodies(seq) {
            let (status, reply) = n.publish(body).await;
            assert_eq!(status, 503, "publish during the outage: {reply}");
            let code = reply["error"]["code"].as_str().unwrap_or_default();
            assert!(!code.is_empty(), "error body: {reply}");
            refused.insert(seq);
            seq += 1;
        }
    }
    let frame = json!({"type":"publish","room":"lobby","event":"seq","data":{"seq":seq}});
    let reply = request_keeping(&mut clients[1], frame, 5, &mut kept[1]).await;
    assert_eq!(
        (&reply["type"], &reply["code"]),
        (&json!("error"), &json!(503)),
        "{reply}"
    );
    refused.insert(seq);
    seq += 1;
    for (c, kept) in clients.iter_mut().zip(kept.iter_mut()) {
        let pong = request_keeping(c, json!({"type":"ping"}), 6, kept).await;
        assert_eq!(pong["type"], "pong", "clients stay connected: {pong}");
    }

    redis.restart().await;
    let ready = eventually(READY_WAIT, async || all_ready(&nodes, 200).await).await;
    assert!(ready, "nodes did not become ready after Redis came back");
    let after = seq;
    for _ in 0..20 {
        nodes[0].publish_ok(room(seq)).await;
        accepted.insert(seq);
        seq += 1;
    }
    for n in &nodes[1..] {
        n.publish_ok(bodies(seq)[2].clone()).await;
        accepted.insert(seq);
        seq += 1;
    }

    for (i, (c, mut got)) in clients.iter_mut().zip(kept).enumerate() {
        let want = accepted.len().saturating_sub(got.len());
        got.extend(recv_messages(c, want, WAIT).await);
        let seqs: Vec<u64> = got.iter().map(seq_of).collect();
        let from_a: Vec<u64> = seqs.iter().copied().filter(|s| *s < after + 20).collect();
        assert!(
            from_a.windows(2).all(|w| w[0] < w[1]),
            "u{i}: duplicate or reorder: {seqs:?}"
        );
        let set: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(set.len(), seqs.len(), "u{i}: duplicates: {seqs:?}");
        let missing: Vec<_> = accepted.difference(&set).collect();
        assert!(
            missing.is_empty(),
            "u{i} lost accepted (202) messages {missing:?}"
        );
        let leaked: Vec<_> = refused.intersection(&set).collect();
        assert!(
            leaked.is_empty(),
            "u{i} got refused (503) messages {leaked:?}"
        );
    }
    let mut all: Vec<&mut Client> = clients.iter_mut().collect();
    expect_all_silent(&mut all, QUIET).await;

    // Redis came back empty: every node re-registered its members, users and counts.
    let everyone = members(&[("u0", 1), ("u1", 1), ("u2", 1)]);
    let counts = json!({"nodes": 3, "connections": 3, "rooms": 1, "bus": "redis"});
    for n in &nodes {
        eventually_eq(WAIT, "presence after recovery", &everyone, async || {
            n.presence("acme", "lobby").await
        })
        .await;
        eventually_eq(WAIT, "stats after recovery", &counts, async || {
            cluster_counts(&n.stats().await)
        })
        .await;
    }
    let id = nodes[2].publish_ok(bodies(seq)[1].clone()).await;
    let got = recv_messages(&mut clients[0], 1, WAIT).await;
    assert_eq!(
        got.first().map(|m| &m["id"]),
        Some(&json!(id)),
        "user send after recovery"
    );
    let mut all: Vec<&mut Client> = clients.iter_mut().collect();
    expect_all_silent(&mut all, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_stream_gives_503_keeps_clients_and_recovers_without_duplicates() {
    redis_outage_mid_stream(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_stream_gives_503_keeps_clients_and_recovers_without_duplicates() {
    redis_outage_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_while_redis_is_down_becomes_ready_when_redis_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let inproc = spawn_node(&url, PREFIX, "early-a", |_| {}).await;
    let process = ProcessNode::spawn_unready(&redis_toml(&url, PREFIX)).await;
    let nodes = [inproc.addr, process.addr];

    // Both run, answer /healthz, and stay not ready, saying why.
    for _ in 0..4 {
        for n in &nodes {
            let (status, why) = n.readyz().await;
            assert_eq!(status, 503, "{n}: {why}");
            assert_says_why(&why);
            let health = reqwest::get(n.http_url("/healthz")).await.expect("healthz");
            assert_eq!(health.status().as_u16(), 200);
        }
        sleep(HEARTBEAT).await;
    }
    let (status, reply) = inproc.publish(bodies(0)[0].clone()).await;
    assert_eq!(status, 503, "{reply}");

    let _redis = RedisServer::start_on(port).await;
    for n in &nodes {
        wait_for_cluster(n, 2).await;
    }
    let mut member = process.member("u1", "acme", "lobby").await;
    let mut other = inproc.connect(&any_room("u2", "acme")).await;
    let id = inproc.publish_ok(bodies(1)[0].clone()).await;
    let got = recv_messages(&mut member, 1, WAIT).await;
    assert_eq!(got.first().map(|m| &m["id"]), Some(&json!(id)));
    expect_all_silent(&mut [&mut member, &mut other], QUIET).await;
}

on_both_backends!(
    a_send_to_a_host_nobody_listens_for_is_counted_as_unheard =>
    a_send_to_a_host_nobody_listens_for_is_counted_as_unheard_on_one_redis,
    a_send_to_a_host_nobody_listens_for_is_counted_as_unheard_on_redis_cluster
);

/// A host the registry lists but whose subscription is missing (as while a
/// node resubscribes after a failover or a slot migration) misses the
/// message; the route script sees that its publish reached nobody and the
/// node counts it (`fanout_redis_unheard_total`), instead of the loss going
/// unnoticed.
async fn a_send_to_a_host_nobody_listens_for_is_counted_as_unheard(backend: RedisBackend) {
    let url = backend.url();
    let node = ProcessNode::spawn(&redis_toml(&url, PREFIX)).await;
    wait_for_cluster(&node, 1).await;
    let mut member = node.member("u1", "acme", "lobby").await;
    let unheard = async || scrape(&node.http_url("/metrics"), "fanout_redis_unheard_total").await;
    // Everyone listening: nothing unheard.
    node.publish_ok(json!({"tenant":"acme","room":"lobby","event":"e","data":1}))
        .await;
    assert_eq!(recv_messages(&mut member, 1, WAIT).await.len(), 1);
    assert_eq!(unheard().await, 0.0);
    // A second host in the registry that subscribed to nothing.
    let hosts = format!("{PREFIX}:{{acme/lobby}}:hosts");
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 60_000)
        .to_string();
    backend
        .command(&hosts, &["ZADD", &hosts, &until, "ghost-node"])
        .await;
    node.publish_ok(json!({"tenant":"acme","room":"lobby","event":"e","data":2}))
        .await;
    assert_eq!(recv_messages(&mut member, 1, WAIT).await.len(), 1);
    assert!(
        eventually(WAIT, async || unheard().await == 1.0).await,
        "the send to the deaf host was not counted: {}",
        unheard().await
    );
}

/// In cluster mode a connection is registered in Redis after the node
/// holds it; a message for its user arriving meanwhile must not reach it
/// before its `welcome`. A publisher streams to the user while the user
/// connects again and again: the first frame is `welcome` every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_message_reaches_a_connection_before_its_welcome() {
    let redis = RedisServer::start().await;
    let node = spawn_node(&redis.url(), PREFIX, "node-w", |_| {}).await;
    wait_for_cluster(&node.addr, 1).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let stop = stop.clone();
        let addr = node.addr;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() && n < 20_000 {
                n += 1;
                let _ = addr
                    .publish(json!({"tenant":"acme","user":"u1","event":"e","data":n}))
                    .await;
            }
        })
    };
    let spec = any_room("u1", "acme");
    for i in 0..30 {
        let (mut c, first) = node
            .addr
            .try_connect(fanout_protocol::Codec::Json, &spec)
            .await;
        match first {
            crate::support::Event::Frame(f) => {
                assert_eq!(f["type"], "welcome", "connection {i}: first frame {f}")
            }
            other => panic!("connection {i}: {other:?}"),
        }
        // Messages do flow to it (the race was possible).
        let got = c.next_event(WAIT).await;
        assert!(
            matches!(&got, Some(crate::support::Event::Frame(f)) if f["type"] == "message"),
            "connection {i} got no message: {got:?}"
        );
    }
    stop.cancel();
    publisher.await.expect("publisher");
}

/// A publish Redis does not answer in time was still sent: the 503 says the
/// message may be delivered (and that retrying with the same idempotency
/// key is safe), the node counts it, and indeed the other node's member
/// gets it once Redis answers again; the retry with the key is answered
/// with the first message's id, and nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_publish_says_it_may_be_delivered_and_a_keyed_retry_is_safe() {
    let redis = RedisServer::start().await;
    let a = ProcessNode::spawn(&redis_toml(&redis.url(), PREFIX)).await;
    let b = ProcessNode::spawn(&redis_toml(&redis.url(), PREFIX)).await;
    wait_for_cluster(&a, 2).await;
    wait_for_cluster(&b, 2).await;
    let mut member = b.member("u1", "acme", "lobby").await;
    let unknown = async || {
        scrape(
            &a.http_url("/metrics"),
            "fanout_publish_outcome_unknown_total",
        )
        .await
    };
    assert_eq!(unknown().await, 0.0);
    // Redis holds every command for longer than the node's command timeout.
    let pause_ms = (crate::cluster_support::COMMAND_TIMEOUT.as_millis() * 2).to_string();
    redis.command(&["CLIENT", "PAUSE", &pause_ms, "ALL"]).await;
    let body = json!({"tenant":"acme","room":"lobby","event":"e","data":1,"idempotency_key":"k-1"});
    let (status, reply) = a.publish(body.clone()).await;
    assert_eq!(status, 503, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("may still be delivered") && message.contains("idempotency_key"),
        "{reply}"
    );
    assert_eq!(unknown().await, 1.0);
    // Once Redis runs it, the message reaches the other node's member.
    let got = recv_messages(&mut member, 1, WAIT).await;
    assert_eq!(got.len(), 1, "the timed-out publish was not delivered");
    // The keyed retry answers the first message's id; nothing is sent twice.
    let mut retried = None;
    assert!(
        eventually(WAIT, async || {
            let (status, reply) = a.publish(body.clone()).await;
            retried = Some(reply);
            status == 202
        })
        .await,
        "the keyed retry was not accepted: {retried:?}"
    );
    assert_eq!(
        retried.as_ref().map(|r| r["id"].clone()),
        Some(got[0]["id"].clone()),
        "the retry must name the message that was delivered"
    );
    expect_all_silent(&mut [&mut member], QUIET).await;
}
