//! The requests the registry actor takes: plain data with a reply channel.

use fanout_protocol::Name;
use tokio::sync::oneshot;

use crate::cluster::{AdmitError, BusError};
use crate::hub::ConnLimits;

/// A request to the registry actor.
#[derive(Debug)]
pub(crate) enum Op {
    /// A registry change of one connection (batched with others).
    Change(Change),
    /// Rewrite this node's whole registry and subscriptions (start, reconnect).
    Resync {
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// Remove this node from the registry (drain); the actor stops after it.
    Deregister { reply: oneshot::Sender<()> },
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
        reply: oneshot::Sender<Result<bool, BusError>>,
    },
}

impl Change {
    /// Admissions and joins are refused while the node is not ready;
    /// departures are always recorded (a resync corrects Redis later).
    pub(crate) fn needs_ready(&self) -> bool {
        matches!(self, Change::Register { .. } | Change::Join { .. })
    }

    /// Answers the change with an error without applying it.
    pub(crate) fn refuse(self, err: BusError) {
        match self {
            Change::Register { reply, .. } => drop(reply.send(Err(AdmitError::Unavailable(err)))),
            Change::Join { reply, .. } | Change::Leave { reply, .. } => drop(reply.send(Err(err))),
            Change::Unregister { .. } => {}
        }
    }
}
