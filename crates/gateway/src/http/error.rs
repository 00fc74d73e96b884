//! The one error type of the HTTP API and its mapping to status and body.
//!
//! Domain errors ([`NodeError`]) are mapped to a status and a JSON `code`
//! here and nowhere else; the WebSocket side maps the same errors to frame
//! codes in `NodeError::code`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fanout_protocol::api::{ErrorBody, ErrorResponse};

use crate::node::NodeError;

/// Everything an API request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or unknown API key.
    #[error("missing or unknown API key")]
    Unauthorized,
    /// The key is limited to another tenant.
    #[error("this API key may not act on tenant {0:?}")]
    ForbiddenTenant(String),
    /// Body could not be parsed.
    #[error("{0}")]
    BadBody(String),
    /// Unsupported `Content-Type`.
    #[error("unsupported content type {0:?}; send application/json or application/msgpack")]
    UnsupportedMediaType(String),
    /// Body larger than `max_http_body_bytes`.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// A domain error.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A batch stopped at an entry it could not send; the entries before
    /// it were delivered (their ids are in the answer).
    #[error("messages[{index}]: {source}")]
    BatchFailed {
        /// Index of the entry that failed.
        index: usize,
        /// Ids of the entries delivered before it, in order.
        accepted: Vec<String>,
        /// Why the entry failed.
        source: NodeError,
    },
    /// A batch entry failed validation.
    #[error("messages[{index}]: {source}")]
    BatchEntry {
        /// Index into `messages`.
        index: usize,
        /// The entry's error.
        source: NodeError,
    },
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The route exists but not with this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::ForbiddenTenant(_) => (StatusCode::FORBIDDEN, "forbidden_tenant"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Node(e)
            | ApiError::BatchEntry { source: e, .. }
            | ApiError::BatchFailed { source: e, .. } => match e {
                NodeError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
                NodeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                NodeError::Forbidden(_) | NodeError::RoomLimit { .. } => {
                    (StatusCode::FORBIDDEN, "forbidden")
                }
                NodeError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                NodeError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
                NodeError::NoHistory(_) => (StatusCode::NOT_FOUND, "no_history"),
                NodeError::HistoryGap { .. } => (StatusCode::CONFLICT, "history_gap"),
                NodeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                NodeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Node(NodeError::Internal(cause)) = &self {
            tracing::error!(%cause, "internal error in HTTP API");
        }
        let message = self.to_string();
        let ids = match self {
            ApiError::BatchFailed { accepted, .. } => Some(accepted),
            _ => None,
        };
        let body = ErrorResponse {
            error: ErrorBody {
                code: code.into(),
                message,
            },
            ids,
        };
        (status, Json(body)).into_response()
    }
}
