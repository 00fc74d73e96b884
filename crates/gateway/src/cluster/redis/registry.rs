//! The registry actor: the one owner of this node's state in Redis.
//!
//! Every change a node makes to the cluster registry (admissions, joins,
//! leaves, heartbeats, resyncs after an outage) goes through this one task,
//! in order. That order is what makes the registry simple to reason about:
//!
//! - a node subscribes to a room's channel *before* it registers as a host
//!   of the room, and a later join of another local member cannot overtake
//!   the first one's registration, so an acknowledged subscribe always
//!   finds the node registered and subscribed;
//! - the actor keeps its own copy of what it has told Redis (rooms, users,
//!   tenants with their local counts); after an outage it rewrites exactly
//!   that, so in-flight operations can neither be counted twice nor lost.
//!
//! Requests that arrive together are handled as one batch: one SUBSCRIBE for
//! all new channels, one pipeline for all scripts. Heartbeats are pipelined
//! per node, never one round trip per connection.

mod actor;
mod audit;
mod batch;
mod op;
mod repair;
mod state;
mod sync;
mod writes;

use fanout_protocol::Name;
use tokio::sync::{mpsc, oneshot};

pub(crate) use self::actor::Actor;
pub(crate) use self::op::Scope;
use self::op::{Change, LeaveReply, Op};
use crate::cluster::{AdmitError, BusError};
use crate::hub::ConnLimits;

/// A cheap handle to the actor.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    tx: mpsc::Sender<Op>,
}

impl Registry {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    pub(crate) async fn register(
        &self,
        tenant: Name,
        user: Name,
        limits: ConnLimits,
    ) -> Result<(), AdmitError> {
        self.call(|reply| {
            Op::Change(Change::Register {
                tenant,
                user,
                limits,
                reply,
            })
        })
        .await
        .unwrap_or_else(|| Err(BusError::Stopped.into()))
    }

    pub(crate) async fn unregister(&self, tenant: Name, user: Name) {
        let _ = self
            .tx
            .send(Op::Change(Change::Unregister { tenant, user }))
            .await;
    }

    pub(crate) async fn join(
        &self,
        tenant: Name,
        room: Name,
        user: Name,
    ) -> Result<bool, BusError> {
        self.call(|reply| {
            Op::Change(Change::Join {
                tenant,
                room,
                user,
                reply,
            })
        })
        .await
        .unwrap_or_else(|| Err(BusError::Stopped))
    }

    pub(crate) async fn leave(
        &self,
        tenant: Name,
        room: Name,
        user: Name,
    ) -> Result<bool, BusError> {
        self.call(|reply| {
            Op::Change(Change::Leave {
                tenant,
                room,
                user,
                reply: LeaveReply::Caller(reply),
            })
        })
        .await
        .unwrap_or_else(|| Err(BusError::Stopped))
    }

    /// Queues the leaves and the unregistration of a closed connection
    /// without waiting (a draining node). Due `leave`s are reported as
    /// departures. A full queue drops the rest: the node's deregistration
    /// (or, if it never runs, the sweep of the dead node) removes what they
    /// would have, and announces the same departures.
    pub(crate) fn release_detached(&self, tenant: &Name, user: &Name, rooms: &[Name]) {
        let leaves = rooms.iter().map(|room| Change::Leave {
            tenant: tenant.clone(),
            room: room.clone(),
            user: user.clone(),
            reply: LeaveReply::Announce,
        });
        let unregister = Change::Unregister {
            tenant: tenant.clone(),
            user: user.clone(),
        };
        for change in leaves.chain(std::iter::once(unregister)) {
            if self.tx.try_send(Op::Change(change)).is_err() {
                crate::metrics::registry_queue_full();
                return;
            }
        }
    }

    pub(crate) async fn resync(&self, scope: Scope) -> Result<(), BusError> {
        self.call(|reply| Op::Resync { scope, reply })
            .await
            .unwrap_or_else(|| Err(BusError::Stopped))
    }

    /// The node starts closing its clients: its counts leave the user and
    /// tenant hashes; returns once they did (or could not).
    pub(crate) async fn closing(&self) {
        let _ = self.call(|reply| Op::Closing { reply }).await;
    }

    pub(crate) async fn deregister(&self) {
        let _ = self.call(|reply| Op::Deregister { reply }).await;
    }
}

/// Presence changes the actor may hold for the node before it drops more
/// (a sweep of a dead node can report thousands at once).
pub(crate) const PRESENCE_CHANGES: usize = 64 * 1024;

/// Starts the actor; returns its handle.
pub(crate) fn spawn(actor: Actor) -> Registry {
    let (tx, rx) = mpsc::channel(16 * 1024);
    tokio::spawn(actor.run(rx));
    Registry { tx }
}
