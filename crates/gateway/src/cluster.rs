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

/// A user who arrived in or left a room cluster-wide with no session on
/// this node to announce it. Mostly departures: its node died and was swept,
/// a repair or the audit removed a stale entry, a draining node released
/// its connections without waiting. Arrivals only when this node re-registers
/// users whose leave was announced because it was taken for dead. The node
/// announces each as a `join` or `leave` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Tenant.
    pub tenant: Name,
    /// Room.
    pub room: Name,
    /// User.
    pub user: Name,
    /// True for an arrival (`join`), false for a departure (`leave`).
    pub joined: bool,
}

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

    /// Forgets a closed connection that already left `rooms` locally,
    /// without waiting for the cluster: a draining node must close every
    /// client in time even when Redis does not answer. The `leave` events
    /// this causes come as [`PresenceChange`]s. Returns false when the bus has no
    /// such path (the caller then releases the connection the usual way).
    fn release_detached(&self, _conn: &ConnHandle, _rooms: &[Name]) -> bool {
        false
    }

    /// The node starts closing its clients (a drain): its connections stop
    /// counting toward cluster-wide limits, so that a client closed here is
    /// not refused on the node it reconnects to while this one finishes.
    /// Returns once they no longer count (the caller bounds the wait).
    async fn closing(&self) {}

    /// The presence changes the bus finds (taken once, by the node, which
    /// announces them). `None` for a bus that finds none.
    fn take_presence_changes(&self) -> Option<tokio::sync::mpsc::Receiver<PresenceChange>> {
        None
    }

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

    /// Removes this node from the cluster (the end of a drain): its entries
    /// go, and the departures that causes are the last presence changes
    /// reported. The bus still publishes afterwards, so they can be
    /// announced.
    async fn deregister(&self) {}

    /// Stops what is left of the bus (after [`Bus::deregister`]).
    async fn shutdown(&self);
}
