//! The one error type of domain operations, mapped to an `error` frame code
//! by sessions and to an HTTP status by the API.

use fanout_protocol::{ErrorCode, NameError};

use crate::cluster::BusError;

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
    /// The message is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
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
            NodeError::Forbidden(_) => ErrorCode::Forbidden,
            NodeError::TooLarge(_) => ErrorCode::TooLarge,
            NodeError::Unavailable(_) | NodeError::Internal(_) => ErrorCode::Unavailable,
        }
    }
}
