//! Cluster mode over Redis (issue 3, tests 1, 4 and 6): several nodes on one
//! real `redis-server`, or on a Redis Cluster (issue 12), behave as one
//! system. Every scenario runs on both (`backend_support.rs`). Hybrid
//! routing (test 2) is in `cluster_routing.rs`; faults and expiry (tests 3,
//! 5) in `cluster_faults.rs`.

use std::time::Duration;

use fanout_protocol::Codec;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use crate::backend_support::{RedisBackend, on_both_backends};
use crate::cluster_support::{
    ClusterNode, QUIET, any_room, expect_all_silent, members, recv_messages, spawn_cluster,
    spawn_node, wait_for_cluster,
};
use crate::redis_support::eventually_eq;
use crate::support::{Client, Event, WAIT};

/// Each client receives exactly one message, with `id`; returns them.
async fn each_once(clients: &mut [&mut Client], id: &str) -> Vec<Value> {
    let mut got = Vec::new();
    for c in clients.iter_mut() {
        let m = recv_messages(c, 1, WAIT).await;
        assert_eq!(m.len(), 1, "conn {} did not get message {id}", c.conn_id);
        assert_eq!(m[0]["id"], id, "conn {}: {}", c.conn_id, m[0]);
        got.push(m[0].clone());
    }
    expect_all_silent(clients, QUIET).await;
    got
}

on_both_backends!(
    room_user_and_tenant_sends_through_any_node_reach_each_connection_once =>
    room_user_and_tenant_sends_through_any_node_reach_each_connection_once_on_one_redis,
    room_user_and_tenant_sends_through_any_node_reach_each_connection_once_on_redis_cluster
);

async fn room_user_and_tenant_sends_through_any_node_reach_each_connection_once(
    backend: RedisBackend,
) {
    let nodes = spawn_cluster(&backend.url(), 3, |_| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Room: the member is on A, the backend calls C.
    let mut alice = a.member("alice", "acme", "lobby").await;
    let mut idle_b = b.connect(&any_room("bob", "acme")).await;
    let mut globex = b.member("alice", "globex", "lobby").await;
    let body = json!({"tenant":"acme","room":"lobby","event":"chat","data":{"text":"hi"}});
    let id = c.publish_ok(body).await;
    let m = &each_once(&mut [&mut alice], &id).await[0];
    assert_eq!(
        (&m["scope"], &m["room"], &m["event"], &m["data"]),
        (
            &json!("room"),
            &json!("lobby"),
            &json!("chat"),
            &json!({"text":"hi"})
        )
    );
    expect_all_silent(&mut [&mut idle_b, &mut globex], QUIET).await;

    // User: u42 on A and B, u7 on A and C; the backend calls C.
    let mut u42a = a.connect(&any_room("u42", "acme")).await;
    let mut u42b = b.connect(&any_room("u42", "acme")).await;
    let mut u7a = a.connect(&any_room("u7", "acme")).await;
    let mut u7c = c.connect(&any_room("u7", "acme")).await;
    let mut u42g = a.connect(&any_room("u42", "globex")).await;
    let id = c
        .publish_ok(json!({"tenant":"acme","user":"u42","event":"notify","data":{"n":1}}))
        .await;
    for m in each_once(&mut [&mut u42a, &mut u42b], &id).await {
        assert_eq!(
            (&m["scope"], &m["event"]),
            (&json!("user"), &json!("notify"))
        );
    }
    expect_all_silent(
        &mut [
            &mut u7a,
            &mut u7c,
            &mut alice,
            &mut idle_b,
            &mut u42g,
            &mut globex,
        ],
        QUIET,
    )
    .await;

    // Tenant: every acme connection on every node, once; globex none.
    let id = c
        .publish_ok(json!({"tenant":"acme","event":"maintenance","data":{}}))
        .await;
    let acme = &mut [
        &mut alice,
        &mut idle_b,
        &mut u42a,
        &mut u42b,
        &mut u7a,
        &mut u7c,
    ];
    for m in each_once(acme, &id).await {
        assert_eq!(m["scope"], "tenant", "{m}");
    }
    expect_all_silent(&mut [&mut globex, &mut u42g], QUIET).await;
}

on_both_backends!(
    disconnect_user_through_any_node_closes_the_user_on_every_node =>
    disconnect_user_through_any_node_closes_the_user_on_every_node_on_one_redis,
    disconnect_user_through_any_node_closes_the_user_on_every_node_on_redis_cluster
);

async fn disconnect_user_through_any_node_closes_the_user_on_every_node(backend: RedisBackend) {
    let nodes = spawn_cluster(&backend.url(), 3, |_| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut u1a = a.connect(&any_room("u1", "acme")).await;
    let mut u1b = b.connect(&any_room("u1", "acme")).await;
    let mut u2a = a.connect(&any_room("u2", "acme")).await;
    let mut u1g = b.connect(&any_room("u1", "globex")).await;
    let (status, body) = c
        .api_post("/v1/tenants/acme/users/u1/disconnect", &json!({}))
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    assert_eq!(u1a.expect_close().await.0, 4001);
    assert_eq!(u1b.expect_close().await.0, 4001);
    u2a.assert_alive().await;
    u1g.assert_alive().await;
}

on_both_backends!(
    join_and_leave_events_are_cluster_wide =>
    join_and_leave_events_are_cluster_wide_on_one_redis,
    join_and_leave_events_are_cluster_wide_on_redis_cluster
);

async fn join_and_leave_events_are_cluster_wide(backend: RedisBackend) {
    let nodes = spawn_cluster(&backend.url(), 3, |_| {}).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut watcher = a.connect(&any_room("w", "acme")).await;
    let sub = json!({"type":"subscribe","room":"lobby","presence_events":true});
    assert_eq!(watcher.request(sub, 1).await["type"], "ack");
    let join = json!({"type":"join","room":"lobby","user":"u7"});
    let leave = json!({"type":"leave","room":"lobby","user":"u7"});

    // u7 joins on B: one join. A second connection on C: no second join.
    let mut on_b = b.member("u7", "acme", "lobby").await;
    assert_eq!(watcher.recv().await, join);
    let mut on_c = c.member("u7", "acme", "lobby").await;
    watcher.expect_silence(QUIET).await;
    // Leaving on B while still on C: no leave; leaving on C too: one leave.
    let unsub = json!({"type":"unsubscribe","room":"lobby"});
    assert_eq!(on_b.request(unsub.clone(), 2).await["type"], "ack");
    watcher.expect_silence(QUIET).await;
    assert_eq!(on_c.request(unsub, 2).await["type"], "ack");
    assert_eq!(watcher.recv().await, leave);
    watcher.expect_silence(QUIET).await;
}

/// The first event of a connection must be a close with `code` (no welcome).
fn assert_refused(first: &Event, code: u16) {
    match first {
        Event::Closed(Some((got, _))) if *got == code => {}
        other => panic!("expected close {code}, got {other:?}"),
    }
}

on_both_backends!(
    user_connection_limit_holds_across_nodes =>
    user_connection_limit_holds_across_nodes_on_one_redis,
    user_connection_limit_holds_across_nodes_on_redis_cluster
);

async fn user_connection_limit_holds_across_nodes(backend: RedisBackend) {
    let nodes = spawn_cluster(&backend.url(), 3, |c| c.limits.max_connections_per_user = 4).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let u1 = any_room("u1", "acme");
    let mut held = vec![a.connect(&u1).await, a.connect(&u1).await];
    held.push(b.connect(&u1).await);
    held.push(b.connect(&u1).await);

    // C holds none of them, yet the fifth is refused there.
    let (_, first) = c.try_connect(Codec::Json, &u1).await;
    assert_refused(&first, 4003);
    // The limit is per user (and per tenant: same name elsewhere is another user).
    let _u2 = c.connect(&any_room("u2", "acme")).await;
    let _u1g = c.connect(&any_room("u1", "globex")).await;

    // One of the four leaves (on A): C admits one again, and only one.
    let gone = held.remove(0);
    drop(gone);
    let deadline = Instant::now() + WAIT;
    let fifth = loop {
        match c.try_connect(Codec::Json, &u1).await {
            (client, Event::Frame(w)) if w["type"] == "welcome" => break client,
            (_, first) => assert_refused(&first, 4003),
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was not released cluster-wide"
        );
        sleep(Duration::from_millis(100)).await;
    };
    let (_, first) = b.try_connect(Codec::Json, &u1).await;
    assert_refused(&first, 4003);
    for mut client in held.into_iter().chain([fifth]) {
        client.assert_alive().await;
    }
}

on_both_backends!(
    tenant_connection_limit_holds_across_nodes =>
    tenant_connection_limit_holds_across_nodes_on_one_redis,
    tenant_connection_limit_holds_across_nodes_on_redis_cluster
);

async fn tenant_connection_limit_holds_across_nodes(backend: RedisBackend) {
    let nodes = spawn_cluster(&backend.url(), 3, |c| {
        c.limits.max_connections_per_tenant = 3
    })
    .await;
    let mut held = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        held.push(node.connect(&any_room(&format!("u{i}"), "globex")).await);
    }
    let (_, first) = nodes[0]
        .try_connect(Codec::Json, &any_room("u9", "globex"))
        .await;
    assert_refused(&first, 4003);
    let _other = nodes[0].connect(&any_room("u9", "acme")).await;
}

on_both_backends!(
    nodes_with_different_prefixes_never_meet =>
    nodes_with_different_prefixes_never_meet_on_one_redis,
    nodes_with_different_prefixes_never_meet_on_redis_cluster
);

async fn nodes_with_different_prefixes_never_meet(backend: RedisBackend) {
    let one_conn = |c: &mut fanout_gateway::Config| c.limits.max_connections_per_user = 1;
    let p = spawn_node(&backend.url(), "alpha", "alpha-0", one_conn).await;
    let q = spawn_node(&backend.url(), "beta", "beta-0", one_conn).await;
    wait_for_cluster(&p, 1).await;
    wait_for_cluster(&q, 1).await;

    // Same tenant, user and room names on both; u1 is capped at one connection.
    let mut pa = p.member("u1", "acme", "lobby").await;
    let mut qa = q.member("u1", "acme", "lobby").await;

    let sends = [
        (
            &p,
            json!({"tenant":"acme","room":"lobby","event":"e","data":{}}),
        ),
        (
            &q,
            json!({"tenant":"acme","user":"u1","event":"e","data":{}}),
        ),
        (&p, json!({"tenant":"acme","event":"e","data":{}})),
    ];
    for (via, body) in sends {
        let id = via.publish_ok(body).await;
        let (mine, other) = if via.addr == p.addr {
            (&mut pa, &mut qa)
        } else {
            (&mut qa, &mut pa)
        };
        each_once(&mut [mine], &id).await;
        other.expect_silence(QUIET).await;
    }

    for node in [&p, &q] {
        let s = node.stats().await;
        assert_eq!(
            (&s["cluster"]["nodes"], &s["cluster"]["connections"]),
            (&json!(1), &json!(1)),
            "{s}"
        );
        let want = members(&[("u1", 1)]);
        eventually_eq(WAIT, "presence", &want, async || {
            node.presence("acme", "lobby").await
        })
        .await;
    }

    // Disconnect-user through P reaches P's connection only.
    let (status, body) = p
        .api_post("/v1/tenants/acme/users/u1/disconnect", &json!({}))
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    assert_eq!(pa.expect_close().await.0, 4001);
    qa.assert_alive().await;

    // Every key and channel either cluster wrote carries its prefix.
    let keys = backend.all_keys().await;
    let channels = backend.all_channels().await;
    let of = |prefix: &str, name: &str| name.trim_start_matches('{').starts_with(prefix);
    for name in keys.iter().chain(&channels) {
        assert!(
            of("alpha", name) || of("beta", name),
            "{name:?} has no prefix"
        );
    }
    for prefix in ["alpha", "beta"] {
        assert!(
            keys.iter().any(|k| of(prefix, k)),
            "no {prefix} key in {keys:?}"
        );
        assert!(
            channels.iter().any(|k| of(prefix, k)),
            "no {prefix} channel in {channels:?}"
        );
    }
}

on_both_backends!(
    concurrent_connects_across_nodes_never_overshoot_the_user_limit =>
    concurrent_connects_across_nodes_never_overshoot_the_user_limit_on_one_redis,
    concurrent_connects_across_nodes_never_overshoot_the_user_limit_on_redis_cluster
);

async fn concurrent_connects_across_nodes_never_overshoot_the_user_limit(backend: RedisBackend) {
    let nodes = spawn_cluster(&backend.url(), 3, |c| c.limits.max_connections_per_user = 4).await;
    let u1 = any_room("u1", "acme");
    // Twelve connects at once, four through each node.
    let attempts = (0..12).map(|i| {
        let node = &nodes[i % 3];
        let spec = u1.clone();
        async move { node.try_connect(Codec::Json, &spec).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    for (client, first) in results {
        match first {
            Event::Frame(w) if w["type"] == "welcome" => admitted.push(client),
            other => assert_refused(&other, 4003),
        }
    }
    // The admission script is atomic in Redis: the bound is exact.
    assert_eq!(admitted.len(), 4, "admitted {} connections", admitted.len());
    for mut client in admitted {
        client.assert_alive().await;
    }
}
