//! The seam between one node and the rest of the cluster.
//!
//! Everything a node needs from other nodes goes through the [`Bus`] trait:
//! cluster-wide admission (connection limits), room presence, delivery to
//! members on other nodes, disconnect-user and cluster counts. The node
//! always serves its *local* members itself, through the hub; the bus only
//! adds what lies beyond this process.
//!
//! Two implementations: [`embedded::EmbeddedBus`] for a single node with no
//! Redis (every answer comes from the local hub and there is nobody else to
//! tell), and the Redis bus for a cluster. Keeping the trait small, with
//! plain data in and out, is what lets the Redis bus be a second
//! implementation rather than a rewrite of the node (the same shape as
//! centrifuge's Broker/PresenceManager split).

pub mod embedded;
mod error;
pub mod redis;
mod stream;

pub use self::error::{AdmitError, BusError, NotReady};
pub use self::stream::{
    HistoryPage, HistoryQuery, IDEMPOTENCY_WINDOW, PublishOptions, Published, StreamSpec, new_epoch,
};

use async_trait::async_trait;
use fanout_protocol::api::ClusterStats;
use fanout_protocol::{Name, PresenceMember};

use crate::hub::{ConnHandle, ConnLimits, Joined, Left};
use crate::message::Broadcast;

/// Cross-node operations of a node. Implementations must be cheap to call
/// concurrently from every session and HTTP handler.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `embedded` or `redis`; shown in `/v1/stats`.
    fn kind(&self) -> &'static str;

    /// `Ok` when the bus can carry traffic, else why not (shown by `/readyz`).
    fn readiness(&self) -> Result<(), NotReady>;

    /// Admits a connection the hub has already admitted locally, enforcing
    /// the limits across the cluster and registering it.
    async fn register(&self, conn: &ConnHandle, limits: ConnLimits) -> Result<(), AdmitError>;

    /// Forgets a closed connection.
    async fn unregister(&self, conn: &ConnHandle);

    /// Records a local join in cluster presence. Returns true when the user
    /// became present in the room cluster-wide (a `join` event is due).
    async fn joined(&self, conn: &ConnHandle, room: &Name, local: Joined)
    -> Result<bool, BusError>;

    /// Records a local leave. Returns true when the user left the room
    /// cluster-wide (a `leave` event is due).
    async fn left(&self, conn: &ConnHandle, room: &Name, local: Left) -> Result<bool, BusError>;

    /// Carries a message to the members on *other* nodes. Returns only once
    /// the bus has taken responsibility for it; an error means no other node
    /// will receive it. In a room with history (`opts.history`) the bus
    /// assigns the message its position, atomically with the hand-over, and
    /// stores it; with an idempotency key it first checks whether the same
    /// publish was already accepted ([`Published::Duplicate`]: nothing is
    /// sent, and the caller must not deliver it locally either).
    async fn publish(
        &self,
        msg: &Broadcast,
        opts: PublishOptions<'_>,
    ) -> Result<Published, BusError>;

    /// Reads a room's stream: its epoch and latest offset (creating the
    /// stream's epoch if the room never had one), and the messages the
    /// query asks for.
    async fn history(
        &self,
        tenant: &Name,
        room: &Name,
        spec: StreamSpec,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BusError>;

    /// Who is in a room, cluster-wide, sorted by user.
    async fn presence(&self, tenant: &Name, room: &Name) -> Result<Vec<PresenceMember>, BusError>;

    /// Asks other nodes to close a user's connections with 4001.
    async fn disconnect_user(&self, tenant: &Name, user: &Name) -> Result<(), BusError>;

    /// Cluster-wide counts.
    async fn cluster_stats(&self) -> Result<ClusterStats, BusError>;

    /// Stops background work and deregisters the node (drain).
    async fn shutdown(&self);
}
