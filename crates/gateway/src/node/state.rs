//! The node's shared state, how it is built, and the calls that only read
//! it (identity, configuration, readiness, counts).

use std::sync::Arc;
use std::time::Instant;

use fanout_protocol::api::{NodeStats, StatsResponse};
use fanout_protocol::{CloseCode, Name};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{BuildError, NodeError, Unready};
use super::rules::HistoryRules;
use crate::auth::{ApiKeys, TokenVerifier};
use crate::cluster::Bus;
use crate::config::Config;
use crate::hub::{ConnLimits, Hub};

/// The node's shared state, behind one `Arc`. Every field is set once by
/// [`Node::new`]; what changes at run time changes inside the handles.
pub(super) struct NodeInner {
    /// Node id (configured or generated), in `welcome` and the registry.
    pub(super) id: String,
    /// The configuration the node was built from (never reloaded).
    pub(super) config: Config,
    /// The local socket map: the truth for delivery on this node.
    pub(super) hub: Hub,
    /// Other nodes (Redis) or nobody (embedded).
    pub(super) bus: Arc<dyn Bus>,
    /// Client token verification.
    pub(super) verifier: TokenVerifier,
    /// Backend API keys.
    pub(super) api_keys: ApiKeys,
    /// `[[history]]`, compiled: which rooms keep history.
    pub(super) history: HistoryRules,
    /// Renders `/metrics`.
    pub(super) metrics: PrometheusHandle,
    /// Cancelled when the drain starts (by [`Node::begin_drain`]); sessions
    /// still authenticating wait on it.
    pub(super) draining: CancellationToken,
    /// Cancelled when the drain starts closing clients, `readiness_delay`
    /// after it began (by [`Node::begin_closing`]); from then on publishes
    /// are refused as draining. Until then a load balancer may still route
    /// publishes here, and they are served.
    pub(super) closing: CancellationToken,
    /// Process start, for `uptime_secs`.
    pub(super) started: Instant,
    /// Every session task, so that the drain can wait for them to end.
    pub(super) sessions: TaskTracker,
    /// The task announcing the bus's presence changes (closed from the
    /// start: waiting on it waits for the last announcement).
    pub(super) announcing: TaskTracker,
}

/// A running node's shared state. Clone is cheap.
#[derive(Clone)]
pub struct Node {
    pub(super) inner: Arc<NodeInner>,
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
    /// Builds the node. Fails with an error naming the config field when a
    /// key cannot be loaded.
    pub fn new(config: Config, parts: NodeParts) -> Result<Self, BuildError> {
        let verifier = TokenVerifier::new(&config.auth, config.is_dev_mode())?;
        let api_keys = if config.is_dev_mode() {
            ApiKeys::new(&[crate::config::ApiKeyConfig {
                key: crate::config::DEV_API_KEY.into(),
                tenant: None,
            }])
        } else {
            ApiKeys::new(&config.api_keys)
        }
        .map_err(BuildError::ApiKeys)?;
        let history = HistoryRules::new(&config.history);
        let node = Self {
            inner: Arc::new(NodeInner {
                id: parts.id,
                config,
                hub: parts.hub,
                bus: parts.bus,
                verifier,
                api_keys,
                history,
                metrics: parts.metrics,
                draining: CancellationToken::new(),
                closing: CancellationToken::new(),
                started: Instant::now(),
                sessions: TaskTracker::new(),
                announcing: TaskTracker::new(),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            node.start_announcing();
        }
        // Closed at once: waiting on it waits for the announcing task, if any.
        node.inner.announcing.close();
        Ok(node)
    }

    /// Node id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Client token verifier.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.inner.verifier
    }

    /// Backend API keys.
    pub fn api_keys(&self) -> &ApiKeys {
        &self.inner.api_keys
    }

    /// `embedded` or `redis`.
    pub fn bus_kind(&self) -> &'static str {
        self.inner.bus.kind()
    }

    /// Renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }

    /// Tracks session tasks so shutdown can wait for them.
    pub fn sessions(&self) -> &TaskTracker {
        &self.inner.sessions
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.hub.connection_count()
    }

    pub(super) fn conn_limits(&self) -> ConnLimits {
        let l = &self.inner.config.limits;
        ConnLimits {
            per_user: l.max_connections_per_user,
            per_tenant: l.max_connections_per_tenant,
        }
    }

    /// `Ok` when the node takes new connections and publishes, else why not.
    pub fn readiness(&self) -> Result<(), Unready> {
        if self.is_draining() {
            return Err(Unready::Draining);
        }
        Ok(self.inner.bus.readiness()?)
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

#[cfg(test)]
impl Node {
    /// A node with the default config on the embedded bus, for unit tests.
    pub(crate) fn embedded_for_tests() -> Node {
        let hub = Hub::new();
        Node::new(
            Config::default(),
            NodeParts {
                id: "test-node".into(),
                hub: hub.clone(),
                bus: Arc::new(crate::cluster::embedded::EmbeddedBus::new(
                    hub,
                    Default::default(),
                )),
                metrics: crate::metrics::install(),
            },
        )
        .expect("the default config builds a node")
    }
}
