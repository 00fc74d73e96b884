//! Handlers of the backend API (`/v1/...`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fanout_protocol::api::{
    BatchRequest, BatchResponse, HistoryResponse, PresenceResponse, PublishRequest,
    PublishResponse, StatsResponse,
};
use fanout_protocol::{Name, StreamPosition};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{ApiKey, ApiPath, ApiQuery, Body};
use crate::node::{Node, NodeError, Publish, PublishSource, Sent};

fn node_ready(node: &Node) -> Result<(), ApiError> {
    // Served through `readiness_delay`: a load balancer may still route here.
    if node.is_closing() {
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
    let sent = node
        .publish(Publish::from_request(req)?, PublishSource::Http)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(response(sent))))
}

fn response(sent: Sent) -> PublishResponse {
    PublishResponse {
        id: sent.id,
        offset: sent.position.as_ref().map(|p| p.offset),
        epoch: sent.position.map(|p| p.epoch.to_string()),
    }
}

/// `POST /v1/publish/batch`: every entry is validated and encoded before
/// any is sent; then they are sent in order, and a failure part-way answers
/// the error with the ids of the entries already delivered.
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
    for (index, p) in prepared.into_iter().enumerate() {
        match node.send(p, PublishSource::Http).await {
            Ok(sent) => ids.push(sent.id),
            Err(source) => {
                return Err(ApiError::BatchFailed {
                    index,
                    accepted: ids,
                    source,
                });
            }
        }
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
    ApiPath((tenant, room)): ApiPath<(String, String)>,
) -> Result<Json<PresenceResponse>, ApiError> {
    key.check_tenant(&tenant)?;
    let (tenant, room) = names(&tenant, "room", &room)?;
    let members = node.presence(&tenant, &room).await?;
    Ok(Json(PresenceResponse { members }))
}

/// Query of `GET /v1/tenants/{tenant}/rooms/{room}/history`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    limit: Option<u32>,
    since: Option<u64>,
    epoch: Option<String>,
}

/// `GET /v1/tenants/{tenant}/rooms/{room}/history`.
pub(crate) async fn history(
    State(node): State<Node>,
    key: ApiKey,
    ApiPath((tenant, room)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<HistoryResponse>, ApiError> {
    key.check_tenant(&tenant)?;
    let (tenant, room) = names(&tenant, "room", &room)?;
    let since = match (params.since, params.epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
        (None, None) => None,
        _ => {
            return Err(ApiError::BadBody(
                "give `since` and `epoch` together, or neither".into(),
            ));
        }
    };
    let history = node
        .history(&tenant, &room, since.as_ref(), params.limit)
        .await?;
    let messages = history
        .frames()
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    Ok(Json(HistoryResponse {
        room: room.to_string(),
        epoch: history.epoch.to_string(),
        offset: history.offset,
        messages,
    }))
}

/// `POST /v1/tenants/{tenant}/users/{user}/disconnect`.
pub(crate) async fn disconnect_user(
    State(node): State<Node>,
    key: ApiKey,
    ApiPath((tenant, user)): ApiPath<(String, String)>,
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
