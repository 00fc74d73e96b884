//! What can go wrong between a node and the rest of the cluster, as types.
//!
//! A bus error says *what happened* (not ready and why, a timeout, a refused
//! command, a script reply that makes no sense, a stopped task), so that a
//! caller can decide what to do and a log line can say what to fix. Every
//! bus error means the same thing to a client — the cluster cannot take the
//! request now, retry — and is mapped to a wire code in one place,
//! [`crate::node::NodeError`]. The Redis error text is kept as the `source`
//! for logs; the `Display` text is what clients may read.

use crate::hub::LimitExceeded;

/// Why the bus cannot carry traffic now; `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The first connection to Redis has not been made yet.
    #[error("connecting to redis")]
    Connecting,
    /// A connection to Redis is down; it is being re-established.
    #[error("redis unreachable")]
    Unreachable,
    /// Connected again; the node is rewriting its registry and subscriptions.
    #[error("re-registering in the cluster")]
    Resyncing,
    /// The last resync failed (the cause); it is retried.
    #[error("redis resync failed: {0}")]
    ResyncFailed(String),
    /// Heartbeats fail (the cause), so other nodes will soon take this one for dead.
    #[error("redis heartbeat failing: {0}")]
    HeartbeatFailing(String),
    /// The last heartbeat is older than the registry TTL (it is late: the
    /// registry actor is held up), so other nodes may take this one for dead.
    #[error("redis heartbeat is {age_ms} ms old (entries live {ttl_ms} ms)")]
    HeartbeatStale {
        /// Age of the last successful heartbeat.
        age_ms: u64,
        /// `3 × redis.heartbeat`.
        ttl_ms: u64,
    },
    /// Redis Cluster: the primary owning the slot is unreachable (a failover
    /// is likely under way); other slots are served.
    #[error("redis shard {shard} owning this slot is unreachable")]
    ShardUnreachable {
        /// `host:port` of the primary.
        shard: String,
    },
    /// Redis Cluster: the shard owning the slot came back or took the slot
    /// over; the node is rewriting its subscriptions and entries there.
    #[error("re-registering on redis shard {shard}")]
    ShardResyncing {
        /// `host:port` of the primary.
        shard: String,
    },
    /// Redis Cluster: no primary is known for the slot.
    #[error("no redis primary owns slot {slot}")]
    NoPrimary {
        /// The hash slot.
        slot: u16,
    },
}

/// The bus could not serve a request; callers answer "unavailable" (503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus is not ready (see [`NotReady`]).
    #[error("cluster bus unavailable: {0}")]
    NotReady(#[from] NotReady),
    /// Redis did not answer within `redis.command_timeout`; the command may
    /// or may not have run.
    #[error("cluster bus unavailable: redis did not answer {op} in time")]
    Timeout {
        /// What was asked (`publish`, `subscribe`, `heartbeat`, ...).
        op: &'static str,
    },
    /// A publish Redis did not answer within `redis.command_timeout`, or
    /// whose connection broke after it may have been sent: it may have run
    /// or still run, so the message may be delivered although the caller is
    /// told 503. Retrying with the same idempotency key is
    /// safe (a delivered message answers its first answer again).
    #[error(
        "cluster bus unavailable: redis did not confirm {op} (a timeout or a lost connection); the message may still be delivered: retry with the same idempotency_key to avoid a duplicate"
    )]
    PublishUnknown {
        /// Which publish (`route_room`, `route_user`, `route_tenant`, `publish`).
        op: &'static str,
    },
    /// Redis answered with an error, or the connection failed mid-command.
    #[error("cluster bus unavailable: redis {op} failed")]
    Redis {
        /// What was asked.
        op: &'static str,
        /// Redis's (or the client library's) error.
        #[source]
        source: fred::error::Error,
    },
    /// Redis Cluster: the slot is being migrated and the command needs keys
    /// that are not all on one side yet (`TRYAGAIN`; a room created in a
    /// slot whose migration is open); it did not run. Retry shortly.
    #[error(
        "cluster bus unavailable: the redis slot of this {op} is being migrated; retry shortly"
    )]
    SlotMigrating {
        /// What was asked.
        op: &'static str,
    },
    /// A pipelined command got no reply at all.
    #[error("cluster bus unavailable: no reply from redis to {op}")]
    NoReply {
        /// What was asked.
        op: &'static str,
    },
    /// A registry script answered something it never returns: a bug, or a
    /// Redis running another version of the script.
    #[error("cluster bus unavailable: unexpected reply from the {script} script")]
    ScriptReply {
        /// The script's name.
        script: &'static str,
    },
    /// A resync could not write some of the node's registry entries (each
    /// failure is logged); the resync is retried.
    #[error("cluster bus unavailable: {entries} registry entries could not be written")]
    Repair {
        /// How many entries failed.
        entries: usize,
    },
    /// The registry task has stopped (the node is shutting down).
    #[error("cluster bus unavailable: the node has left the cluster")]
    Stopped,
    /// A cross-node envelope could not be encoded (a bug).
    #[error("cluster bus unavailable: encoding the cluster envelope failed")]
    Encode {
        /// The encoder's error.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl BusError {
    /// A failed Redis command: a timeout when the client library says so.
    pub fn redis(op: &'static str, source: fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        let publish = op == "publish" || op.starts_with("route_");
        if *source.kind() == ErrorKind::Timeout {
            if publish {
                BusError::PublishUnknown { op }
            } else {
                BusError::Timeout { op }
            }
        } else if publish && matches!(source.kind(), ErrorKind::IO | ErrorKind::Canceled) {
            // The connection broke with the publish possibly written: Redis
            // may have run it. Saying so is safe even when it did not (the
            // keyed retry delivers it once); saying "failed" is not.
            BusError::PublishUnknown { op }
        } else if source.details().contains("TRYAGAIN") {
            BusError::SlotMigrating { op }
        } else {
            BusError::Redis { op, source }
        }
    }
}

/// Why a connection was not admitted cluster-wide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmitError {
    /// A user or tenant limit is reached.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The bus is unavailable.
    #[error(transparent)]
    Unavailable(#[from] BusError),
}
