//! Handlers of the backend API (`/v1/...`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fanout_protocol::Name;
use fanout_protocol::api::{
    BatchRequest, BatchResponse, PresenceResponse, PublishRequest, PublishResponse, StatsResponse,
};
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{ApiKey, Body};
use crate::node::{Node, NodeError, Publish, PublishSource};

fn node_ready(node: &Node) -> Result<(), ApiError> {
    if node.is_draining() {
        return Err(NodeError::Draining.into());
    }
    Ok(())
}

/// `POST /v1/publish`.
pub(crate) async fn publish(
    State(node): State<Node>,
    key: ApiKey,
    Body(req): Body<PublishRequest>,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    node_ready(&node)?;
    key.check_tenant(&req.tenant)?;
    let id = node
        .publish(Publish::from_request(req)?, PublishSource::Http)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(PublishResponse { id })))
}

/// `POST /v1/publish/batch`: every entry is validated and encoded before any is sent.
pub(crate) async fn publish_batch(
    State(node): State<Node>,
    key: ApiKey,
    Body(req): Body<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), ApiError> {
    node_ready(&node)?;
    let max = node.config().limits.max_batch_messages;
    if req.messages.len() > max {
        return Err(ApiError::BadBody(format!(
            "a batch holds at most {max} messages, got {}",
            req.messages.len()
        )));
    }
    let mut prepared = Vec::with_capacity(req.messages.len());
    for (index, msg) in req.messages.into_iter().enumerate() {
        key.check_tenant(&msg.tenant)?;
        let entry = Publish::from_request(msg).and_then(|p| node.prepare(p));
        prepared.push(entry.map_err(|source| ApiError::BatchEntry { index, source })?);
    }
    let mut ids = Vec::with_capacity(prepared.len());
    for p in prepared {
        ids.push(node.send(p, PublishSource::Http).await?);
    }
    Ok((StatusCode::ACCEPTED, Json(BatchResponse { ids })))
}

fn names(tenant: &str, second_kind: &'static str, second: &str) -> Result<(Name, Name), ApiError> {
    let tenant = Name::new("tenant", tenant).map_err(NodeError::from)?;
    let second = Name::new(second_kind, second).map_err(NodeError::from)?;
    Ok((tenant, second))
}

/// `GET /v1/tenants/{tenant}/rooms/{room}/presence`.
pub(crate) async fn presence(
    State(node): State<Node>,
    key: ApiKey,
    Path((tenant, room)): Path<(String, String)>,
) -> Result<Json<PresenceResponse>, ApiError> {
    key.check_tenant(&tenant)?;
    let (tenant, room) = names(&tenant, "room", &room)?;
    let members = node.presence(&tenant, &room).await?;
    Ok(Json(PresenceResponse { members }))
}

/// `POST /v1/tenants/{tenant}/users/{user}/disconnect`.
pub(crate) async fn disconnect_user(
    State(node): State<Node>,
    key: ApiKey,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    key.check_tenant(&tenant)?;
    let (tenant, user) = names(&tenant, "user", &user)?;
    let local = node.disconnect_user(&tenant, &user).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "disconnected_on_this_node": local })),
    ))
}

/// `GET /v1/stats`. A tenant-limited key may read it: it holds counts only.
pub(crate) async fn stats(
    State(node): State<Node>,
    _key: ApiKey,
) -> Result<Json<StatsResponse>, ApiError> {
    Ok(Json(node.stats().await?))
}
