//! The requests the registry actor takes: plain data with a reply channel.

use std::collections::BTreeSet;

use fanout_protocol::Name;
use tokio::sync::oneshot;

use crate::cluster::redis::shards::ShardId;
use crate::cluster::{AdmitError, BusError};
use crate::hub::ConnLimits;

/// A request to the registry actor.
#[derive(Debug)]
pub(crate) enum Op {
    /// A registry change of one connection (batched with others).
    Change(Change),
    /// Rewrite this node's registry and subscriptions (start, reconnect):
    /// all of it, or (Redis Cluster) what lives on one shard.
    Resync {
        scope: Scope,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// The node closes its clients (drain): remove its user and tenant
    /// counts, so that they no longer count toward limits elsewhere.
    Closing { reply: oneshot::Sender<()> },
    /// Remove this node from the registry (drain); the actor stops after it.
    Deregister { reply: oneshot::Sender<()> },
}

/// What a resync rewrites.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// Everything: start, a reconnect to one Redis, a swept registry.
    All,
    /// Redis Cluster: what lives on one shard (it reconnected, or is a
    /// newly promoted primary); its entries are written over in place from the view.
    Shard(ShardId),
    /// Redis Cluster: slots that moved to a shard by a migration; their
    /// channels are subscribed there and their entries rewritten.
    Slots(ShardId, BTreeSet<u16>),
}

/// One connection's registry change.
#[derive(Debug)]
pub(crate) enum Change {
    Register {
        tenant: Name,
        user: Name,
        limits: ConnLimits,
        reply: oneshot::Sender<Result<(), AdmitError>>,
    },
    Unregister {
        tenant: Name,
        user: Name,
    },
    Join {
        tenant: Name,
        room: Name,
        user: Name,
        reply: oneshot::Sender<Result<bool, BusError>>,
    },
    Leave {
        tenant: Name,
        room: Name,
        user: Name,
        reply: LeaveReply,
    },
}

/// Who learns a leave's outcome.
#[derive(Debug)]
pub(crate) enum LeaveReply {
    /// The session that left: it announces a due `leave` itself.
    Caller(oneshot::Sender<Result<bool, BusError>>),
    /// Nobody waits (a draining node's release): a due `leave` is reported
    /// as a departure.
    Announce,
}

impl LeaveReply {
    /// Answers the caller, if one waits.
    pub(crate) fn send(self, outcome: Result<bool, BusError>) {
        if let LeaveReply::Caller(reply) = self {
            let _ = reply.send(outcome);
        }
    }
}

impl Change {
    /// Admissions and joins are refused while the node is not ready;
    /// departures are always recorded (a repair or resync corrects Redis
    /// later).
    pub(crate) fn needs_ready(&self) -> bool {
        matches!(self, Change::Register { .. } | Change::Join { .. })
    }

    /// Answers the change with an error without applying it.
    pub(crate) fn refuse(self, err: BusError) {
        match self {
            Change::Register { reply, .. } => drop(reply.send(Err(AdmitError::Unavailable(err)))),
            Change::Join { reply, .. } => drop(reply.send(Err(err))),
            Change::Leave { reply, .. } => reply.send(Err(err)),
            Change::Unregister { .. } => {}
        }
    }
}
