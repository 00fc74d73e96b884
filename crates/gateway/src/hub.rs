//! The node's local socket map: which connections are here, and by room,
//! user and tenant.
//!
//! ```text
//!   conns:   ConnId            → ConnHandle
//!   rooms:   (tenant, room)    → members { ConnId → (handle, presence_events) } + users { user → conns }
//!   users:   (tenant, user)    → [handle]
//!   tenants: tenant            → { ConnId → handle }
//! ```
//!
//! Every key starts with the tenant, so equal room or user names of two
//! tenants are different keys: isolation is structural, not a check that
//! could be forgotten. `Hub` is a cheap-clone handle over `DashMap`s; no
//! lock is ever held across an `.await` (nothing here is async). A room is
//! removed when its last member leaves, so the maps do not grow with the
//! history of names, only with what is live.
//!
//! Delivery iterates a room's members under the shard's read lock and does a
//! non-blocking push per member; a slow member is closed (4009) by its queue
//! and never slows the loop.

mod conn;
pub mod queue;
mod sequencer;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use fanout_protocol::{CloseCode, Name, PresenceMember};

pub use self::conn::ConnHandle;
use self::queue::PushError;
use self::sequencer::Sequencer;
pub use self::sequencer::{GoLive, StreamGap};

pub use crate::message::ConnId;
use crate::message::{Audience, Broadcast, Recipients};
use crate::metrics as m;

type Members = HashMap<ConnId, Arc<ConnHandle>>;

#[derive(Debug)]
struct RoomMember {
    conn: Arc<ConnHandle>,
    presence_events: bool,
    /// In a room with history: where this member stands in the stream.
    stream: Option<Box<MemberStream>>,
}

/// A member's place in its room's stream.
#[derive(Debug, Default)]
struct MemberStream {
    /// While the member's subscribe is being answered (history read,
    /// replay), messages for it wait here, in order, instead of its queue.
    pending: Option<Vec<Broadcast>>,
    /// Messages at or below this offset reached it by replay: skip them.
    after: u64,
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<ConnId, RoomMember>,
    /// Connections per user in this room, for presence answers and join/leave.
    users: HashMap<Name, u32>,
    /// Rooms with history: the stream's order on this node, created by the
    /// first member that joins with history (boxed: most rooms have none).
    stream: Option<Box<Sequencer>>,
}

#[derive(Debug, Default)]
struct HubInner {
    /// Every local connection. Written by `try_insert` / `remove`.
    conns: DashMap<ConnId, Arc<ConnHandle>>,
    /// Room members, per (tenant, room). Written by `join` / `leave`; the
    /// stream state inside by positioned deliveries.
    rooms: DashMap<(Name, Name), Room>,
    /// Connections per (tenant, user). Written by `try_insert` / `remove`.
    /// A list, not a map: most users hold one connection on a node and
    /// `max_connections_per_user` bounds the rest, and a one-entry map
    /// costs ~100 B of heap per connection where this costs 8.
    users: DashMap<(Name, Name), Vec<Arc<ConnHandle>>>,
    /// Connections per tenant. Written by `try_insert` / `remove`.
    tenants: DashMap<Name, Members>,
    /// Rooms whose stream has a gap open, and since when; written by the
    /// positioned deliveries, read by the node's repair task.
    gaps: std::sync::Mutex<HashMap<(Name, Name), std::time::Instant>>,
    /// The last connection id handed out.
    next_id: AtomicU64,
}

/// The local socket map. Clone is cheap.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// Connection limits checked when a connection is added (0 = unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnLimits {
    /// Most connections per user.
    pub per_user: u32,
    /// Most connections per tenant.
    pub per_tenant: u32,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The user already holds the most connections allowed.
    #[error("connection limit per user reached ({0})")]
    PerUser(u32),
    /// The tenant already holds the most connections allowed.
    #[error("connection limit per tenant reached ({0})")]
    PerTenant(u32),
}

/// Result of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// False when the connection was already a member (only its options changed).
    pub new_member: bool,
    /// True when the room had no member on this node before.
    pub first_in_room: bool,
    /// True when this is the user's first connection in the room on this node.
    pub first_of_user: bool,
}

/// One room's local state, for re-registration.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    /// Tenant.
    pub tenant: Name,
    /// Room.
    pub room: Name,
    /// Users with their local connection counts.
    pub users: Vec<(Name, u32)>,
}

/// Result of a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// False when the connection was not a member.
    pub was_member: bool,
    /// True when no member of the room is left on this node.
    pub room_empty: bool,
    /// True when this was the user's last connection in the room on this node.
    pub last_of_user: bool,
}

/// How a delivery went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Frames queued.
    pub queued: u64,
    /// Members closed as slow consumers by this delivery.
    pub overflowed: u64,
}

/// Queues `msg` for `conn`, unless `conn` is the publisher it excludes.
fn push_to(conn: &ConnHandle, msg: &Broadcast, out: &mut Delivered) {
    if Some(conn.id) == msg.exclude {
        return;
    }
    match conn.queue.push(msg.frame.for_codec(conn.codec).clone()) {
        Ok(()) => out.queued += 1,
        Err(PushError::Overflow) => {
            out.overflowed += 1;
            m::slow_consumer_closed();
        }
        Err(PushError::Closing) => m::dropped("closing"),
    }
}

fn limit_ok(len: usize, max: u32) -> bool {
    max == 0 || len < max as usize
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh node-local connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId::new(self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Adds a connection if the user and tenant are under their limits. The
    /// check and the insert happen under the same entry locks, so concurrent
    /// connects cannot overshoot on one node. Lock order: users, then tenants.
    pub fn try_insert(
        &self,
        conn: Arc<ConnHandle>,
        limits: ConnLimits,
    ) -> Result<(), LimitExceeded> {
        let inner = &self.inner;
        let mut user = inner
            .users
            .entry((conn.tenant.clone(), conn.user.clone()))
            .or_default();
        if !limit_ok(user.len(), limits.per_user) {
            let empty = user.is_empty();
            drop(user);
            if empty {
                self.remove_user_entry_if_empty(&conn.tenant, &conn.user);
            }
            return Err(LimitExceeded::PerUser(limits.per_user));
        }
        let mut tenant = inner.tenants.entry(conn.tenant.clone()).or_default();
        if !limit_ok(tenant.len(), limits.per_tenant) {
            let (user_empty, tenant_empty) = (user.is_empty(), tenant.is_empty());
            drop(tenant);
            drop(user);
            if user_empty {
                self.remove_user_entry_if_empty(&conn.tenant, &conn.user);
            }
            if tenant_empty {
                inner.tenants.remove_if(&conn.tenant, |_, m| m.is_empty());
            }
            return Err(LimitExceeded::PerTenant(limits.per_tenant));
        }
        tenant.insert(conn.id, conn.clone());
        user.reserve_exact(1);
        user.push(conn.clone());
        drop(tenant);
        drop(user);
        m::connection_opened(&conn.tenant);
        inner.conns.insert(conn.id, conn);
        Ok(())
    }

    fn remove_user_entry_if_empty(&self, tenant: &Name, user: &Name) {
        self.inner
            .users
            .remove_if(&(tenant.clone(), user.clone()), |_, m| m.is_empty());
    }

    /// Removes a connection from the connection, user and tenant indexes.
    /// Rooms are left first (by [`crate::node::Node::release`]), so that
    /// leave events go out.
    pub fn remove(&self, id: ConnId) -> Option<Arc<ConnHandle>> {
        let (_, conn) = self.inner.conns.remove(&id)?;
        let key = (conn.tenant.clone(), conn.user.clone());
        if let Entry::Occupied(mut e) = self.inner.users.entry(key) {
            let conns = e.get_mut();
            if let Some(i) = conns.iter().position(|c| c.id == id) {
                conns.swap_remove(i);
            }
            if conns.is_empty() {
                e.remove();
            }
        }
        if let Entry::Occupied(mut e) = self.inner.tenants.entry(conn.tenant.clone()) {
            e.get_mut().remove(&id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        m::connection_closed(&conn.tenant);
        Some(conn)
    }

    /// Subscribes `conn` to `room` (idempotent; a repeat updates `presence_events`).
    ///
    /// Lock order: the room's entry, then the connection's room set.
    /// Delivery takes only the first, so it never waits on the second.
    pub fn join(&self, conn: &Arc<ConnHandle>, room: &Name, presence_events: bool) -> Joined {
        self.join_as(conn, room, presence_events, false)
    }

    /// [`Hub::join`]; with `pending`, room messages with a position wait in
    /// the member's buffer until [`Hub::go_live`] (a subscribe to a room
    /// with history, while its history is read).
    fn join_as(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Name,
        presence_events: bool,
        pending: bool,
    ) -> Joined {
        let mut entry = self
            .inner
            .rooms
            .entry((conn.tenant.clone(), room.clone()))
            .or_default();
        if pending {
            entry.stream.get_or_insert_with(Default::default);
        }
        let mut conn_rooms = conn.lock_rooms();
        if let Some(member) = entry.members.get_mut(&conn.id) {
            member.presence_events = presence_events;
            return Joined {
                new_member: false,
                first_in_room: false,
                first_of_user: false,
            };
        }
        let first_in_room = entry.members.is_empty();
        entry.members.insert(
            conn.id,
            RoomMember {
                conn: conn.clone(),
                presence_events,
                stream: pending.then(|| {
                    Box::new(MemberStream {
                        pending: Some(Vec::new()),
                        after: 0,
                    })
                }),
            },
        );
        // Exactly sized: most connections are in one or a few rooms, and
        // a `Vec`'s first growth would make room for four.
        conn_rooms.reserve_exact(1);
        conn_rooms.push(room.clone());
        let count = entry.users.entry(conn.user.clone()).or_insert(0);
        *count += 1;
        Joined {
            new_member: true,
            first_in_room,
            first_of_user: *count == 1,
        }
    }

    /// Unsubscribes `conn` from `room`; removes the room when it empties.
    pub fn leave(&self, conn: &ConnHandle, room: &Name) -> Left {
        let not_member = Left {
            was_member: false,
            room_empty: false,
            last_of_user: false,
        };
        let Entry::Occupied(mut entry) =
            self.inner.rooms.entry((conn.tenant.clone(), room.clone()))
        else {
            return not_member;
        };
        let r = entry.get_mut();
        if r.members.remove(&conn.id).is_none() {
            return not_member;
        }
        let mut conn_rooms = conn.lock_rooms();
        if let Some(i) = conn_rooms.iter().position(|r| r == room) {
            conn_rooms.swap_remove(i);
        }
        drop(conn_rooms);
        let mut last_of_user = false;
        if let Some(count) = r.users.get_mut(&conn.user) {
            *count -= 1;
            if *count == 0 {
                r.users.remove(&conn.user);
                last_of_user = true;
            }
        }
        let room_empty = r.members.is_empty();
        if room_empty {
            let (key, _) = entry.remove_entry();
            self.gap_closed(&key);
        }
        Left {
            was_member: true,
            room_empty,
            last_of_user,
        }
    }

    /// Users in a room on this node with their connection counts, sorted by user.
    pub fn presence(&self, tenant: &Name, room: &Name) -> Vec<PresenceMember> {
        let mut members: Vec<PresenceMember> = self
            .inner
            .rooms
            .get(&(tenant.clone(), room.clone()))
            .map(|r| {
                r.users
                    .iter()
                    .map(|(user, conns)| PresenceMember {
                        user: user.to_string(),
                        conns: *conns,
                    })
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        members
    }

    /// Hands `msg` to every local recipient's queue. A room message with a
    /// position goes through the room's stream order first (`hub::stream`).
    pub fn deliver(&self, msg: &Broadcast) -> Delivered {
        if let (Some(pos), Audience::Room(room)) = (&msg.position, &msg.audience) {
            return self.deliver_in_order(msg, room, pos);
        }
        let mut out = Delivered::default();
        let mut push = |conn: &ConnHandle| push_to(conn, msg, &mut out);
        match &msg.audience {
            Audience::Room(room) => {
                if let Some(r) = self.inner.rooms.get(&(msg.tenant.clone(), room.clone())) {
                    for member in r.members.values() {
                        if msg.recipients == Recipients::PresenceWatchers && !member.presence_events
                        {
                            continue;
                        }
                        push(&member.conn);
                    }
                }
            }
            Audience::User(user) => {
                if let Some(conns) = self.inner.users.get(&(msg.tenant.clone(), user.clone())) {
                    conns.iter().for_each(|c| push(c));
                }
            }
            Audience::Tenant => {
                if let Some(conns) = self.inner.tenants.get(&msg.tenant) {
                    conns.values().for_each(|c| push(c));
                }
            }
        }
        m::delivered(out.queued, msg.accepted_at);
        out
    }

    /// Closes every local connection of a user; returns how many.
    pub fn close_user(&self, tenant: &Name, user: &Name, code: CloseCode, reason: &str) -> usize {
        match self.inner.users.get(&(tenant.clone(), user.clone())) {
            Some(conns) => {
                conns.iter().for_each(|c| c.queue.close(code, reason));
                conns.len()
            }
            None => 0,
        }
    }

    /// Every local connection, at this instant (the drain closes them in batches).
    pub fn connections(&self) -> Vec<Arc<ConnHandle>> {
        self.inner.conns.iter().map(|c| c.value().clone()).collect()
    }

    /// Asks every local connection to close (drain).
    pub fn close_all(&self, code: CloseCode, reason: &str) -> usize {
        let mut n = 0;
        for c in self.inner.conns.iter() {
            c.queue.close(code, reason);
            n += 1;
        }
        n
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// Rooms with at least one member on this node.
    pub fn room_count(&self) -> usize {
        self.inner.rooms.len()
    }

    /// Whether a room has at least one member on this node.
    pub fn has_room(&self, tenant: &Name, room: &Name) -> bool {
        self.inner
            .rooms
            .contains_key(&(tenant.clone(), room.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::queue::{Next, SendQueue};
    use super::*;
    use crate::message::EncodedFrame;
    use fanout_protocol::{Codec, ServerFrame};
    use std::time::Instant;
    use tokio_tungstenite::tungstenite::Message;

    fn name(s: &str) -> Name {
        Name::new("test", s).unwrap()
    }

    fn conn(hub: &Hub, tenant: &str, user: &str) -> Arc<ConnHandle> {
        let id = hub.next_conn_id();
        let c = Arc::new(ConnHandle::new(
            id,
            name(tenant),
            name(user),
            Codec::Json,
            SendQueue::new(8, 1 << 20),
        ));
        hub.try_insert(c.clone(), ConnLimits::default()).unwrap();
        c
    }

    fn room_msg(tenant: &str, room: &str) -> Broadcast {
        Broadcast {
            tenant: name(tenant),
            audience: Audience::Room(name(room)),
            recipients: Recipients::Everyone,
            exclude: None,
            frame: Arc::new(EncodedFrame::encode(&ServerFrame::Pong { id: None }).unwrap()),
            accepted_at: Instant::now(),
            ts: 0,
            id: Arc::from("m"),
            position: None,
        }
    }

    fn queued(c: &ConnHandle) -> usize {
        c.queue.depth().0
    }

    #[test]
    fn rooms_are_per_tenant() {
        let hub = Hub::new();
        let a = conn(&hub, "acme", "u1");
        let b = conn(&hub, "globex", "u1");
        hub.join(&a, &name("lobby"), false);
        hub.join(&b, &name("lobby"), false);
        assert_eq!(hub.deliver(&room_msg("acme", "lobby")).queued, 1);
        assert_eq!((queued(&a), queued(&b)), (1, 0));
        assert_eq!(hub.presence(&name("globex"), &name("lobby")).len(), 1);
    }

    #[test]
    fn presence_counts_connections_per_user_and_rooms_are_removed_when_empty() {
        let hub = Hub::new();
        let a1 = conn(&hub, "t", "alice");
        let a2 = conn(&hub, "t", "alice");
        assert!(hub.join(&a1, &name("r"), false).first_of_user);
        assert!(!hub.join(&a2, &name("r"), false).first_of_user);
        assert!(!hub.join(&a2, &name("r"), true).new_member);
        assert_eq!(
            hub.presence(&name("t"), &name("r")),
            vec![PresenceMember {
                user: "alice".into(),
                conns: 2
            }]
        );
        assert!(!hub.leave(&a1, &name("r")).last_of_user);
        assert!(hub.leave(&a2, &name("r")).last_of_user);
        assert!(!hub.leave(&a2, &name("r")).was_member);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn a_connection_knows_its_rooms_exactly_as_the_room_index_does() {
        let hub = Hub::new();
        let a = conn(&hub, "t", "alice");
        hub.join(&a, &name("r1"), false);
        hub.join(&a, &name("r2"), false);
        hub.join(&a, &name("r2"), true);
        let mut rooms = a.rooms();
        rooms.sort();
        assert_eq!(rooms, vec![name("r1"), name("r2")]);
        assert_eq!(a.room_count(), 2);
        assert!(a.is_in(&name("r1")));
        hub.leave(&a, &name("r1"));
        assert!(!a.is_in(&name("r1")));
        assert_eq!(a.rooms(), vec![name("r2")]);
        // Leaving a room it is not in changes nothing.
        hub.leave(&a, &name("r1"));
        assert_eq!(a.room_count(), 1);
    }

    #[test]
    fn limits_are_enforced_per_user_and_tenant() {
        let hub = Hub::new();
        let limits = ConnLimits {
            per_user: 2,
            per_tenant: 3,
        };
        let mk = |user: &str| {
            let id = hub.next_conn_id();
            Arc::new(ConnHandle::new(
                id,
                name("t"),
                name(user),
                Codec::Json,
                SendQueue::new(8, 1024),
            ))
        };
        hub.try_insert(mk("a"), limits).unwrap();
        hub.try_insert(mk("a"), limits).unwrap();
        assert_eq!(
            hub.try_insert(mk("a"), limits),
            Err(LimitExceeded::PerUser(2))
        );
        hub.try_insert(mk("b"), limits).unwrap();
        assert_eq!(
            hub.try_insert(mk("c"), limits),
            Err(LimitExceeded::PerTenant(3))
        );
        assert_eq!(hub.connection_count(), 3);
        assert_eq!(
            hub.inner.users.len(),
            2,
            "refused users leave no empty entry"
        );
    }

    #[test]
    fn publisher_is_excluded_and_slow_member_is_closed_without_hurting_others() {
        let hub = Hub::new();
        let fast = conn(&hub, "t", "a");
        let slow = conn(&hub, "t", "b");
        let publisher = conn(&hub, "t", "c");
        for c in [&fast, &slow, &publisher] {
            hub.join(c, &name("r"), false);
        }
        let mut msg = room_msg("t", "r");
        msg.exclude = Some(publisher.id);
        for _ in 0..8 {
            while let Next::Frame(_) = fast.queue.pop() {}
            hub.deliver(&msg);
        }
        // The ninth overflows the slow member only.
        while let Next::Frame(_) = fast.queue.pop() {}
        let d = hub.deliver(&msg);
        assert_eq!(
            d,
            Delivered {
                queued: 1,
                overflowed: 1
            }
        );
        assert_eq!(queued(&publisher), 0);
        assert!(slow.queue.is_closing());
        assert!(!fast.queue.is_closing());
    }

    #[test]
    fn a_broadcast_shares_one_encoding_among_all_members() {
        let hub = Hub::new();
        let a = conn(&hub, "t", "a");
        let b = conn(&hub, "t", "b");
        hub.join(&a, &name("r"), false);
        hub.join(&b, &name("r"), false);
        hub.deliver(&room_msg("t", "r"));
        let payload = |c: &ConnHandle| match c.queue.pop() {
            Next::Frame(Message::Text(t)) => t,
            other => panic!("expected a text frame, got {other:?}"),
        };
        let (pa, pb) = (payload(&a), payload(&b));
        // Same bytes in memory: the frame was encoded once and shared, not re-encoded or copied.
        assert_eq!(pa.as_str().as_ptr(), pb.as_str().as_ptr());
    }

    #[test]
    fn user_and_tenant_audiences() {
        let hub = Hub::new();
        let a1 = conn(&hub, "t", "alice");
        let a2 = conn(&hub, "t", "alice");
        let b = conn(&hub, "t", "bob");
        let other = conn(&hub, "u", "alice");
        let mut msg = room_msg("t", "x");
        msg.audience = Audience::User(name("alice"));
        assert_eq!(hub.deliver(&msg).queued, 2);
        msg.audience = Audience::Tenant;
        assert_eq!(hub.deliver(&msg).queued, 3);
        assert_eq!(
            (queued(&a1), queued(&a2), queued(&b), queued(&other)),
            (2, 2, 1, 0)
        );
        hub.remove(a1.id);
        hub.remove(a2.id);
        assert!(hub.inner.users.get(&(name("t"), name("alice"))).is_none());
    }
}
