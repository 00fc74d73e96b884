//! Extractors of the API: the API key, a body in JSON or MessagePack, and
//! path parameters and queries whose refusals are the API's JSON errors.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::auth::ApiKeyScope;
use crate::node::Node;

/// The bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A request authenticated with an API key.
#[derive(Debug, Clone)]
pub(crate) struct ApiKey(pub(crate) ApiKeyScope);

impl ApiKey {
    /// 403 unless the key may act on `tenant`.
    pub(crate) fn check_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        if self.0.allows(tenant) {
            Ok(())
        } else {
            Err(ApiError::ForbiddenTenant(tenant.to_owned()))
        }
    }
}

impl FromRequestParts<Node> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Node) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        node.api_keys()
            .lookup(token)
            .cloned()
            .map(ApiKey)
            .ok_or(ApiError::Unauthorized)
    }
}

/// A body decoded from JSON (default) or MessagePack (`application/msgpack`).
#[derive(Debug)]
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<Node> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Node) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|| "application/json".into());
        let limit = node.config().limits.max_http_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::BodyTooLarge(limit))?;
        let value = match content_type.as_str() {
            "application/json" => serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadBody(format!("invalid JSON body: {e}")))?,
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                fanout_protocol::codec::msgpack_from_slice(&bytes)
                    .map_err(|e| ApiError::BadBody(format!("invalid MessagePack body: {e}")))?
            }
            other => return Err(ApiError::UnsupportedMediaType(other.to_owned())),
        };
        Ok(Body(value))
    }
}

/// `Path`, refused with the API's JSON error (axum's own rejection is
/// plain text, e.g. for a percent-encoded name that is not UTF-8).
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send> FromRequestParts<Node> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Node) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, node).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::BadBody(e.body_text())),
        }
    }
}

/// `Query`, refused with the API's JSON error (axum's own is plain text).
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned + Send> FromRequestParts<Node> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Node) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, node).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::BadBody(e.body_text())),
        }
    }
}
