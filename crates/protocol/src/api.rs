//! Bodies of the backend HTTP API (docs/protocol.md §5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::frames::PresenceMember;

/// `POST /v1/publish` body, and one entry of a batch.
///
/// With `room`: to the room's subscribers. With `user`: to that user's
/// connections. With neither: to every connection of the tenant. Both at
/// once is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Tenant to publish into.
    pub tenant: String,
    /// Target room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Target user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Event name.
    pub event: String,
    /// Payload.
    #[serde(default)]
    pub data: Value,
    /// Makes a retry safe: a publish whose key was already accepted
    /// recently is not delivered again (§8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `POST /v1/publish/batch` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The messages, published in order.
    pub messages: Vec<PublishRequest>,
}

/// `202` answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// Message id, also in the delivered `message` frames.
    pub id: String,
    /// In a room with history: the message's offset (§7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// In a room with history: the stream's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `202` answer to a batch: ids in the order of `messages`. Also the
/// `ids` of the entries accepted before a batch failed (beside `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// Message ids.
    pub ids: Vec<String>,
}

/// `GET /v1/tenants/{t}/rooms/{r}/history` answer (§7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResponse {
    /// The room.
    pub room: String,
    /// The stream's epoch.
    pub epoch: String,
    /// The room's latest offset.
    pub offset: u64,
    /// `message` frames, oldest first.
    pub messages: Vec<Value>,
}

/// Answer to a presence query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResponse {
    /// Users present in the room.
    pub members: Vec<PresenceMember>,
}

/// Error body: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
    /// A batch that failed part-way: the ids of the entries that were
    /// accepted (delivered) before the failure, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

/// The inner error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code such as `invalid_name`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Counts for one scope of `/v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Open, authenticated connections.
    pub connections: u64,
    /// Rooms with at least one member.
    pub rooms: u64,
}

/// `GET /v1/stats` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// This node.
    pub node: NodeStats,
    /// The whole cluster (equal to `node` on the embedded bus).
    pub cluster: ClusterStats,
}

/// This node's part of `/v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node id.
    pub id: String,
    /// Connection and room counts on this node.
    #[serde(flatten)]
    pub counts: Counts,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Whether the node is draining.
    pub draining: bool,
}

/// The cluster's part of `/v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Live nodes.
    pub nodes: u64,
    /// Connection and distinct room counts over all nodes.
    #[serde(flatten)]
    pub counts: Counts,
    /// Which bus carries cross-node traffic (`embedded` or `redis`).
    pub bus: String,
}
