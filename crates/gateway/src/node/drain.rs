//! The node's side of a drain: stop taking work, ask every client to
//! reconnect elsewhere, leave the cluster. The sequence and its timing are
//! the server's (`server::drain`); these are the steps it calls.

use std::sync::Arc;

use fanout_protocol::CloseCode;

use super::state::Node;
use crate::hub::ConnHandle;

/// Close reason of the 1012 a draining node sends.
const DRAIN_REASON: &str = "node is draining";

impl Node {
    /// Whether the node is draining (shutting down).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Starts draining: readiness turns false, new upgrades get 503 and
    /// admissions are refused with "draining"; publishes are still served
    /// (until [`Node::begin_closing`]).
    pub fn begin_drain(&self) {
        self.inner.draining.cancel();
    }

    /// The drain starts closing clients (after `readiness_delay`, when load
    /// balancers have stopped routing here): publishes and subscribes are
    /// refused with "draining" from now on, and the node's connections stop
    /// counting toward cluster-wide limits. Returns once they do, so that a
    /// client closed next is admitted where it reconnects (the caller
    /// bounds the wait: Redis may not answer).
    pub async fn begin_closing(&self) {
        self.inner.closing.cancel();
        self.inner.bus.closing().await;
    }

    /// Whether publishes are refused as draining (see [`Node::begin_closing`]).
    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// Completes when the drain starts.
    pub async fn drain_started(&self) {
        self.inner.draining.cancelled().await;
    }

    /// Every local connection at this instant (the drain closes them in batches).
    pub fn connections(&self) -> Vec<Arc<ConnHandle>> {
        self.inner.hub.connections()
    }

    /// Asks every local connection to close with 1012.
    pub fn close_all_connections(&self) -> usize {
        self.inner.hub.close_all(CloseCode::Restart, DRAIN_REASON)
    }

    /// Asks one connection to close with 1012.
    pub fn close_for_drain(&self, conn: &ConnHandle) {
        conn.queue.close(CloseCode::Restart, DRAIN_REASON);
    }

    /// Removes this node from the cluster registry, announces the `leave`s
    /// that causes, and stops the bus (the last step of a drain; the caller
    /// bounds it by the grace period).
    pub async fn leave_cluster(&self) {
        self.inner.bus.deregister().await;
        self.inner.announcing.wait().await;
        self.inner.bus.shutdown().await;
    }
}
