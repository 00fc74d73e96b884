//! Who is connected and who is in which room: admission, joins, leaves and
//! release, each applied to the hub and then to the cluster, with the
//! presence events they cause.
//!
//! The order is the same in every call: the hub first (it is the truth for
//! local delivery and enforces local limits atomically), then the bus (the
//! cluster's view), and a refusal from the bus rolls the hub back, so the
//! caller is never told "no" while the hub says "yes". Departures are never
//! refused: a leave the bus could not record is repaired by the bus later.

use std::sync::Arc;

use fanout_protocol::{Codec, Name, ServerFrame, StreamPosition};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::error::NodeError;
use super::presence::PresenceEvent;
use super::state::Node;
use crate::auth::Grant;
use crate::cluster::{AdmitError, HistoryQuery};
use crate::hub::queue::SendQueue;
use crate::hub::{ConnHandle, GoLive, Hub, Left};
use crate::message::to_message;
use crate::metrics as m;

/// How a connection joins a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Receive `join`/`leave` events of the room.
    pub presence_events: bool,
    /// Recover from this position (§7): replay what followed it.
    pub since: Option<StreamPosition>,
}

/// A subscribe's answer, and — in a room with history — the member's
/// switch from pending to live. The caller encodes the `ack` from
/// `stream` and `recovered` and hands it to [`Subscription::start`], which
/// queues it, then the replay, and only then lets live messages through.
/// Dropping it unstarted goes live without an ack (nothing is lost).
#[derive(Debug)]
#[must_use = "start() queues the ack and the replay, and makes the member live"]
pub struct Subscription {
    /// The room's stream: epoch and latest offset (rooms with history).
    pub stream: Option<(Arc<str>, u64)>,
    /// With `since`: whether every missed message is replayed.
    pub recovered: Option<bool>,
    conn: Arc<ConnHandle>,
    /// The pending member, for rooms with history.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    hub: Hub,
    room: Name,
    epoch: Arc<str>,
    top: u64,
    /// Replayed messages, in the connection's codec, oldest first.
    replay: Vec<Message>,
}

impl Subscription {
    /// Queues `ack`, then the replay, then makes the member live.
    pub fn start(mut self, ack: Message) {
        // An overflow closes the connection through its queue.
        let _ = self.conn.queue.push(ack);
        self.go_live();
    }

    fn go_live(&mut self) {
        let Some(p) = self.pending.take() else { return };
        for msg in p.replay {
            if self.conn.queue.push(msg).is_err() {
                break;
            }
        }
        if p.hub.go_live(&self.conn, &p.room, &p.epoch, p.top) == GoLive::Broken {
            tracing::warn!(room = %p.room, "room stream broke while a member went live");
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.go_live();
    }
}

impl Node {
    /// Admits an authenticated connection: the per-user and per-tenant
    /// limits on this node (atomically, in the hub), then across the
    /// cluster (the bus). On success the connection is in the hub and
    /// registered; on failure it is in neither.
    ///
    /// `greet` runs on the new connection before it can be reached (before
    /// the hub has it), so what it queues (the `welcome`) is the first frame
    /// the client gets, even when a message for the user or tenant arrives
    /// while the cluster registers the connection.
    pub async fn admit(
        &self,
        grant: &Grant,
        codec: Codec,
        greet: impl FnOnce(&ConnHandle),
    ) -> Result<Arc<ConnHandle>, AdmitError> {
        let hub = &self.inner.hub;
        let limits = &self.inner.config.limits;
        let id = hub.next_conn_id();
        let handle = Arc::new(ConnHandle::new(
            id,
            grant.tenant.clone(),
            grant.user.clone(),
            codec,
            SendQueue::new(limits.send_queue_messages, limits.send_queue_bytes),
        ));
        greet(&handle);
        hub.try_insert(handle.clone(), self.conn_limits())?;
        if let Err(err) = self.inner.bus.register(&handle, self.conn_limits()).await {
            hub.remove(handle.id);
            return Err(err);
        }
        Ok(handle)
    }

    /// Subscribes `conn` to `room` (the caller has checked the grant). A
    /// repeat only updates the options. Sends a `join` event when the user
    /// became present in the room cluster-wide. In a room with history the
    /// connection joins *pending*: its history is read (from `since`, if
    /// given) and live messages wait until [`Subscription::start`].
    pub async fn join(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Name,
        options: JoinOptions,
    ) -> Result<Subscription, NodeError> {
        if self.is_closing() {
            // Every client is being closed: nothing to register.
            return Err(NodeError::Draining);
        }
        let max = self.inner.config.limits.max_rooms_per_connection;
        if !conn.is_in(room) && conn.room_count() >= max {
            return Err(NodeError::RoomLimit { max });
        }
        let hub = &self.inner.hub;
        let spec = self.stream_spec(&conn.tenant, room);
        let joined = match spec {
            Some(_) => hub.join_pending(conn, room, options.presence_events),
            None => hub.join(conn, room, options.presence_events),
        };
        if joined.new_member {
            match self.inner.bus.joined(conn, room, joined).await {
                Ok(true) => self.presence_event(PresenceEvent::joined(conn, room)).await,
                Ok(false) => {}
                Err(e) => {
                    hub.leave(conn, room);
                    return Err(NodeError::Unavailable(e));
                }
            }
        }
        let Some(spec) = spec else {
            return Ok(Subscription {
                stream: None,
                recovered: options.since.as_ref().map(|_| false),
                conn: conn.clone(),
                pending: None,
            });
        };
        // Where the stream stands (and, recovering, what was missed). Read
        // after the bus registered the member, so that whatever is published
        // from now on reaches it live: the read and the live stream overlap,
        // they cannot leave a hole.
        let since = options.since.clone().filter(|_| joined.new_member);
        let query = HistoryQuery {
            after: since.as_ref().map(|s| s.offset),
            limit: if since.is_some() { spec.size } else { 0 },
        };
        let page = match self
            .inner
            .bus
            .history(&conn.tenant, room, spec, query)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                if joined.new_member {
                    self.leave(conn, room).await;
                }
                return Err(NodeError::Unavailable(e));
            }
        };
        let mut recovered = match &since {
            Some(s) => Some(page.covers(s.offset, &s.epoch) && page.complete_after(s.offset)),
            // A repeat subscribe is live already; it is not replayed to.
            None => options.since.as_ref().map(|_| false),
        };
        let mut replay = Vec::new();
        if recovered == Some(true) {
            let decoded = super::history::decode(&page);
            replay = decoded
                .iter()
                .filter_map(|(offset, stored)| {
                    let frame = ServerFrame::Message(stored.frame(*offset, &page.epoch));
                    conn.codec.encode(&frame).ok().map(to_message)
                })
                .collect();
            // The replay goes into the connection's queue at once, behind the
            // ack: one that would not fit (half the queue, by frames or
            // bytes) would close the client with 4009 on every retry. It is
            // told `recovered:false` instead, and reloads its state.
            let limits = &self.inner.config.limits;
            let bytes: usize = replay.iter().map(Message::len).sum();
            if replay.len() != page.messages.len()
                || replay.len() > limits.send_queue_messages / 2
                || bytes > limits.send_queue_bytes / 2
            {
                recovered = Some(false);
                replay.clear();
            }
        }
        if let Some(r) = recovered {
            m::recovery(r);
        }
        let stream = Some((page.epoch.clone(), page.top));
        if !joined.new_member {
            return Ok(Subscription {
                stream,
                recovered,
                conn: conn.clone(),
                pending: None,
            });
        }
        Ok(Subscription {
            stream,
            recovered,
            conn: conn.clone(),
            pending: Some(Pending {
                hub: hub.clone(),
                room: room.clone(),
                epoch: page.epoch,
                top: page.top,
                replay,
            }),
        })
    }

    /// Unsubscribes `conn` from `room` (nothing if it is not a member). Sends
    /// a `leave` event when the user left the room cluster-wide.
    pub async fn leave(&self, conn: &ConnHandle, room: &Name) {
        let left = self.inner.hub.leave(conn, room);
        self.record_leave(conn, room, left).await;
    }

    /// Records a local leave in the cluster; announces it when due.
    async fn record_leave(&self, conn: &ConnHandle, room: &Name, left: Left) {
        if !left.was_member {
            return;
        }
        match self.inner.bus.left(conn, room, left).await {
            Ok(true) => self.presence_event(PresenceEvent::left(conn, room)).await,
            Ok(false) => {}
            Err(e) => debug!(error = %e, "leave not recorded in the cluster; it is repaired later"),
        }
    }

    /// Forgets a closed connection: leaves every room (with leave events),
    /// removes it from the hub, unregisters it from the cluster.
    ///
    /// While the node is closing its clients (a drain) nothing waits for
    /// the cluster: the connection leaves the hub at once and the bus is
    /// handed its departures to record in the background, announcing the
    /// `leave`s that are due itself. A drain must close every client in
    /// time even when Redis does not answer; waiting on the registry per
    /// connection made sessions outlive the grace period.
    pub async fn release(&self, conn: &ConnHandle) {
        if self.is_closing() {
            let left: Vec<(Name, Left)> = conn
                .rooms()
                .into_iter()
                .map(|room| {
                    let left = self.inner.hub.leave(conn, &room);
                    (room, left)
                })
                .filter(|(_, left)| left.was_member)
                .collect();
            self.inner.hub.remove(conn.id);
            let rooms: Vec<Name> = left.iter().map(|(room, _)| room.clone()).collect();
            if !self.inner.bus.release_detached(conn, &rooms) {
                // A bus without a detached path (embedded) answers at once.
                for (room, left) in left {
                    self.record_leave(conn, &room, left).await;
                }
                self.inner.bus.unregister(conn).await;
            }
            return;
        }
        for room in conn.rooms() {
            self.leave(conn, &room).await;
        }
        self.inner.hub.remove(conn.id);
        self.inner.bus.unregister(conn).await;
    }
}
