//! The two Redis connections of a node, built from `[redis]`.
//!
//! One *publisher* (commands, scripts, PUBLISH) and one *subscriber*. One
//! connection each is deliberate: Redis executes one connection's commands
//! in order, and one subscriber connection receives inbox, room and tenant
//! messages in the order Redis published them, which is what keeps a
//! publisher's messages in order across a routing switch.
//!
//! Neither is awaited here: their tasks connect (and reconnect) in the
//! background, and the supervisor turns their state into readiness, so a
//! node starts while Redis is still down.

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::config::{
    Config as FredConfig, ConnectionConfig, PerformanceConfig, ReconnectPolicy,
};

use crate::config::RedisConfig;

/// Capacity of fred's pub/sub broadcast channel (messages).
const FRED_BROADCAST_CAPACITY: usize = 4_096;

/// Why the Redis bus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `redis.url` is not a Redis URL fred understands.
    #[error("redis.url: {0}")]
    Url(#[source] fred::error::Error),
}

/// The node's two Redis clients, connecting in the background.
pub(crate) struct Clients {
    /// Commands, scripts, PUBLISH.
    pub(crate) publisher: Client,
    /// SUBSCRIBE and the messages it brings.
    pub(crate) subscriber: SubscriberClient,
}

/// Builds both clients and starts their connection tasks.
pub(crate) fn connect(config: &RedisConfig) -> Result<Clients, StartError> {
    let mut fred = FredConfig::from_url(&config.url).map_err(StartError::Url)?;
    fred.fail_fast = false;
    let perf = PerformanceConfig {
        default_command_timeout: config.command_timeout,
        // fred preallocates every one of its broadcast channels at this
        // capacity; the deep buffer is our own queue (allocated as it fills),
        // and this one only has to absorb the reader's scheduling delays.
        broadcast_channel_capacity: FRED_BROADCAST_CAPACITY,
        ..Default::default()
    };
    let conn = ConnectionConfig {
        connection_timeout: config.command_timeout,
        internal_command_timeout: config.command_timeout,
        // A command is never replayed after a reconnect: a publish that was
        // answered 503 must not be delivered later behind the caller's back.
        max_command_attempts: 1,
        ..Default::default()
    };
    // Reconnect forever, backing off from 100 ms to 2 s.
    let policy = ReconnectPolicy::new_exponential(0, 100, 2_000, 2);
    // Only the subscriber needs the large broadcast buffer (pub/sub
    // messages); the publisher's event channels carry a few events.
    let publisher_perf = PerformanceConfig {
        broadcast_channel_capacity: 64,
        ..perf.clone()
    };
    let publisher = Client::new(
        fred.clone(),
        Some(publisher_perf),
        Some(conn.clone()),
        Some(policy.clone()),
    );
    let subscriber = SubscriberClient::new(fred, Some(perf), Some(conn), Some(policy));
    drop(publisher.connect());
    drop(subscriber.connect());
    Ok(Clients {
        publisher,
        subscriber,
    })
}
