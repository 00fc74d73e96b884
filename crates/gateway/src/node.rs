//! The node: the one domain object that sessions and HTTP handlers call.
//!
//! It owns the live state built from [`Config`]: the hub, the bus, the token
//! verifier, the API keys, the draining flag. Handlers stay thin: parse,
//! make one call here, map the result. The publish path reads top to bottom:
//!
//! ```text
//! validate names ─▶ encode once (both codecs) ─▶ bus.publish (other nodes) ─▶ hub.deliver (local queues)
//! ```
//!
//! The bus goes first: if it cannot take the message, nothing was delivered
//! anywhere and the caller gets 503, so a retry cannot duplicate a message
//! for local members.

mod error;
mod publish;

use std::sync::Arc;
use std::time::Instant;

use fanout_protocol::api::{NodeStats, StatsResponse};
use fanout_protocol::{CloseCode, Name, PresenceMember};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::NodeError;
pub use publish::{Prepared, PresenceEvent, Publish, PublishSource, now_millis};

use crate::auth::{ApiKeys, TokenVerifier};
use crate::cluster::Bus;
use crate::config::Config;
use crate::hub::ConnHandle;
use crate::hub::{ConnLimits, Hub};

/// Close reason of the 1012 a draining node sends.
const DRAIN_REASON: &str = "node is draining";

struct NodeInner {
    id: String,
    config: Config,
    hub: Hub,
    bus: Arc<dyn Bus>,
    verifier: TokenVerifier,
    api_keys: ApiKeys,
    metrics: PrometheusHandle,
    /// Cancelled when the drain starts; sessions still authenticating wait on it.
    draining: CancellationToken,
    started: Instant,
    sessions: TaskTracker,
}

/// A running node's shared state. Clone is cheap.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// Everything [`Node::new`] needs besides the config.
pub struct NodeParts {
    /// Node id (resolved: configured or generated).
    pub id: String,
    /// The local hub, shared with the bus.
    pub hub: Hub,
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The Prometheus handle `/metrics` renders.
    pub metrics: PrometheusHandle,
}

impl Node {
    /// Builds the node. Fails with a message naming the config field when a
    /// key file cannot be loaded.
    pub fn new(config: Config, parts: NodeParts) -> Result<Self, String> {
        let verifier = TokenVerifier::new(&config.auth, config.is_dev_mode())?;
        let api_keys = if config.is_dev_mode() {
            ApiKeys::new(&[crate::config::ApiKeyConfig {
                key: crate::config::DEV_API_KEY.into(),
                tenant: None,
            }])
        } else {
            ApiKeys::new(&config.api_keys)
        }
        .map_err(|e| format!("api_keys: {e}"))?;
        Ok(Self {
            inner: Arc::new(NodeInner {
                id: parts.id,
                config,
                hub: parts.hub,
                bus: parts.bus,
                verifier,
                api_keys,
                metrics: parts.metrics,
                draining: CancellationToken::new(),
                started: Instant::now(),
                sessions: TaskTracker::new(),
            }),
        })
    }

    /// Node id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The local hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The cluster bus.
    pub fn bus(&self) -> &dyn Bus {
        self.inner.bus.as_ref()
    }

    /// Client token verifier.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.inner.verifier
    }

    /// Backend API keys.
    pub fn api_keys(&self) -> &ApiKeys {
        &self.inner.api_keys
    }

    /// Renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// Tracks session tasks so shutdown can wait for them.
    pub fn sessions(&self) -> &TaskTracker {
        &self.inner.sessions
    }

    /// Connection limits from config.
    pub fn conn_limits(&self) -> ConnLimits {
        let l = &self.inner.config.limits;
        ConnLimits {
            per_user: l.max_connections_per_user,
            per_tenant: l.max_connections_per_tenant,
        }
    }

    /// `Ok` when the node takes new connections and publishes, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        self.inner.bus.readiness()
    }

    /// Whether the node is draining (shutting down).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Starts draining: readiness turns false and new upgrades get 503.
    pub fn begin_drain(&self) {
        self.inner.draining.cancel();
    }

    /// Completes when the drain starts.
    pub async fn drain_started(&self) {
        self.inner.draining.cancelled().await;
    }

    /// Asks every local connection to close with 1012.
    pub fn close_all_connections(&self) -> usize {
        self.inner.hub.close_all(CloseCode::Restart, DRAIN_REASON)
    }

    /// Asks one connection to close with 1012 (the drain closes in batches).
    pub fn close_for_drain(&self, conn: &ConnHandle) {
        conn.queue.close(CloseCode::Restart, DRAIN_REASON);
    }

    /// Who is in a room, cluster-wide.
    pub async fn presence(
        &self,
        tenant: &Name,
        room: &Name,
    ) -> Result<Vec<PresenceMember>, NodeError> {
        Ok(self.inner.bus.presence(tenant, room).await?)
    }

    /// Closes a user's connections on every node with 4001; returns the local count.
    pub async fn disconnect_user(&self, tenant: &Name, user: &Name) -> Result<usize, NodeError> {
        self.inner.bus.disconnect_user(tenant, user).await?;
        Ok(self.inner.hub.close_user(
            tenant,
            user,
            CloseCode::AuthFailed,
            "disconnected by the server",
        ))
    }

    /// This node's and the cluster's counts.
    pub async fn stats(&self) -> Result<StatsResponse, NodeError> {
        let hub = &self.inner.hub;
        Ok(StatsResponse {
            node: NodeStats {
                id: self.inner.id.clone(),
                counts: fanout_protocol::api::Counts {
                    connections: hub.connection_count() as u64,
                    rooms: hub.room_count() as u64,
                },
                uptime_secs: self.inner.started.elapsed().as_secs(),
                draining: self.is_draining(),
            },
            cluster: self.inner.bus.cluster_stats().await?,
        })
    }
}
