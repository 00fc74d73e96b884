//! Cluster test harness, part 3: the Redis a cross-node test runs on, as a
//! parameter. The suites of `cluster.rs`, `cluster_routing.rs`,
//! `cluster_faults.rs` and `history.rs` write each scenario once, as
//! `async fn scenario(backend: RedisBackend)`, and run it twice through
//! [`on_both_backends!`]: on one `redis-server` and on a 3-primary Redis
//! Cluster (`redis_cluster_support.rs`), which nodes reach by every node's
//! address (`seeds_url()`: a one-seed URL cannot follow a failover).
//!
//! Raw commands a test sends to Redis itself (to lose a message on its way,
//! to break a key) go to the node owning the key's slot, so one test body
//! serves both backends.

#![allow(dead_code)]

use std::collections::BTreeSet;

use crate::redis_cluster_support::{RedisCluster, slot_of, try_command};
use crate::redis_support::RedisServer;

/// The Redis under a cross-node test.
pub enum RedisBackend {
    /// One `redis-server`: classic pub/sub, one keyspace.
    Single(RedisServer),
    /// A Redis Cluster of 3 primaries with a replica each: sharded pub/sub,
    /// keys spread over the primaries by slot.
    Cluster(RedisCluster),
}

impl RedisBackend {
    /// One `redis-server` on a free loopback port.
    pub async fn single() -> Self {
        Self::Single(RedisServer::start().await)
    }

    /// A fresh 3-primary + 3-replica Redis Cluster (about 2 s to form).
    pub async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await)
    }

    /// The URL nodes are configured with: `redis://…`, or
    /// `redis-cluster://…?node=…` naming every cluster node.
    pub fn url(&self) -> String {
        match self {
            Self::Single(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.seeds_url(),
        }
    }

    /// What a failing assertion says the test ran on.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Single(_) => "one redis",
            Self::Cluster(_) => "redis cluster",
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// One command on the node that owns `key`'s slot (the only node on a
    /// single Redis); an array's elements, or a scalar as one element.
    /// Panics on an error reply or a transport failure.
    pub async fn command(&self, key: &str, args: &[&str]) -> Vec<String> {
        match self {
            Self::Single(redis) => redis.command(args).await,
            Self::Cluster(cluster) => {
                let owner = cluster.owner_of(slot_of(key)).await;
                cluster.command(owner, args).await
            }
        }
    }

    /// Every key in Redis (every primary's, on a cluster), sorted.
    pub async fn all_keys(&self) -> Vec<String> {
        match self {
            Self::Single(redis) => sorted(redis.command(&["KEYS", "*"]).await),
            Self::Cluster(cluster) => {
                let mut keys = BTreeSet::new();
                for port in cluster.primaries().await {
                    keys.extend(cluster.command(port, &["KEYS", "*"]).await);
                }
                keys.into_iter().collect()
            }
        }
    }

    /// Every channel and shard channel someone subscribes to, sorted. On a
    /// cluster `PUBSUB` answers for its own node only: every running node
    /// (replicas too, a subscriber may read from one) is asked.
    pub async fn all_channels(&self) -> Vec<String> {
        let ports = match self {
            Self::Single(redis) => vec![redis.port()],
            Self::Cluster(cluster) => cluster
                .ports()
                .into_iter()
                .filter(|&p| cluster.is_running(p))
                .collect(),
        };
        let mut channels = BTreeSet::new();
        for port in ports {
            for verb in ["CHANNELS", "SHARDCHANNELS"] {
                let reply = try_command(port, &["PUBSUB", verb, "*"])
                    .await
                    .unwrap_or_else(|e| panic!("PUBSUB {verb} on {port}: {e}"));
                if let Some(e) = reply.error() {
                    panic!("PUBSUB {verb} on {port}: -{e}");
                }
                channels.extend(reply.strings().into_iter().filter(|c| !c.is_empty()));
            }
        }
        channels.into_iter().collect()
    }

    /// On a cluster, asserts that the slots of `tags` (hash tags such as
    /// `acme/lobby`) belong to every primary, so that a test over these
    /// rooms crosses all three shards; nothing to check on one Redis.
    pub async fn assert_on_every_primary(&self, tags: &[String]) {
        let Self::Cluster(cluster) = self else {
            return;
        };
        let mut owners = BTreeSet::new();
        for tag in tags {
            owners.insert(cluster.owner_of(slot_of(tag)).await);
        }
        let primaries: BTreeSet<u16> = cluster.primaries().await.into_iter().collect();
        assert_eq!(
            owners,
            primaries,
            "the slots of {tags:?} ({:?}) do not cover every primary",
            tags.iter().map(|t| slot_of(t)).collect::<Vec<_>>()
        );
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Two `#[tokio::test]`s running one scenario, `async fn body(RedisBackend)`:
/// `$one` on one Redis, `$cluster` on a Redis Cluster.
///
/// ```ignore
/// on_both_backends!(scenario => scenario_on_one_redis, scenario_on_redis_cluster);
/// ```
macro_rules! on_both_backends {
    ($body:expr => $one:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $one() {
            let body = $body;
            body($crate::backend_support::RedisBackend::single().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $cluster() {
            let body = $body;
            body($crate::backend_support::RedisBackend::cluster().await).await;
        }
    };
}
pub(crate) use on_both_backends;
