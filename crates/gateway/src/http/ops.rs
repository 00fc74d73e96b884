//! Unauthenticated operational endpoints.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::node::Node;

/// `GET /healthz`: the process is alive and serving HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the node takes connections, else 503 and why.
pub(crate) async fn readyz(State(node): State<Node>) -> impl IntoResponse {
    match node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `GET /metrics`: Prometheus text format. The per-tenant connection
/// gauge is rendered here, bounded to the top tenants (`metrics.top_tenants`).
pub(crate) async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    let mut text = node.render_metrics();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&crate::metrics::tenant_connections().render(node.config().metrics.top_tenants));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
