//! Binding, serving and draining a node.
//!
//! [`Server::bind`] turns a [`Config`] into a listening node; [`Server::run`]
//! serves until its shutdown token is cancelled and then drains within the
//! configured grace: readiness false, no new upgrades (503), every client
//! closed with 1012, wait for sessions to finish, then stop the bus. Tests
//! use the same type on port 0. Both listeners serve HTTP through
//! `server::connections`, which bounds every connection until it is upgraded
//! (`[http]`).

mod connections;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Bus;
use crate::cluster::embedded::{EmbeddedBus, EmbeddedLimits};
use crate::cluster::redis::RedisBus;
use crate::config::Config;
use crate::http;
use crate::http::listener::GuardedListener;
use crate::http::tls::{self, TlsListener};
use crate::hub::Hub;
use crate::node::{Node, NodeParts};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("invalid configuration: {0}")]
    Tls(#[from] crate::http::tls::TlsError),
    /// The Redis bus could not be built from `[redis]`.
    #[error("invalid configuration: {0}")]
    Redis(#[from] crate::cluster::redis::StartError),
    /// A key could not be loaded.
    #[error("invalid configuration: {0}")]
    Node(#[from] crate::node::BuildError),
}

/// A bound, not yet serving node.
pub struct Server {
    node: Node,
    listener: TcpListener,
    /// TLS on the main listener, when `[tls]` is configured.
    tls: Option<TlsAcceptor>,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
}

/// A node id from the host name plus a random suffix, so that two processes
/// on one host (or a restarted pod) never share an id.
fn generated_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii() && fanout_protocol::names::is_name_byte(*c as u8))
        .take(100)
        .collect();
    let host = if host.is_empty() {
        "fanout".to_string()
    } else {
        host
    };
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Accept backlog. The OS default (128) overflows when thousands of clients
/// reconnect at once (a drained node, a deploy), and every dropped SYN costs
/// its client a one-second retransmit; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

impl Server {
    /// Builds the node and binds its listeners.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let hub = Hub::new();
        // Certificate problems are reported before anything listens.
        let tls = match &config.tls {
            Some(t) => Some(tls::acceptor(t)?),
            None => None,
        };
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let id = config.node_id.clone().unwrap_or_else(generated_node_id);
        let bus: Arc<dyn Bus> = match &config.redis {
            Some(redis) => Arc::new(RedisBus::start(
                redis,
                &id,
                listener.local_addr().unwrap_or(config.listen),
                hub.clone(),
            )?),
            None => Arc::new(EmbeddedBus::new(
                hub.clone(),
                EmbeddedLimits {
                    history_memory_bytes: config.limits.history_memory_bytes,
                    idempotency_keys: config.limits.idempotency_keys,
                },
            )),
        };
        let node = Node::new(
            config,
            NodeParts {
                id,
                hub,
                bus,
                metrics: crate::metrics::install(),
            },
        )?;
        node.spawn_stream_repair();
        Ok(Self {
            node,
            listener,
            tls,
            metrics_listener,
            shutdown: CancellationToken::new(),
        })
    }

    /// Whether the main listener speaks TLS (`[tls]` configured).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address the main listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.node.config().listen)
    }

    /// The address of the separate metrics listener, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The node's shared state.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Cancelling this token starts the drain.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains and returns.
    pub async fn run(self) -> std::io::Result<()> {
        let Server {
            node,
            listener,
            tls,
            metrics_listener,
            shutdown,
        } = self;
        // The listeners keep serving during the drain, so that `/readyz`
        // answers 503 and new upgrades get 503 instead of a refused
        // connection; they stop once the sessions are gone.
        let http_stop = CancellationToken::new();
        let app = http::router(node.clone());
        let limits = node.config().http.clone();
        let guarded = GuardedListener::new(listener);
        let mut main = match tls {
            Some(acceptor) => tokio::spawn(connections::serve(
                TlsListener::new(guarded, acceptor),
                app,
                limits.clone(),
                http_stop.clone(),
            )),
            None => tokio::spawn(connections::serve(
                guarded,
                app,
                limits.clone(),
                http_stop.clone(),
            )),
        };
        let ops = metrics_listener.map(|l| {
            let app = http::ops_router().with_state(node.clone());
            tokio::spawn(connections::serve(
                GuardedListener::new(l),
                app,
                limits.clone(),
                http_stop.clone(),
            ))
        });

        shutdown.cancelled().await;
        // One deadline for the whole shutdown: `shutdown.grace` from the signal.
        let grace = node.config().shutdown.grace;
        let deadline = tokio::time::Instant::now() + grace;
        // The end of the grace period is kept for deregistering from Redis,
        // so that clients that are slow to close cannot leave the registry
        // stale until its TTL.
        let reserve = (grace / 4).min(Duration::from_secs(2));
        drain(&node, deadline - reserve).await;
        http_stop.cancel();
        if tokio::time::timeout_at(deadline, &mut main).await.is_err() {
            warn!("HTTP requests still open after the grace period; exiting anyway");
            main.abort();
        }
        if let Some(mut ops) = ops
            && tokio::time::timeout_at(deadline, &mut ops).await.is_err()
        {
            ops.abort();
        }
        // Deregistering needs Redis; without it (or time), other nodes ignore
        // this node's entries once its heartbeat lapses and their sweeper
        // removes them (announcing its users' leaves).
        if tokio::time::timeout_at(deadline, node.leave_cluster())
            .await
            .is_err()
        {
            warn!(
                "bus shutdown timed out; the other nodes' sweeper removes this node's registry entries"
            );
        }
        info!("stopped");
        Ok(())
    }
}

/// The drain: readiness false at once; after `readiness_delay` the clients
/// are closed with 1012 in batches over `drain_window`; then the node waits
/// for its sessions to end. Everything is bounded by `deadline`.
///
/// Why batches: every closed client reconnects at once through the load
/// balancer; closing 20,000 clients in one instant would land 20,000
/// handshakes (token verification, registry writes) on the other nodes in
/// the same second. Spread over the window they arrive as a steady stream.
async fn drain(node: &Node, deadline: tokio::time::Instant) {
    node.begin_drain();
    let cfg = &node.config().shutdown;
    info!(
        connections = node.connection_count(),
        readiness_delay = ?cfg.readiness_delay,
        drain_window = ?cfg.drain_window,
        grace = ?cfg.grace,
        "draining: not ready; clients are closed after the readiness delay"
    );
    tokio::time::sleep_until((tokio::time::Instant::now() + cfg.readiness_delay).min(deadline))
        .await;
    // The node's connections stop counting toward limits before the first
    // client is closed. A Redis that does not answer could not admit the
    // reconnecting clients elsewhere either: it holds the closes no longer
    // than a tenth of the window (at most CLOSING_WAIT).
    let wait = CLOSING_WAIT.min(cfg.drain_window / 10);
    let counted_out = (tokio::time::Instant::now() + wait).min(deadline);
    if tokio::time::timeout_at(counted_out, node.begin_closing())
        .await
        .is_err()
    {
        warn!(
            "the cluster did not confirm in time that this node's connections no longer count; closing anyway"
        );
    }
    node.sessions().close();
    close_in_batches(node, cfg.drain_window, deadline).await;
    // Sessions admitted while the batches went out are closed on the next pass.
    loop {
        let pass = tokio::time::Instant::now() + Duration::from_millis(100);
        if tokio::time::timeout_at(pass.min(deadline), node.sessions().wait())
            .await
            .is_ok()
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                left = node.connection_count(),
                "grace period over; dropping remaining connections"
            );
            break;
        }
        node.close_all_connections();
    }
}

/// Longest wait, when the drain starts closing, for the cluster to stop
/// counting this node's connections (see [`Node::begin_closing`]); a tenth
/// of `shutdown.drain_window` when that is shorter.
const CLOSING_WAIT: Duration = Duration::from_secs(1);

/// Time between two batches of closes.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Closes the connections open now with 1012, spread evenly over `window`.
async fn close_in_batches(node: &Node, window: Duration, deadline: tokio::time::Instant) {
    let conns = node.connections();
    let ticks = (window.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
    let batch = conns.len().div_ceil(ticks).max(1);
    let start = tokio::time::Instant::now();
    for (i, chunk) in conns.chunks(batch).enumerate() {
        let due = (start + DRAIN_TICK * i as u32).min(deadline);
        tokio::time::sleep_until(due).await;
        for conn in chunk {
            node.close_for_drain(conn);
        }
    }
    info!(
        closed = conns.len(),
        "drain: every client was asked to reconnect"
    );
}
