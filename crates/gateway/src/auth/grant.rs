//! What a verified token allows.

use fanout_protocol::pattern::any_matches;
use fanout_protocol::{Name, RoomPattern};

/// The identity and permissions of one verified token.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Tenant (`tenant` claim).
    pub tenant: Name,
    /// User (`sub` claim).
    pub user: Name,
    /// Expiry, seconds since the epoch (`exp` claim).
    pub expires_at: u64,
    /// Rooms the client may subscribe to (`rooms` claim).
    pub rooms: Vec<RoomPattern>,
    /// Rooms the client may publish into (`publish` claim).
    pub publish: Vec<RoomPattern>,
    /// Whether presence queries are allowed (`presence` claim, default true).
    pub presence: bool,
}

impl Grant {
    /// Whether the token allows subscribing to `room`.
    pub fn can_subscribe(&self, room: &str) -> bool {
        any_matches(&self.rooms, room)
    }

    /// Whether the token allows publishing into `room`.
    pub fn can_publish(&self, room: &str) -> bool {
        any_matches(&self.publish, room)
    }

    /// Whether the token allows asking who is in `room`: presence must be
    /// allowed and the room one the client may subscribe to.
    pub fn can_query_presence(&self, room: &str) -> bool {
        self.presence && self.can_subscribe(room)
    }
}
