//! The supervisor: Redis connection state → readiness, and a resync after
//! every reconnect.
//!
//! It polls both connections every 200 ms and also wakes on fred's
//! reconnect events, because a reconnect can be too quick to be seen as a
//! disconnect, and a new subscriber connection has lost every subscription.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::Health;
use super::registry::Registry;

/// Watches both connections until `stop`.
pub(crate) async fn supervise(
    publisher: Client,
    subscriber: SubscriberClient,
    registry: Registry,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut pub_events = publisher.reconnect_rx();
    let mut sub_events = subscriber.reconnect_rx();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut was_up = false;
    loop {
        let mut reconnected = false;
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            Ok(_) = pub_events.recv() => reconnected = true,
            Ok(_) = sub_events.recv() => reconnected = true,
        }
        let up = publisher.is_connected() && subscriber.is_connected();
        health.set_connected(up);
        if !up {
            if was_up {
                warn!("lost the connection to redis; not ready until it is back");
            }
            was_up = false;
            continue;
        }
        was_up = true;
        // Any reconnect (even one too quick to be seen as a disconnect) and
        // anything that marked the node unsynced (a failed probe) resyncs.
        if reconnected {
            health.set_synced(false);
        }
        if !health.is_synced() {
            match registry.resync().await {
                Ok(()) => info!("connected to redis and registered"),
                Err(e) => {
                    health.resync_failed(&e);
                    warn!(error = %e, cause = ?std::error::Error::source(&e), "resync failed; retrying");
                }
            }
        }
    }
}
