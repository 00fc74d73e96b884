//! The handle through which the hub reaches one connection.

use fanout_protocol::{Codec, Name};

use super::queue::SendQueue;

/// Node-local connection number; unique for the life of the process.
pub type ConnId = u64;

/// What the hub (and the bus) know of a connection: who it is, how it
/// speaks, and its send queue. Shared as `Arc<ConnHandle>` by every index.
#[derive(Debug)]
pub struct ConnHandle {
    /// Node-local id.
    pub id: ConnId,
    /// Public id sent in `welcome` (`<node>-<id>`).
    pub public_id: String,
    /// Tenant of its token.
    pub tenant: Name,
    /// User of its token.
    pub user: Name,
    /// Codec chosen by subprotocol.
    pub codec: Codec,
    /// Bounded outbound queue; also carries close requests.
    pub queue: SendQueue,
}
