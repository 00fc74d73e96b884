//! HTTP surface: the WebSocket upgrade, the backend API, and operations.
//!
//! `router(node)` builds the whole app from explicit state, apart from
//! `main`, so tests serve it on port 0. Handlers are thin: extract, one
//! call on [`Node`], map the result; every failure goes through
//! [`error::ApiError`], which logs causes and sends clients clean messages.

mod api;
mod error;
mod extract;
pub mod listener;
mod ops;
pub mod tls;
mod ws;

use axum::Router;
use axum::routing::{get, post};

pub use self::error::ApiError;

use crate::node::Node;

/// The whole HTTP app of a node's main listener. `/metrics` is served here
/// only when there is no `metrics_listen` (then it is served there only).
pub fn router(node: Node) -> Router {
    let ops = if node.config().metrics_listen.is_some() {
        health_router()
    } else {
        ops_router()
    };
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/v1/publish", post(api::publish))
        .route("/v1/publish/batch", post(api::publish_batch))
        .route(
            "/v1/tenants/{tenant}/rooms/{room}/presence",
            get(api::presence),
        )
        .route(
            "/v1/tenants/{tenant}/rooms/{room}/history",
            get(api::history),
        )
        .route(
            "/v1/tenants/{tenant}/users/{user}/disconnect",
            post(api::disconnect_user),
        )
        .route("/v1/stats", get(api::stats))
        .merge(ops)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(node)
}

/// Counts API requests by route and status (`/ws` upgrades and ops excluded).
async fn count_requests(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(req).await;
    if let Some(route) = route.filter(|r| r.starts_with("/v1/")) {
        crate::metrics::http_request(route, response.status().as_u16());
    }
    response
}

/// `/healthz`, `/readyz` and `/metrics` only, for a separate metrics listener.
pub fn ops_router() -> Router<Node> {
    health_router().route("/metrics", get(ops::metrics))
}

/// `/healthz` and `/readyz`.
fn health_router() -> Router<Node> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
}
