//! The supervisor: Redis connection state → readiness, and resyncs.
//!
//! It wakes every 200 ms and whenever a shard reconnects or a redirection
//! says the slot map is stale (a reconnect can be too quick to be seen as a
//! disconnect, and a new subscriber connection has lost every
//! subscription). On one Redis any reconnect resyncs the whole node. On a
//! Redis Cluster it also re-reads the slot map every `redis.cluster_refresh` —
//! Redis tells a subscriber that its slot moved only with a pushed
//! `sunsubscribe`, which fred drops, so a changed owner in the map is how a
//! migration or a failover is noticed — and resyncs each shard that
//! reconnected or gained slots on its own, while the others keep serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::Health;
use super::keys::Layout;
use super::registry::{Registry, Scope};
use super::shards::Redis;
use crate::metrics as m;

/// Watches the connections until `stop`.
pub(crate) async fn supervise(
    redis: Redis,
    registry: Registry,
    health: Arc<Health>,
    poll: Duration,
    settle: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut was_up = false;
    let mut polled: Option<Instant> = None;
    // When the node first found itself connected but unsynced.
    let mut full_since: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = redis.changed() => {}
        }
        if redis.layout() == Layout::Cluster
            && (redis.is_stale() || polled.is_none_or(|t| t.elapsed() >= poll))
        {
            polled = Some(Instant::now());
            if let Err(e) = redis.refresh().await {
                m::redis_topology_refresh_failed();
                warn!(error = %e, "could not read the redis cluster slot map; retrying");
            }
        }
        let up = redis.is_connected();
        health.set_connected(up);
        if !up {
            if was_up {
                warn!("lost the connection to redis; not ready until it is back");
            }
            was_up = false;
            continue;
        }
        was_up = true;
        let shards = redis.shards();
        // One Redis: any reconnect (even one too quick to be seen as a
        // disconnect) and anything that marked the node unsynced (a failed
        // probe or script) resyncs the whole node.
        if redis.layout() == Layout::Single && shards.iter().any(|s| !s.is_synced()) {
            health.set_synced(false);
        }
        if !health.is_synced() {
            // On a cluster, give every primary's connections a moment to
            // come up, so that the node is not ready with shards left to
            // resync one by one (each would answer 503 meanwhile); a primary
            // that stays down is resynced alone once it is back.
            let connecting = shards.iter().any(|s| !s.is_connected());
            let since = *full_since.get_or_insert_with(Instant::now);
            if connecting && since.elapsed() < settle {
                continue;
            }
            full_since = None;
            match registry.resync(Scope::All).await {
                Ok(()) => info!("connected to redis and registered"),
                Err(e) => {
                    health.resync_failed(&e);
                    warn!(error = %e, cause = ?std::error::Error::source(&e), "resync failed; retrying");
                }
            }
            continue;
        }
        for shard in shards {
            if !shard.is_connected() {
                continue;
            }
            if !shard.is_synced() {
                if let Err(e) = registry.resync(Scope::Shard(shard.id.clone())).await {
                    warn!(shard = %shard.id, error = %e, cause = ?std::error::Error::source(&e), "resync of a redis shard failed; retrying");
                }
            } else if shard.has_moved() {
                let slots = shard.take_moved();
                let scope = Scope::Slots(shard.id.clone(), slots.clone());
                if let Err(e) = registry.resync(scope).await {
                    shard.add_moved(slots);
                    warn!(shard = %shard.id, error = %e, "resync of moved redis slots failed; retrying");
                }
            }
        }
    }
}
