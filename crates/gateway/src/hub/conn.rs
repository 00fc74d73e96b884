//! The handle through which the hub reaches one connection.

use std::sync::Mutex;

use fanout_protocol::{Codec, Name};

use super::queue::SendQueue;
use crate::message::ConnId;

/// What the hub (and the bus) know of a connection: who it is, how it
/// speaks, its send queue, and the rooms it is in. Shared as
/// `Arc<ConnHandle>` by every index of the hub.
#[derive(Debug)]
pub struct ConnHandle {
    /// Node-local id.
    pub id: ConnId,
    /// Tenant of its token.
    pub tenant: Name,
    /// User of its token.
    pub user: Name,
    /// Codec chosen by subprotocol.
    pub codec: Codec,
    /// Bounded outbound queue; also carries close requests.
    pub queue: SendQueue,
    /// The rooms this connection is a member of: the reverse of the hub's
    /// room index, kept here so that a room limit check and a disconnect
    /// need no scan. Written only by [`super::Hub::join`] and
    /// [`super::Hub::leave`], while they hold the room's entry lock, so the
    /// two directions never disagree. (The session used to keep its own
    /// copy; there is now one owner, the hub.) A `Vec`, not a set: it holds
    /// at most `limits.max_rooms_per_connection` names (100 by default),
    /// usually one or a few, and a one-room set costs ~100 B of heap where
    /// this costs 16.
    rooms: Mutex<Vec<Name>>,
}

impl ConnHandle {
    /// A connection in no room yet.
    pub fn new(id: ConnId, tenant: Name, user: Name, codec: Codec, queue: SendQueue) -> Self {
        Self {
            id,
            tenant,
            user,
            codec,
            queue,
            rooms: Mutex::new(Vec::new()),
        }
    }

    /// The id clients and logs know the connection by, `<node>-<id>` (in
    /// `welcome`). Built when asked rather than kept: it is asked for once
    /// per connection (and in the odd warning), and a stored copy cost
    /// every connection ~60 B.
    pub fn public_id(&self, node: &str) -> String {
        format!("{node}-{}", self.id)
    }

    /// The rooms this connection is in, at this instant.
    pub fn rooms(&self) -> Vec<Name> {
        self.lock_rooms().clone()
    }

    /// How many rooms this connection is in.
    pub fn room_count(&self) -> usize {
        self.lock_rooms().len()
    }

    /// Whether this connection is in `room`.
    pub fn is_in(&self, room: &Name) -> bool {
        self.lock_rooms().contains(room)
    }

    /// The room set; a poisoned lock still holds a consistent set (every
    /// update is one insert or remove).
    pub(super) fn lock_rooms(&self) -> std::sync::MutexGuard<'_, Vec<Name>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}
