//! The errors of domain operations, and the one place where they become
//! wire codes.
//!
//! Every failure a client or backend can be told about is a [`NodeError`];
//! [`NodeError::code`] maps it to the `error` frame code of the WebSocket
//! protocol, and `http::error` maps it to a status and a JSON code (the two
//! contracts have different code lists; each mapping is one `match`). Bus
//! errors arrive typed ([`BusError`]) and all mean "unavailable, retry";
//! a draining node says so itself rather than blaming the bus.

use fanout_protocol::{ErrorCode, NameError};

use crate::auth::VerifierError;
use crate::cluster::{BusError, NotReady};

/// Why a domain operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A tenant, user, room or event name breaks the name rule.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The connection is already in `max_rooms_per_connection` rooms.
    #[error("room limit reached: at most {max} rooms per connection")]
    RoomLimit {
        /// The configured limit.
        max: usize,
    },
    /// The message is larger than allowed.
    #[error("message is {size} bytes encoded; at most {max} are allowed")]
    TooLarge {
        /// Encoded size (JSON).
        size: usize,
        /// `limits.max_message_bytes`.
        max: usize,
    },
    /// The room keeps no history (no `[[history]]` rule matches it).
    #[error("room {0} keeps no history")]
    NoHistory(String),
    /// A history read's `since` is of another epoch or older than what is
    /// kept; the stream's current position.
    #[error(
        "history_gap: the room's stream is at epoch {epoch}, offset {offset}; the messages after the given position are no longer (or were never) in its history"
    )]
    HistoryGap {
        /// The stream's epoch.
        epoch: String,
        /// Its latest offset.
        offset: u64,
    },
    /// The node is draining; the caller should go to another node.
    #[error("node is draining; retry on another node")]
    Draining,
    /// The cluster cannot take it now.
    #[error(transparent)]
    Unavailable(#[from] BusError),
    /// A bug: the cause is logged, the client gets a generic message.
    #[error("internal error")]
    Internal(String),
}

impl NodeError {
    /// The `error` frame code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::InvalidName(_) | NodeError::BadRequest(_) => ErrorCode::BadRequest,
            NodeError::Forbidden(_) | NodeError::RoomLimit { .. } => ErrorCode::Forbidden,
            NodeError::TooLarge { .. } => ErrorCode::TooLarge,
            NodeError::NoHistory(_) => ErrorCode::NotFound,
            NodeError::HistoryGap { .. } => ErrorCode::HistoryGap,
            NodeError::Draining | NodeError::Unavailable(_) | NodeError::Internal(_) => {
                ErrorCode::Unavailable
            }
        }
    }
}

/// Why a node is not ready (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unready {
    /// The node is draining.
    #[error("draining")]
    Draining,
    /// The bus cannot carry traffic.
    #[error(transparent)]
    Bus(#[from] NotReady),
}

/// Why the node could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A token verification key could not be loaded.
    #[error(transparent)]
    Auth(#[from] VerifierError),
    /// An API key's tenant is not a valid name.
    #[error("api_keys: {0}")]
    ApiKeys(#[source] NameError),
}
