//! Presence: who is in a room, and the `join`/`leave` events sent to the
//! room's presence watchers when a user arrives or goes.

use std::sync::Arc;
use std::time::Instant;

use fanout_protocol::{Name, PresenceMember, ServerFrame};

use super::error::NodeError;
use super::state::Node;
use crate::clock::now_millis;
use crate::cluster::PublishOptions;
use crate::hub::ConnHandle;
use crate::message::{Audience, Broadcast, ConnId, EncodedFrame, Recipients};
use crate::metrics as m;

/// A user joined or left a room.
#[derive(Debug, Clone, Copy)]
pub struct PresenceEvent<'a> {
    /// Tenant.
    pub tenant: &'a Name,
    /// Room.
    pub room: &'a Name,
    /// User.
    pub user: &'a Name,
    /// True for `join`, false for `leave`.
    pub joined: bool,
    /// The connection whose join or leave caused it (not told about
    /// itself); `None` when no local connection did (a presence change the
    /// bus reported).
    pub cause: Option<ConnId>,
}

impl<'a> PresenceEvent<'a> {
    /// `conn`'s user joined `room`.
    pub fn joined(conn: &'a ConnHandle, room: &'a Name) -> Self {
        Self::of(conn, room, true)
    }

    /// `conn`'s user left `room`.
    pub fn left(conn: &'a ConnHandle, room: &'a Name) -> Self {
        Self::of(conn, room, false)
    }

    fn of(conn: &'a ConnHandle, room: &'a Name, joined: bool) -> Self {
        Self {
            tenant: &conn.tenant,
            room,
            user: &conn.user,
            joined,
            cause: Some(conn.id),
        }
    }
}

impl Node {
    /// Starts announcing the presence changes the bus reports (a dead
    /// node's users swept, stale entries repaired, a drained node's users)
    /// as `join`/`leave` events. Needs a Tokio runtime; the task ends when
    /// the bus stops reporting (it deregistered), and [`Node::leave_cluster`]
    /// waits for it.
    pub(super) fn start_announcing(&self) {
        let Some(mut changes) = self.inner.bus.take_presence_changes() else {
            return;
        };
        let node = Arc::downgrade(&self.inner);
        self.inner.announcing.spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(inner) = node.upgrade() else { return };
                let node = Node { inner };
                node.presence_event(PresenceEvent {
                    tenant: &change.tenant,
                    room: &change.room,
                    user: &change.user,
                    joined: change.joined,
                    cause: None,
                })
                .await;
            }
        });
    }

    /// Who is in a room, cluster-wide.
    pub async fn presence(
        &self,
        tenant: &Name,
        room: &Name,
    ) -> Result<Vec<PresenceMember>, NodeError> {
        Ok(self.inner.bus.presence(tenant, room).await?)
    }

    /// Sends a presence event (`join`/`leave`) to the room's presence
    /// watchers on every node, except the connection that caused it. Best
    /// effort: an event the bus cannot carry is counted as dropped.
    pub(crate) async fn presence_event(&self, event: PresenceEvent<'_>) {
        let (room, user) = (event.room.as_str(), event.user.as_str());
        let frame = if event.joined {
            ServerFrame::Join { room, user }
        } else {
            ServerFrame::Leave { room, user }
        };
        let encoded = match EncodedFrame::encode(&frame) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "encoding a presence event failed");
                return;
            }
        };
        let broadcast = Broadcast {
            tenant: event.tenant.clone(),
            audience: Audience::Room(event.room.clone()),
            recipients: Recipients::PresenceWatchers,
            exclude: event.cause,
            frame: Arc::new(encoded),
            accepted_at: Instant::now(),
            ts: now_millis(),
            id: Arc::from(""),
            position: None,
        };
        if let Err(e) = self
            .inner
            .bus
            .publish(&broadcast, PublishOptions::default())
            .await
        {
            tracing::warn!(error = %e, "presence event not sent to other nodes");
            m::dropped("bus_unavailable");
        }
        self.inner.hub.deliver(&broadcast);
    }
}
