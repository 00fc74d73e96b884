//! Cluster mode: the [`Bus`] over one Redis.
//!
//! ```text
//!            ┌──────────── registry actor ─────────────┐   (one task; all registry writes, in order)
//! sessions ──┤ admit / join / leave / heartbeat / resync├──▶ Redis keys (hosts, members, users, tenants, nodes)
//!            └──────────────────────────────────────────┘
//! publish ──▶ route script (room: inboxes or room channel; user: inboxes; tenant: tenant channel) ──▶ PUBLISH
//! Redis pub/sub ──▶ reader ──▶ bounded queue ──▶ dispatcher ──▶ hub ──▶ member queues
//! supervisor: connection state → readiness; reconnect → resync (resubscribe in batches, re-register)
//! ```
//!
//! Two Redis connections: the *publisher* (commands, scripts, PUBLISH) and
//! the *subscriber*. One connection each is deliberate: Redis executes one
//! connection's commands in order, and one subscriber connection receives
//! inbox, room and tenant messages in the order Redis published them, which
//! is what keeps a publisher's messages in order across a routing switch.
//! See `docs/architecture.md` for the keyspace and the routing rule.

pub mod envelope;
mod keys;
mod receiver;
mod registry;
mod scripts;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fanout_protocol::api::{ClusterStats, Counts};
use fanout_protocol::{Name, PresenceMember};
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, PubsubInterface,
    SortedSetsInterface,
};
use fred::types::Value;
use fred::types::config::{
    Config as FredConfig, ConnectionConfig, PerformanceConfig, ReconnectPolicy,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{AdmitError, Bus, BusError};
use crate::config::RedisConfig;
use crate::hub::{ConnHandle, ConnLimits, Hub, Joined, Left};
use crate::message::{Audience, Broadcast, Recipients};
use crate::metrics as m;
use envelope::{Envelope, Kind, VERSION};
use keys::Keyspace;
use receiver::Probes;
use registry::{Actor, Registry};

/// Capacity of fred's pub/sub broadcast channel (messages).
const FRED_BROADCAST_CAPACITY: usize = 4_096;

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    crate::node::now_millis()
}

/// What readiness depends on, updated by the supervisor and the registry.
#[derive(Debug)]
pub(crate) struct Health {
    connected: AtomicBool,
    synced: AtomicBool,
    last_beat_ms: AtomicU64,
    ttl_ms: u64,
    reason: Mutex<String>,
}

impl Health {
    fn new(ttl: Duration) -> Self {
        Self {
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            last_beat_ms: AtomicU64::new(0),
            ttl_ms: ttl.as_millis() as u64,
            reason: Mutex::new("connecting to redis".into()),
        }
    }

    fn set_reason(&self, why: &str) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        r.clear();
        r.push_str(why);
    }

    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(crate) fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
        if !synced {
            self.set_reason("re-registering in the cluster");
        }
    }

    pub(crate) fn heartbeat_ok(&self, now: u64) {
        self.last_beat_ms.store(now, Ordering::Release);
    }

    pub(crate) fn heartbeat_failed(&self, why: &str) {
        self.set_reason(&format!("redis heartbeat failing: {why}"));
    }

    /// Connected, registered, and the last heartbeat is younger than the TTL.
    pub(crate) fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Acquire)
            && self.synced.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.last_beat_ms.load(Ordering::Acquire)) < self.ttl_ms
    }

    pub(crate) fn unavailable(&self) -> BusError {
        BusError(
            self.reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Live and dead node ids as of the last heartbeat.
#[derive(Debug, Default)]
pub(crate) struct NodeLiveness {
    nodes: RwLock<(Vec<String>, Vec<String>)>,
}

impl NodeLiveness {
    pub(crate) fn update(&self, live: Vec<String>, dead: Vec<String>) {
        m::cluster_nodes(live.len());
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = (live, dead);
    }

    /// Nodes whose heartbeat lapsed and that are not swept yet.
    pub(crate) fn dead(&self) -> Vec<String> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

/// The Redis bus of a cluster node.
pub struct RedisBus {
    keys: Keyspace,
    config: RedisConfig,
    publisher: Client,
    registry: Registry,
    health: Arc<Health>,
    liveness: Arc<NodeLiveness>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.keys.node())
            .finish_non_exhaustive()
    }
}

fn fred_config(
    config: &RedisConfig,
) -> Result<
    (
        FredConfig,
        PerformanceConfig,
        ConnectionConfig,
        ReconnectPolicy,
    ),
    String,
> {
    let fred = FredConfig::from_url(&config.url).map_err(|e| format!("redis.url: {e}"))?;
    let perf = PerformanceConfig {
        default_command_timeout: config.command_timeout,
        // fred preallocates every one of its broadcast channels at this
        // capacity; the deep buffer is our own queue (allocated as it fills),
        // and this one only has to absorb the reader's scheduling delays.
        broadcast_channel_capacity: FRED_BROADCAST_CAPACITY,
        ..Default::default()
    };
    let conn = ConnectionConfig {
        connection_timeout: config.command_timeout,
        internal_command_timeout: config.command_timeout,
        // A command is never replayed after a reconnect: a publish that was
        // answered 503 must not be delivered later behind the caller's back.
        max_command_attempts: 1,
        ..Default::default()
    };
    // Reconnect forever, backing off from 100 ms to 2 s.
    let policy = ReconnectPolicy::new_exponential(0, 100, 2_000, 2);
    Ok((fred, perf, conn, policy))
}

impl RedisBus {
    /// Builds the bus and starts its tasks. Does not wait for Redis: the
    /// node starts with readiness false and becomes ready when Redis answers.
    /// `addr` is the node's listen address, published in its heartbeat.
    pub fn start(
        config: &RedisConfig,
        node_id: &str,
        addr: std::net::SocketAddr,
        hub: Hub,
    ) -> Result<Self, String> {
        let (fred, perf, conn, policy) = fred_config(config)?;
        let mut fred_pub = fred.clone();
        fred_pub.fail_fast = false;
        // Only the subscriber needs the large broadcast buffer (pub/sub
        // messages); the publisher's event channels carry a few events.
        let publisher_perf = PerformanceConfig {
            broadcast_channel_capacity: 64,
            ..perf.clone()
        };
        let publisher = Client::new(
            fred_pub.clone(),
            Some(publisher_perf),
            Some(conn.clone()),
            Some(policy.clone()),
        );
        let subscriber = SubscriberClient::new(fred_pub, Some(perf), Some(conn), Some(policy));
        // The connection tasks run (and reconnect) in the background; the
        // supervisor turns their state into readiness.
        drop(publisher.connect());
        drop(subscriber.connect());

        let keys = Keyspace::new(&config.prefix, node_id);
        let health = Arc::new(Health::new(config.entry_ttl()));
        let liveness = Arc::new(NodeLiveness::default());
        let stop = CancellationToken::new();
        let registry = registry::spawn(Actor {
            keys: keys.clone(),
            config: config.clone(),
            publisher: publisher.clone(),
            subscriber: subscriber.clone(),
            health: health.clone(),
            liveness: liveness.clone(),
            channels: Default::default(),
            registered: Default::default(),
            started_ms: now_ms(),
            addr: addr.to_string(),
        });

        let (queue_tx, queue_rx) = mpsc::channel(config.pubsub_buffer);
        let probes = Arc::new(Probes::default());
        tokio::spawn(receiver::read(
            subscriber.message_rx(),
            queue_tx,
            stop.clone(),
        ));
        tokio::spawn(receiver::dispatch(
            node_id.to_owned(),
            hub,
            queue_rx,
            probes.clone(),
        ));
        tokio::spawn(
            receiver::Prober {
                node: node_id.to_owned(),
                inbox: keys.inbox(node_id),
                publisher: publisher.clone(),
                subscriber: subscriber.clone(),
                health: health.clone(),
                probes,
                interval: config.probe_interval,
            }
            .run(stop.clone()),
        );
        tokio::spawn(supervise(
            publisher.clone(),
            subscriber,
            registry.clone(),
            health.clone(),
            stop.clone(),
        ));
        Ok(Self {
            keys,
            config: config.clone(),
            publisher,
            registry,
            health,
            liveness,
            stop,
        })
    }

    fn check_ready(&self) -> Result<(), BusError> {
        if self.health.is_ready() {
            Ok(())
        } else {
            Err(self.health.unavailable())
        }
    }

    fn envelope(
        &self,
        kind: Kind,
        msg: Option<&Broadcast>,
        tenant: &Name,
        user: Option<&Name>,
    ) -> Result<bytes::Bytes, BusError> {
        let (json, msgpack) = msg.map(|b| b.frame.wire_parts()).unwrap_or_default();
        let (room, user) = match msg.map(|b| &b.audience) {
            Some(Audience::Room(r)) => (Some(r.to_string()), None),
            Some(Audience::User(u)) => (None, Some(u.to_string())),
            Some(Audience::Tenant) => (None, None),
            None => (None, user.map(Name::to_string)),
        };
        Envelope {
            v: VERSION,
            origin: self.keys.node().to_owned(),
            kind,
            id: msg.map(|b| b.id.to_string()).unwrap_or_default(),
            ts: msg.map(|b| b.ts).unwrap_or_else(now_ms),
            tenant: tenant.to_string(),
            room,
            user,
            presence_only: msg.is_some_and(|b| b.recipients == Recipients::PresenceWatchers),
            json,
            msgpack,
        }
        .encode()
        .map_err(|e| BusError(format!("envelope: {e}")))
    }

    async fn route_user(
        &self,
        tenant: &Name,
        user: &Name,
        payload: bytes::Bytes,
    ) -> Result<i64, BusError> {
        let mut args: Vec<Value> = vec![
            self.keys.node().into(),
            self.keys.inbox_prefix().into(),
            Value::Bytes(payload),
        ];
        args.extend(self.liveness.dead().into_iter().map(Value::from));
        scripts::ROUTE_USER
            .evalsha_with_reload::<i64, _, _>(
                &self.publisher,
                vec![self.keys.user_conns(tenant, user)],
                args,
            )
            .await
            .map_err(|e| BusError(format!("redis: {e}")))
    }
}

/// Watches both connections: readiness follows them, and every (re)connect
/// triggers a resync of subscriptions and registry.
async fn supervise(
    publisher: Client,
    subscriber: SubscriberClient,
    registry: Registry,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut pub_events = publisher.reconnect_rx();
    let mut sub_events = subscriber.reconnect_rx();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut was_up = false;
    loop {
        let mut reconnected = false;
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            Ok(_) = pub_events.recv() => reconnected = true,
            Ok(_) = sub_events.recv() => reconnected = true,
        }
        let up = publisher.is_connected() && subscriber.is_connected();
        health.connected.store(up, Ordering::Release);
        if !up {
            if was_up {
                warn!("lost the connection to redis; not ready until it is back");
            }
            was_up = false;
            health.set_synced(false);
            health.set_reason("redis unreachable");
            continue;
        }
        was_up = true;
        // Any reconnect (even one too quick to be seen as a disconnect) and
        // anything that marked the node unsynced (a failed probe) resyncs.
        if reconnected {
            health.set_synced(false);
        }
        if !health.is_synced() {
            match registry.resync().await {
                Ok(()) => info!("connected to redis and registered"),
                Err(e) => {
                    health.set_reason(&format!("redis resync failed: {}", e.0));
                    warn!(error = %e.0, "resync failed; retrying");
                }
            }
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn readiness(&self) -> Result<(), String> {
        self.check_ready().map_err(|e| e.0)
    }

    async fn register(&self, conn: &ConnHandle, limits: ConnLimits) -> Result<(), AdmitError> {
        self.registry
            .register(conn.tenant.clone(), conn.user.clone(), limits)
            .await
    }

    async fn unregister(&self, conn: &ConnHandle) {
        self.registry
            .unregister(conn.tenant.clone(), conn.user.clone())
            .await;
    }

    async fn joined(
        &self,
        conn: &ConnHandle,
        room: &Name,
        local: Joined,
    ) -> Result<bool, BusError> {
        if !local.new_member {
            return Ok(false);
        }
        self.registry
            .join(conn.tenant.clone(), room.clone(), conn.user.clone())
            .await
    }

    async fn left(&self, conn: &ConnHandle, room: &Name, local: Left) -> Result<bool, BusError> {
        if !local.was_member {
            return Ok(false);
        }
        self.registry
            .leave(conn.tenant.clone(), room.clone(), conn.user.clone())
            .await
    }

    async fn publish(&self, msg: &Broadcast) -> Result<(), BusError> {
        self.check_ready()?;
        let started = Instant::now();
        let payload = self.envelope(Kind::Deliver, Some(msg), &msg.tenant, None)?;
        let redis = |e: fred::error::Error| BusError(format!("redis: {e}"));
        match &msg.audience {
            Audience::Room(room) => {
                let args: Vec<Value> = vec![
                    self.keys.node().into(),
                    now_ms().to_string().into(),
                    self.config.direct_max_nodes.to_string().into(),
                    self.keys.room_channel(&msg.tenant, room).into(),
                    self.keys.inbox_prefix().into(),
                    Value::Bytes(payload),
                ];
                let reply: Vec<i64> = scripts::ROUTE_ROOM
                    .evalsha_with_reload(
                        &self.publisher,
                        vec![self.keys.room_hosts(&msg.tenant, room)],
                        args,
                    )
                    .await
                    .map_err(redis)?;
                match reply.get(1) {
                    Some(1) => m::routed("room_channel", 1),
                    _ => m::routed("direct", reply.get(2).copied().unwrap_or(0) as u64),
                }
            }
            Audience::User(user) => {
                let sent = self.route_user(&msg.tenant, user, payload).await?;
                m::routed("direct", sent as u64);
            }
            Audience::Tenant => {
                let _: i64 = self
                    .publisher
                    .publish(self.keys.tenant_channel(&msg.tenant), payload)
                    .await
                    .map_err(redis)?;
                m::routed("tenant_channel", 1);
            }
        }
        m::redis_publish(started.elapsed());
        Ok(())
    }

    async fn presence(&self, tenant: &Name, room: &Name) -> Result<Vec<PresenceMember>, BusError> {
        self.check_ready()?;
        let now = now_ms();
        let pipe = self.publisher.pipeline();
        let _: Result<(), _> = pipe
            .zrangebyscore(
                self.keys.room_hosts(tenant, room),
                now as f64,
                "+inf",
                false,
                None,
            )
            .await;
        let _: Result<(), _> = pipe.hgetall(self.keys.room_members(tenant, room)).await;
        let (hosts, fields): (Vec<String>, BTreeMap<String, i64>) = pipe
            .all()
            .await
            .map_err(|e| BusError(format!("redis: {e}")))?;
        let mut users: BTreeMap<String, u32> = BTreeMap::new();
        for (field, n) in fields {
            let Some((node, user)) = field.split_once('|') else {
                continue;
            };
            if n > 0 && hosts.iter().any(|h| h == node) {
                *users.entry(user.to_owned()).or_insert(0) += n as u32;
            }
        }
        Ok(users
            .into_iter()
            .map(|(user, conns)| PresenceMember { user, conns })
            .collect())
    }

    async fn disconnect_user(&self, tenant: &Name, user: &Name) -> Result<(), BusError> {
        self.check_ready()?;
        let payload = self.envelope(Kind::Disconnect, None, tenant, Some(user))?;
        self.route_user(tenant, user, payload).await.map(|_| ())
    }

    async fn cluster_stats(&self) -> Result<ClusterStats, BusError> {
        self.check_ready()?;
        let redis = |e: fred::error::Error| BusError(format!("redis: {e}"));
        let live: Vec<String> = self
            .publisher
            .zrangebyscore(self.keys.nodes(), now_ms() as f64, "+inf", false, None)
            .await
            .map_err(redis)?;
        let infos: Vec<Option<String>> = if live.is_empty() {
            Vec::new()
        } else {
            self.publisher
                .mget(
                    live.iter()
                        .map(|n| self.keys.node_info(n))
                        .collect::<Vec<_>>(),
                )
                .await
                .map_err(redis)?
        };
        let connections = infos
            .iter()
            .flatten()
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .filter_map(|v| v["connections"].as_u64())
            .sum();
        let rooms: u64 = self
            .publisher
            .zcount(self.keys.rooms(), now_ms() as f64, f64::INFINITY)
            .await
            .map_err(redis)?;
        Ok(ClusterStats {
            nodes: live.len() as u64,
            counts: Counts { connections, rooms },
            bus: self.kind().into(),
        })
    }

    async fn shutdown(&self) {
        // Stop the supervisor and the prober first, so that nothing resyncs
        // (re-registers) the node while it deregisters.
        self.stop.cancel();
        self.registry.deregister().await;
        let _ = self.publisher.quit().await;
    }
}
