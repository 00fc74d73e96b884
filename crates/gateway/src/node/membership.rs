//! Who is connected and who is in which room: admission, joins, leaves and
//! release, each applied to the hub and then to the cluster, with the
//! presence events they cause.
//!
//! The order is the same in every call: the hub first (it is the truth for
//! local delivery and enforces local limits atomically), then the bus (the
//! cluster's view), and a refusal from the bus rolls the hub back, so the
//! caller is never told "no" while the hub says "yes". Departures are never
//! refused: a leave the bus could not record expires from Redis by TTL.

use std::sync::Arc;

use fanout_protocol::{Codec, Name};
use tracing::debug;

use super::error::NodeError;
use super::presence::PresenceEvent;
use super::state::Node;
use crate::auth::Grant;
use crate::cluster::AdmitError;
use crate::hub::ConnHandle;
use crate::hub::queue::SendQueue;

/// How a connection joins a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Receive `join`/`leave` events of the room.
    pub presence_events: bool,
}

impl Node {
    /// Admits an authenticated connection: the per-user and per-tenant
    /// limits on this node (atomically, in the hub), then across the
    /// cluster (the bus). On success the connection is in the hub and
    /// registered; on failure it is in neither.
    pub async fn admit(&self, grant: &Grant, codec: Codec) -> Result<Arc<ConnHandle>, AdmitError> {
        let hub = &self.inner.hub;
        let limits = &self.inner.config.limits;
        let id = hub.next_conn_id();
        let handle = Arc::new(ConnHandle::new(
            id,
            format!("{}-{id}", self.id()),
            grant.tenant.clone(),
            grant.user.clone(),
            codec,
            SendQueue::new(limits.send_queue_messages, limits.send_queue_bytes),
        ));
        hub.try_insert(handle.clone(), self.conn_limits())?;
        if let Err(err) = self.inner.bus.register(&handle, self.conn_limits()).await {
            hub.remove(handle.id);
            return Err(err);
        }
        Ok(handle)
    }

    /// Subscribes `conn` to `room` (the caller has checked the grant). A
    /// repeat only updates the options. Sends a `join` event when the user
    /// became present in the room cluster-wide.
    pub async fn join(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Name,
        options: JoinOptions,
    ) -> Result<(), NodeError> {
        let max = self.inner.config.limits.max_rooms_per_connection;
        if !conn.is_in(room) && conn.room_count() >= max {
            return Err(NodeError::RoomLimit { max });
        }
        let hub = &self.inner.hub;
        let joined = hub.join(conn, room, options.presence_events);
        if !joined.new_member {
            return Ok(());
        }
        match self.inner.bus.joined(conn, room, joined).await {
            Ok(user_joined) => {
                if user_joined {
                    self.presence_event(PresenceEvent::joined(conn, room)).await;
                }
                Ok(())
            }
            Err(e) => {
                hub.leave(conn, room);
                Err(NodeError::Unavailable(e))
            }
        }
    }

    /// Unsubscribes `conn` from `room` (nothing if it is not a member). Sends
    /// a `leave` event when the user left the room cluster-wide.
    pub async fn leave(&self, conn: &ConnHandle, room: &Name) {
        let left = self.inner.hub.leave(conn, room);
        if !left.was_member {
            return;
        }
        match self.inner.bus.left(conn, room, left).await {
            Ok(true) => self.presence_event(PresenceEvent::left(conn, room)).await,
            Ok(false) => {}
            Err(e) => debug!(error = %e, "leave not recorded in the cluster; it expires by TTL"),
        }
    }

    /// Forgets a closed connection: leaves every room (with leave events),
    /// removes it from the hub, unregisters it from the cluster.
    pub async fn release(&self, conn: &ConnHandle) {
        for room in conn.rooms() {
            self.leave(conn, &room).await;
        }
        self.inner.hub.remove(conn.id);
        self.inner.bus.unregister(conn).await;
    }
}
