//! The Redis Cluster harness itself (groundwork for issue 12), against a real
//! 3-primary + 3-replica cluster and no fanout node: the cluster forms, keys
//! live on (and are redirected to) the primary owning their slot, sharded
//! pub/sub works on the owning shard (and a script cannot `SPUBLISH` into a
//! slot another node owns), a killed primary's replica takes over within a
//! bound while the other primaries keep serving, and a slot migration moves
//! keys and unsubscribes the slot's shard subscribers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::redis_cluster_support::{
    Conn, FAILOVER_WAIT, PRIMARIES, RedisCluster, Reply, SLOTS, command, command_replicated,
    redirect_port, slot_of, tag_for_slot, try_command,
};
use crate::redis_support::{POLL, eventually};
use crate::support::WAIT;

/// Room keys and channel as fanout names them today (`keys.rs`), one slot.
const META: &str = "fanout:{acme/lobby}:meta";
const HOSTS: &str = "fanout:{acme/lobby}:hosts";
const ROOM_CH: &str = "fanout:{acme/lobby}:ch";

/// How long a push that must not come is waited for.
const QUIET: Duration = Duration::from_millis(300);

/// A slot the primary on `port` owns, other than `not`.
async fn another_slot_of(cluster: &RedisCluster, port: u16, not: u16) -> u16 {
    let view = cluster.topology().await.unwrap();
    let me = view.iter().find(|n| n.port == port).unwrap();
    (0..SLOTS)
        .find(|&s| s != not && me.owns(s))
        .expect("the primary owns another slot")
}

/// The redirection an error reply names, or a panic saying what came instead.
fn moved_to(reply: &Reply, slot: u16) -> u16 {
    let err = reply
        .error()
        .unwrap_or_else(|| panic!("expected MOVED, got {reply:?}"));
    assert!(err.starts_with(&format!("MOVED {slot} ")), "{err}");
    redirect_port(err).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_forms_with_three_primaries_each_with_one_replica() {
    let cluster = RedisCluster::start().await;
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), PRIMARIES, "{primaries:?}");
    let view = cluster.topology().await.unwrap();
    let owned: u32 = view
        .iter()
        .filter(|n| n.primary)
        .map(|n| n.slot_count())
        .sum();
    assert_eq!(owned, u32::from(SLOTS), "{view:?}");

    let mut replicas = BTreeSet::new();
    for &p in &primaries {
        let r = cluster.replica_of(p).await;
        assert!(!primaries.contains(&r));
        let role = command(r, &["ROLE"]).await;
        assert_eq!(
            (role[0].as_str(), role[2].as_str(), role[3].as_str()),
            ("slave", p.to_string().as_str(), "connected"),
            "{role:?}"
        );
        replicas.insert(r);
    }
    assert_eq!(replicas.len(), PRIMARIES);
    let all: BTreeSet<u16> = primaries.iter().copied().chain(replicas).collect();
    assert_eq!(all, cluster.ports().into_iter().collect());

    // The harness's slot arithmetic is Redis's.
    let p = primaries[0];
    for key in [
        META,
        ROOM_CH,
        "fanout:{acme}:conns",
        "fanout:nodes",
        "a{}b",
        "a{b}{c}",
        "{",
    ] {
        let slot = command(p, &["CLUSTER", "KEYSLOT", key]).await;
        assert_eq!(slot, [slot_of(key).to_string()], "slot of {key}");
    }
    for slot in [0, 1, 5460, 5461, 10922, 10923, SLOTS - 1] {
        let key = format!("x:{{{}}}:y", tag_for_slot(slot));
        let got = command(p, &["CLUSTER", "KEYSLOT", &key]).await;
        assert_eq!(got, [slot.to_string()], "{key}");
    }

    // The URLs name the cluster in the form fred 10 parses as one.
    let one = fred::types::config::Config::from_url(&cluster.seed_url()).unwrap();
    assert!(one.server.is_clustered(), "{:?}", one.server);
    assert_eq!(one.server.hosts().len(), 1);
    let all = fred::types::config::Config::from_url(&cluster.seeds_url()).unwrap();
    assert!(all.server.is_clustered());
    assert_eq!(all.server.hosts().len(), 2 * PRIMARIES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_lives_on_the_primary_owning_its_slot_and_the_others_redirect_there() {
    let cluster = RedisCluster::start().await;
    let slot = slot_of(META);
    assert_eq!(slot, slot_of(HOSTS), "one hash tag, one slot");
    let owner = cluster.owner_of(slot).await;

    // Every other primary answers MOVED to the owner; following it works.
    for p in cluster
        .primaries()
        .await
        .into_iter()
        .filter(|&p| p != owner)
    {
        let reply = try_command(p, &["HSET", META, "top", "1"]).await.unwrap();
        assert_eq!(moved_to(&reply, slot), owner, "from {p}");
    }
    assert_eq!(
        command_replicated(owner, &["HSET", META, "top", "1"]).await,
        ["1"]
    );
    assert_eq!(command(owner, &["HGET", META, "top"]).await, ["1"]);

    // The owner's replica has it (WAIT), and serves it after READONLY.
    let replica = cluster.replica_of(owner).await;
    let mut conn = Conn::open(replica).await.unwrap();
    assert_eq!(
        conn.call(&["READONLY"]).await.unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        conn.call(&["HGET", META, "top"]).await.unwrap(),
        Reply::Bulk("1".into())
    );

    // Multi-key commands must stay in one slot (why fanout's cross-slot
    // reads, e.g. MGET of node infos, must be split per slot).
    let elsewhere = format!("fanout:{{{}}}:info", tag_for_slot((slot + 1) % SLOTS));
    let reply = try_command(owner, &["MGET", META, &elsewhere])
        .await
        .unwrap();
    assert!(
        reply.error().is_some_and(|e| e.starts_with("CROSSSLOT")),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_is_served_by_the_owning_shard_and_scripts_cannot_spublish_into_another_nodes_slot()
 {
    let cluster = RedisCluster::start().await;
    let slot = slot_of(ROOM_CH);
    assert_eq!(slot, slot_of(META));
    let owner = cluster.owner_of(slot).await;
    let other = cluster.other_primary(owner).await;

    // SSUBSCRIBE is served by the owner only.
    let refused = try_command(other, &["SSUBSCRIBE", ROOM_CH]).await.unwrap();
    assert_eq!(moved_to(&refused, slot), owner);
    let mut sub = Conn::open(owner).await.unwrap();
    sub.subscribe("SSUBSCRIBE", &[ROOM_CH]).await;

    // SPUBLISH on the owner reaches the shard subscriber; elsewhere it is MOVED.
    assert_eq!(command(owner, &["SPUBLISH", ROOM_CH, "m1"]).await, ["1"]);
    assert_eq!(
        sub.next_push(WAIT).await,
        Some(vec!["smessage".into(), ROOM_CH.into(), "m1".into()])
    );
    let refused = try_command(other, &["SPUBLISH", ROOM_CH, "m1"])
        .await
        .unwrap();
    assert_eq!(moved_to(&refused, slot), owner);

    // One script updates the room's state and publishes on its shard channel...
    let script = "redis.call('HINCRBY', KEYS[1], 'top', 1) \
                  return redis.call('SPUBLISH', ARGV[1], ARGV[2])";
    let reply = command(owner, &["EVAL", script, "1", META, ROOM_CH, "m2"]).await;
    assert_eq!(reply, ["1"]);
    assert_eq!(
        sub.next_push(WAIT).await,
        Some(vec!["smessage".into(), ROOM_CH.into(), "m2".into()])
    );
    // ...but not on a channel whose slot another node owns (today's
    // per-node inbox channel has a slot of its own). Redis 7.0 lets a
    // script reach an undeclared slot the same node happens to own; a
    // migration ends that accident, so fanout must not rely on it.
    let foreign_slot = another_slot_of(&cluster, other, slot).await;
    let foreign = format!("fanout:{{{}}}:inbox:node-b", tag_for_slot(foreign_slot));
    let reply = try_command(owner, &["EVAL", script, "1", META, &foreign, "m3"])
        .await
        .unwrap();
    let err = reply
        .error()
        .unwrap_or_else(|| panic!("SPUBLISH to another node's slot allowed: {reply:?}"));
    assert!(err.contains("non local"), "{err}");
    assert_eq!(
        sub.next_push(QUIET).await,
        None,
        "nothing else reached the shard"
    );

    // Classic PUBLISH (today's) from a script is broadcast over the cluster
    // bus: a plain SUBSCRIBE on any node hears it.
    let inbox = "fanout:inbox:node-b";
    let mut classic = Conn::open(other).await.unwrap();
    classic.subscribe("SUBSCRIBE", &[inbox]).await;
    let publish = "return redis.call('PUBLISH', ARGV[1], ARGV[2])";
    command(owner, &["EVAL", publish, "1", META, inbox, "m4"]).await;
    assert_eq!(
        classic.next_push(WAIT).await,
        Some(vec!["message".into(), inbox.into(), "m4".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_its_replica_within_the_bound_and_rejoins_as_replica() {
    let mut cluster = RedisCluster::start().await;
    let slot = slot_of(META);
    let owner = cluster.owner_of(slot).await;
    let replica = cluster.replica_of(owner).await;
    let other = cluster.other_primary(owner).await;
    let other_key = format!(
        "k:{{{}}}",
        tag_for_slot(another_slot_of(&cluster, other, 0).await)
    );
    assert_eq!(
        command_replicated(owner, &["HSET", META, "top", "7"]).await,
        ["1"],
        "written and replicated"
    );

    let started = Instant::now();
    assert_eq!(cluster.kill_primary_owning(slot).await, owner);
    assert!(
        try_command(owner, &["PING"]).await.is_err(),
        "the primary is dead"
    );
    // The other primaries' slots are served throughout: every write to one
    // of them succeeds while the slot has no primary (no CLUSTERDOWN, which
    // `cluster-require-full-coverage yes` would answer once the node fails).
    let done = AtomicBool::new(false);
    let writer = async {
        let mut writes = 0u32;
        while !done.load(Ordering::Acquire) {
            writes += 1;
            let n = writes.to_string();
            assert_eq!(
                command(other, &["SET", &other_key, &n]).await,
                ["OK"],
                "write {writes} to another primary during the failover"
            );
            sleep(POLL).await;
        }
        writes
    };
    let failover = async {
        let promoted = cluster.wait_for_failover(slot).await;
        done.store(true, Ordering::Release);
        promoted
    };
    let (promoted, writes) = tokio::join!(failover, writer);
    let took = started.elapsed();
    eprintln!(
        "slot {slot}: primary {owner} killed, replica {promoted} promoted after {took:?}; \
         {writes} writes to another primary meanwhile, all served"
    );
    assert_eq!(promoted, replica, "the dead primary's replica took over");
    assert!(took < FAILOVER_WAIT);
    assert_eq!(command(promoted, &["HGET", META, "top"]).await, ["7"]);
    assert_eq!(command(promoted, &["ROLE"]).await[0], "master");
    let reply = try_command(other, &["HGET", META, "top"]).await.unwrap();
    assert_eq!(
        moved_to(&reply, slot),
        promoted,
        "the others redirect to the new primary"
    );

    // The killed node comes back (empty) and follows the new primary.
    cluster.restart(owner).await;
    let following = eventually(WAIT * 2, async || {
        let role = command(owner, &["ROLE"]).await;
        role.len() >= 4
            && role[0] == "slave"
            && role[2] == promoted.to_string()
            && role[3] == "connected"
    })
    .await;
    assert!(
        following,
        "{owner} did not become {promoted}'s replica: {:?}",
        command(owner, &["ROLE"]).await
    );
    assert_eq!(command(owner, &["READONLY"]).await, ["OK"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_slot_moves_its_keys_and_unsubscribes_the_slots_shard_subscribers() {
    let cluster = RedisCluster::start().await;
    let slot = slot_of(META);
    let from = cluster.owner_of(slot).await;
    let to = cluster.other_primary(from).await;
    assert_eq!(command(from, &["HSET", META, "top", "3"]).await, ["1"]);
    assert_eq!(command(from, &["ZADD", HOSTS, "1", "node-a"]).await, ["1"]);
    let mut sub = Conn::open(from).await.unwrap();
    sub.subscribe("SSUBSCRIBE", &[ROOM_CH]).await;
    // A shard channel of another slot of the same node, as a bystander.
    let bystander = format!(
        "fanout:{{{}}}:ch",
        tag_for_slot(another_slot_of(&cluster, from, slot).await)
    );
    let mut by = Conn::open(from).await.unwrap();
    by.subscribe("SSUBSCRIBE", &[&bystander]).await;

    cluster.migrate_slot(slot, from, to).await;

    assert_eq!(cluster.owner_of(slot).await, to);
    assert_eq!(command(to, &["HGET", META, "top"]).await, ["3"]);
    assert_eq!(command(to, &["ZSCORE", HOSTS, "node-a"]).await, ["1"]);
    let reply = try_command(from, &["HGET", META, "top"]).await.unwrap();
    assert_eq!(moved_to(&reply, slot), to);
    assert_eq!(
        command(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]).await,
        ["0"]
    );

    // Redis pushes `sunsubscribe` to the slot's shard subscribers on the old
    // owner (a client that drops this push is deaf from here on)...
    assert_eq!(
        sub.next_push(WAIT).await,
        Some(vec!["sunsubscribe".into(), ROOM_CH.into(), "0".into()])
    );
    assert_eq!(
        command(to, &["SPUBLISH", ROOM_CH, "lost"]).await,
        ["0"],
        "nobody listens on the new owner"
    );
    assert_eq!(sub.next_push(QUIET).await, None);
    // ...and leaves other slots' subscribers alone.
    assert_eq!(
        command(from, &["SPUBLISH", &bystander, "still"]).await,
        ["1"]
    );
    assert_eq!(
        by.next_push(WAIT).await,
        Some(vec!["smessage".into(), bystander.clone(), "still".into()])
    );
}
