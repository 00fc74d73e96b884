//! The registry stays true under faults (issue 14 items 1–3): counts that
//! cannot leak, `leave` events for the users of a node that died, and
//! targeted repair instead of purge-and-rewrite — against a real Redis.

use std::time::Duration;

use serde_json::json;
use tokio::time::{Instant, sleep};

use crate::cluster_support::{
    ClusterNode, HEARTBEAT, PREFIX, ProcessNode, QUIET, any_room, redis_toml, spawn_node,
    wait_for_cluster,
};
use crate::redis_support::{RedisServer, eventually};
use crate::support::{Event, WAIT, scrape};

/// Longest wait for a SIGKILLed node's sweep: its entries lapse after the
/// TTL (3 heartbeats) and are swept 2 TTLs later, at the next heartbeat.
const SWEEP_WAIT: Duration = Duration::from_secs(10);

/// A presence watcher of `room` on `node`.
async fn watcher(node: &impl ClusterNode, room: &str) -> crate::support::Client {
    let mut w = node.connect(&any_room("watcher", "acme")).await;
    let sub = json!({"type":"subscribe","room":room,"presence_events":true});
    assert_eq!(w.request(sub, 1).await["type"], "ack");
    w
}

/// The fields of a Redis hash as (field, value) pairs.
async fn hash(redis: &RedisServer, key: &str) -> Vec<(String, String)> {
    let flat = redis.command(&["HGETALL", key]).await;
    flat.chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_users_of_a_sigkilled_node_get_one_leave_after_its_sweep() {
    let redis = RedisServer::start().await;
    // Processes: each node's metrics are its own.
    let a = ProcessNode::spawn_as("node-a", &redis_toml(&redis.url(), PREFIX)).await;
    let mut b = ProcessNode::spawn(&redis_toml(&redis.url(), PREFIX)).await;
    wait_for_cluster(&a, 2).await;
    let mut w = watcher(&a, "lobby").await;
    // u1 only on B; u2 on B and on A.
    let _u1 = b.member("u1", "acme", "lobby").await;
    assert_eq!(
        w.recv().await,
        json!({"type":"join","room":"lobby","user":"u1"})
    );
    let _u2b = b.member("u2", "acme", "lobby").await;
    assert_eq!(
        w.recv().await,
        json!({"type":"join","room":"lobby","user":"u2"})
    );
    let _u2a = a.member("u2", "acme", "lobby").await;
    w.expect_silence(QUIET).await;

    b.kill9().await;
    // u1 had no connection left anywhere: one leave, from the sweep. u2 is
    // still on A: nothing.
    let started = Instant::now();
    match w.next_event(SWEEP_WAIT).await {
        Some(Event::Frame(f)) => {
            assert_eq!(f, json!({"type":"leave","room":"lobby","user":"u1"}))
        }
        other => panic!("no leave for the dead node's user within {SWEEP_WAIT:?}: {other:?}"),
    }
    eprintln!("leave after {:?}", started.elapsed());
    w.expect_silence(HEARTBEAT * 10).await;
    let announced = scrape(
        &a.http_url("/metrics"),
        "fanout_departures_total{cause=\"sweep\"}",
    )
    .await;
    assert_eq!(announced, 1.0, "one departure announced by the sweeper");
    let members = hash(&redis, &format!("{PREFIX}:{{acme/lobby}}:members")).await;
    let mut members: Vec<String> = members.into_iter().map(|(f, _)| f).collect();
    members.sort();
    assert_eq!(
        members,
        ["node-a|u2", "node-a|watcher"],
        "nothing of the dead node is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_of_a_node_whose_index_was_lost_never_count_and_the_audit_removes_them() {
    let redis = RedisServer::start().await;
    let limits = "[limits]\nmax_connections_per_user = 1\n";
    let toml = format!(
        "{}audit_interval = \"1s\"\n{limits}",
        redis_toml(&redis.url(), PREFIX)
    );
    // Processes: each node's metrics are its own.
    let a = ProcessNode::spawn_as("node-a", &toml).await;
    let mut b = ProcessNode::spawn(&toml).await;
    wait_for_cluster(&a, 2).await;
    let mut w = watcher(&a, "lobby").await;
    let _u1 = b.member("u1", "acme", "lobby").await;
    assert_eq!(
        w.recv().await,
        json!({"type":"join","room":"lobby","user":"u1"})
    );
    let user_key = format!("{PREFIX}:{{acme}}:user:u1");
    assert_eq!(
        hash(&redis, &user_key).await,
        vec![(b.id.clone(), "1".into())]
    );

    // B dies and its index is lost before anyone sweeps it (a failover of
    // the index's shard, an old snapshot): the sweep finds nothing to do.
    b.kill9().await;
    let index = format!("{PREFIX}:node:{}:index", b.id);
    redis.command(&["DEL", &index]).await;
    let nodes = format!("{PREFIX}:nodes");
    let swept = eventually(SWEEP_WAIT, async || {
        // A missing member reads as one empty reply.
        redis.command(&["ZSCORE", &nodes, &b.id]).await == [""]
    })
    .await;
    assert!(swept, "the dead node was never removed from the node index");
    // A few beats on, no node's view lists it as dead any more.
    sleep(HEARTBEAT * 3).await;

    // Its leftover count never counts: u1 is admitted on A at once.
    let (_u1a, first) = a
        .try_connect(fanout_protocol::Codec::Json, &any_room("u1", "acme"))
        .await;
    assert!(
        matches!(&first, Event::Frame(f) if f["type"] == "welcome"),
        "u1 refused by a dead node's leftover count: {first:?}"
    );
    // And the audit removes the leftovers, announcing the user's leave.
    let cleaned = eventually(SWEEP_WAIT, async || {
        !hash(&redis, &user_key)
            .await
            .iter()
            .any(|(n, _)| *n == b.id)
            && !hash(&redis, &format!("{PREFIX}:{{acme/lobby}}:members"))
                .await
                .iter()
                .any(|(f, _)| f.starts_with(&format!("{}|", b.id)))
            && !redis
                .command(&[
                    "ZRANGE",
                    &format!("{PREFIX}:{{acme/lobby}}:hosts"),
                    "0",
                    "-1",
                ])
                .await
                .contains(&b.id)
    })
    .await;
    assert!(cleaned, "the audit left the gone node's entries");
    assert_eq!(
        w.recv().await,
        json!({"type":"leave","room":"lobby","user":"u1"})
    );
    // The user's and the tenant's counts, the member field, the host entry.
    let removed =
        async || scrape(&a.http_url("/metrics"), "fanout_redis_audit_removed_total").await;
    assert!(
        eventually(WAIT, async || removed().await == 4.0).await,
        "the audit counted {} removals, not 4",
        removed().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_that_fails_with_noscript_is_repaired_without_a_resync() {
    let redis = RedisServer::start().await;
    // A process of its own: its metrics are its own (in-process nodes share
    // the test binary's recorder with every other test's nodes).
    let toml = format!(
        "[limits]\nmax_connections_per_user = 1\n\n{}",
        redis_toml(&redis.url(), PREFIX)
    );
    let a = ProcessNode::spawn(&toml).await;
    wait_for_cluster(&a, 1).await;
    let resyncs = async || scrape(&a.http_url("/metrics"), "fanout_resubscribes_total").await;
    let before = resyncs().await;
    let u1 = a.member("u1", "acme", "lobby").await;

    // Redis loses its script cache (a restart with persistence keeps the
    // data, never the scripts): the release and the leave fail NOSCRIPT.
    redis.command(&["SCRIPT", "FLUSH"]).await;
    drop(u1);
    // Repaired from the node's view within a few heartbeats: the count is
    // gone and u1 is admitted again; the node never stopped being ready.
    let user_key = format!("{PREFIX}:{{acme}}:user:u1");
    let mut ready = true;
    let repaired = eventually(WAIT, async || {
        ready &= a.readyz().await.0 == 200;
        hash(&redis, &user_key).await.is_empty()
    })
    .await;
    assert!(repaired, "the failed release was never repaired");
    assert!(ready, "the node turned unready for one failed script");
    let (_again, first) = a
        .try_connect(fanout_protocol::Codec::Json, &any_room("u1", "acme"))
        .await;
    assert!(
        matches!(&first, Event::Frame(f) if f["type"] == "welcome"),
        "u1 refused after the repair: {first:?}"
    );
    assert_eq!(resyncs().await, before, "a failed script resynced the node");
    assert!(
        scrape(
            &a.http_url("/metrics"),
            "fanout_redis_registry_repairs_total{outcome=\"ok\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_latency_spike_is_not_an_outage() {
    let redis = RedisServer::start().await;
    // Entries live 3 s; commands time out after 300 ms; Redis stalls 1.2 s.
    let toml = format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{PREFIX}\"\nheartbeat = \"1s\"\n\
         command_timeout = \"300ms\"\nprobe_interval = \"1s\"\n",
        redis.url()
    );
    let a = ProcessNode::spawn(&toml).await;
    let b = ProcessNode::spawn(&toml).await;
    wait_for_cluster(&a, 2).await;
    wait_for_cluster(&b, 2).await;
    let mut w = watcher(&a, "lobby").await;
    let mut stay = b.member("stay", "acme", "lobby").await;
    assert_eq!(w.recv().await["user"], "stay");
    let mut goer = b.member("goer", "acme", "lobby").await;
    assert_eq!(w.recv().await["user"], "goer");
    let resyncs =
        async |n: &ProcessNode| scrape(&n.http_url("/metrics"), "fanout_resubscribes_total").await;
    let before = (resyncs(&a).await, resyncs(&b).await);
    let mut late = b.connect(&any_room("late", "acme")).await;

    // The spike: every command waits past the timeout. Meanwhile `goer`
    // leaves (its script times out) and `late` tries to join.
    redis.command(&["CLIENT", "PAUSE", "1200", "ALL"]).await;
    let spike = Instant::now();
    let unsub = json!({"type":"unsubscribe","room":"lobby"});
    assert_eq!(goer.request(unsub, 2).await["type"], "ack");
    let sub = json!({"type":"subscribe","room":"lobby"});
    let reply = late.request(sub, 3).await;
    // Either it went through, or it was refused as unavailable (503):
    // nothing else is a fair answer to a spike.
    assert!(
        reply["type"] == "ack" || (reply["type"] == "error" && reply["code"] == 503),
        "subscribe during the spike: {reply}"
    );
    let mut ready = true;
    while spike.elapsed() < Duration::from_secs(4) {
        ready &= a.readyz().await.0 == 200 && b.readyz().await.0 == 200;
        sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "a latency spike made a node unready");
    assert_eq!(
        (resyncs(&a).await, resyncs(&b).await),
        before,
        "a latency spike made a node purge and rewrite its registry\n{}\n{}",
        a.log(),
        b.log()
    );
    // Presence is the truth again: stay, plus late if its join went through.
    let mut expected = vec![json!({"user":"stay","conns":1})];
    if reply["type"] == "ack" {
        expected.push(json!({"user":"late","conns":1}));
    }
    expected.push(json!({"user":"watcher","conns":1}));
    expected.sort_by_key(|m| m["user"].as_str().map(str::to_owned));
    let truth = eventually(WAIT, async || {
        a.presence("acme", "lobby").await == json!(expected)
    })
    .await;
    assert!(
        truth,
        "presence after the spike: {} (expected {expected:?})",
        a.presence("acme", "lobby").await
    );
    // The watcher saw goer leave once (from its leave or its repair), and
    // never `stay` leave and come back.
    let mut seen = Vec::new();
    loop {
        match w.next_event(QUIET).await {
            Some(Event::Frame(f)) => seen.push(f),
            None => break,
            Some(other) => panic!("the watcher was closed: {other:?}"),
        }
    }
    let goer_left = seen
        .iter()
        .filter(|f| f["type"] == "leave" && f["user"] == "goer")
        .count();
    assert_eq!(goer_left, 1, "events: {seen:?}");
    assert!(
        !seen.iter().any(|f| f["user"] == "stay"),
        "spurious presence events for a member that stayed: {seen:?}"
    );
    // Messages flow to every member.
    a.publish_ok(json!({"tenant":"acme","room":"lobby","event":"after","data":1}))
        .await;
    assert_eq!(stay.recv_type("message").await["event"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_closed_by_a_drain_is_admitted_at_once_on_another_node() {
    let redis = RedisServer::start().await;
    let b = spawn_node(&redis.url(), PREFIX, "node-b", |c| {
        c.limits.max_connections_per_user = 1;
    })
    .await;
    let toml = format!(
        "[limits]\nmax_connections_per_user = 1\n\n[shutdown]\nreadiness_delay = \"100ms\"\n\
         drain_window = \"300ms\"\ngrace = \"5s\"\n\n{}",
        redis_toml(&redis.url(), PREFIX)
    );
    let mut a = ProcessNode::spawn(&toml).await;
    wait_for_cluster(&b, 2).await;
    let mut u1 = a.member("u1", "acme", "lobby").await;
    let _held = a.member("u2", "acme", "lobby").await;

    // A drains: u1 is closed with 1012 and reconnects to B at once, while
    // A is still closing its other clients. Its count on A must not refuse
    // it there (the limit is one connection).
    let reconnect = async {
        assert_eq!(u1.expect_close().await.0, 1012);
        b.try_connect(fanout_protocol::Codec::Json, &any_room("u1", "acme"))
            .await
    };
    let (status, (_again, first)) = tokio::join!(a.terminate(), reconnect);
    assert!(status.success(), "the drained node exited with {status:?}");
    assert!(
        matches!(&first, Event::Frame(f) if f["type"] == "welcome"),
        "a client closed by a drain was refused on the node it reconnected to: {first:?}"
    );
}
