//! [`RedisBus`]: the [`Bus`] of a cluster node, and the tasks it starts.
//!
//! Publishing runs the route script on the publisher connection; joins,
//! leaves and admissions go to the registry actor; presence and counts are
//! read straight from Redis. What comes back from other nodes is the
//! receiver's job, readiness the supervisor's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use fanout_protocol::api::{ClusterStats, Counts};
use fanout_protocol::{Name, PresenceMember};
use fred::interfaces::{EventInterface, HashesInterface, KeysInterface, SortedSetsInterface};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::envelope::{Envelope, Kind, VERSION};
use super::health::{Health, NodeLiveness};
use super::keys::{Keyspace, Layout};
use super::receiver::{self, Probes};
use super::registry::{self, Actor, Registry};
use super::route::{self, Route};
use super::shards::{self, Redis, StartError};
use super::supervisor::supervise;
use crate::clock::now_millis;
use crate::cluster::{
    AdmitError, Bus, BusError, HistoryPage, HistoryQuery, NotReady, PresenceChange, PublishOptions,
    Published, StreamSpec,
};
use crate::config::RedisConfig;
use crate::hub::{ConnHandle, ConnLimits, Hub, Joined, Left};
use crate::message::{Audience, Broadcast, Recipients};
use crate::metrics as m;

/// The Redis bus of a cluster node.
pub struct RedisBus {
    /// Key and channel names of this node's cluster.
    keys: Keyspace,
    /// `[redis]` as configured.
    config: RedisConfig,
    /// The connections, by shard; publishes and queries run on them directly.
    redis: Redis,
    /// Handle to the registry actor, the one writer of this node's entries.
    registry: Registry,
    /// Readiness, shared with the supervisor, the actor and the prober.
    health: Arc<Health>,
    /// Dead nodes to skip when routing, written by the actor's heartbeat.
    liveness: Arc<NodeLiveness>,
    /// Stops the background tasks (drain).
    stop: CancellationToken,
    /// Presence changes the registry reports, until the node takes them.
    changes: std::sync::Mutex<Option<mpsc::Receiver<PresenceChange>>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("node", &self.keys.node())
            .finish_non_exhaustive()
    }
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
    ) -> Result<Self, StartError> {
        let stop = CancellationToken::new();
        // Every shard's subscriber feeds the one bounded queue; each reader
        // forwards its shard's messages in the order the shard sent them.
        let (queue_tx, queue_rx) = mpsc::channel(config.pubsub_buffer);
        let budget = receiver::ByteBudget::new(config.pubsub_buffer_bytes);
        let reader_stop = stop.clone();
        let redis = Redis::connect(
            config,
            Box::new(move |shard| {
                let stop = reader_stop.child_token();
                let shard_stop = shard.stop.clone();
                tokio::spawn(receiver::read(
                    shard.subscriber.message_rx(),
                    queue_tx.clone(),
                    budget.clone(),
                    stop.clone(),
                ));
                tokio::spawn(async move {
                    shard_stop.cancelled().await;
                    stop.cancel();
                });
            }),
        )?;
        let keys = Keyspace::new(&config.prefix, node_id, shards::layout_of(&config.url));
        let health = Arc::new(Health::new(config.entry_ttl()));
        let liveness = Arc::new(NodeLiveness::default());
        let (announce, changes) = mpsc::channel(registry::PRESENCE_CHANGES);
        let registry = registry::spawn(Actor {
            keys: keys.clone(),
            config: config.clone(),
            redis: redis.clone(),
            health: health.clone(),
            liveness: liveness.clone(),
            channels: Default::default(),
            registered: Default::default(),
            dirty: Default::default(),
            swept: false,
            registered_at: None,
            announce,
            audit: Default::default(),
            started_ms: now_millis(),
            addr: addr.to_string(),
        });

        let probes = Arc::new(Probes::default());
        tokio::spawn(receiver::dispatch(
            node_id.to_owned(),
            hub,
            queue_rx,
            probes.clone(),
        ));
        tokio::spawn(
            receiver::Prober {
                keys: keys.clone(),
                redis: redis.clone(),
                health: health.clone(),
                probes,
                interval: config.probe_interval,
            }
            .run(stop.clone()),
        );
        tokio::spawn(supervise(
            redis.clone(),
            registry.clone(),
            health.clone(),
            config.cluster_refresh,
            config.command_timeout,
            stop.clone(),
        ));
        Ok(Self {
            keys,
            config: config.clone(),
            redis,
            registry,
            health,
            liveness,
            stop,
            changes: std::sync::Mutex::new(Some(changes)),
        })
    }

    fn check_ready(&self) -> Result<(), BusError> {
        Ok(self.health.check()?)
    }

    /// Ready, and (Redis Cluster) the shard owning `key` serves.
    /// The key is built only on a Redis Cluster, where it names the shard
    /// to check: one Redis pays no allocation for it on every publish.
    fn check_ready_for(&self, key: impl FnOnce() -> String) -> Result<(), BusError> {
        self.health.check()?;
        if self.keys.layout() == Layout::Single {
            return Ok(());
        }
        Ok(self.redis.check_key(&key())?)
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
            ts: msg.map(|b| b.ts).unwrap_or_else(now_millis),
            tenant: tenant.to_string(),
            room,
            user,
            presence_only: msg.is_some_and(|b| b.recipients == Recipients::PresenceWatchers),
            json,
            msgpack,
            offset: None,
            epoch: None,
        }
        .encode()
        .map_err(|e| BusError::Encode {
            source: Arc::new(e),
        })
    }

    fn route<'a>(&'a self, msg: Option<&'a Broadcast>, opts: PublishOptions<'a>) -> Route<'a> {
        Route {
            keys: &self.keys,
            redis: &self.redis,
            direct_max_nodes: self.config.direct_max_nodes,
            id: msg.map_or("", |b| &b.id),
            json: msg.map(|b| b.frame.json_bytes()).unwrap_or_default(),
            history: opts.history,
            idempotency_key: opts.idempotency_key,
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn readiness(&self) -> Result<(), NotReady> {
        self.health.check()
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

    fn release_detached(&self, conn: &ConnHandle, rooms: &[Name]) -> bool {
        self.registry
            .release_detached(&conn.tenant, &conn.user, rooms);
        true
    }

    async fn closing(&self) {
        self.registry.closing().await;
    }

    fn take_presence_changes(&self) -> Option<mpsc::Receiver<PresenceChange>> {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
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

    async fn publish(
        &self,
        msg: &Broadcast,
        opts: PublishOptions<'_>,
    ) -> Result<Published, BusError> {
        self.check_ready_for(|| match &msg.audience {
            Audience::Room(room) => self.keys.room_hosts(&msg.tenant, room),
            Audience::User(_) | Audience::Tenant => self.keys.tenant_conns(&msg.tenant),
        })?;
        let started = Instant::now();
        let payload = self.envelope(Kind::Deliver, Some(msg), &msg.tenant, None)?;
        let route = self.route(Some(msg), opts);
        let published = match &msg.audience {
            Audience::Room(room) => route.room(&msg.tenant, room, payload).await,
            Audience::User(user) => {
                route
                    .user(&msg.tenant, user, payload, self.liveness.dead())
                    .await
            }
            Audience::Tenant => route.tenant(&msg.tenant, payload).await,
        };
        if let Err(BusError::PublishUnknown { .. }) = &published {
            m::publish_outcome_unknown();
        }
        let published = published?;
        m::redis_publish(started.elapsed());
        Ok(published)
    }

    async fn history(
        &self,
        tenant: &Name,
        room: &Name,
        spec: StreamSpec,
        query: HistoryQuery,
    ) -> Result<HistoryPage, BusError> {
        self.check_ready_for(|| self.keys.room_hosts(tenant, room))?;
        route::read_history(&self.redis, &self.keys, tenant, room, spec, query).await
    }

    async fn presence(&self, tenant: &Name, room: &Name) -> Result<Vec<PresenceMember>, BusError> {
        let hosts_key = self.keys.room_hosts(tenant, room);
        self.check_ready_for(|| hosts_key.clone())?;
        let now = now_millis();
        let shard = self
            .redis
            .shard_of_key(&hosts_key)
            .ok_or(BusError::NoReply { op: "presence" })?;
        let pipe = shard.publisher.pipeline();
        let _: Result<(), _> = pipe
            .zrangebyscore(&hosts_key, now as f64, "+inf", false, None)
            .await;
        let _: Result<(), _> = pipe.hgetall(self.keys.room_members(tenant, room)).await;
        let (hosts, fields): (Vec<String>, BTreeMap<String, i64>) = pipe
            .all()
            .await
            .map_err(|e| BusError::redis("presence", e))?;
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
        self.check_ready_for(|| self.keys.tenant_conns(tenant))?;
        let payload = self.envelope(Kind::Disconnect, None, tenant, Some(user))?;
        self.route(None, PublishOptions::default())
            .user(tenant, user, payload, self.liveness.dead())
            .await
            .map(|_| ())
    }

    async fn cluster_stats(&self) -> Result<ClusterStats, BusError> {
        self.check_ready()?;
        let redis = |e| BusError::redis("cluster_stats", e);
        let nodes = self.keys.nodes();
        let live: Vec<String> = self
            .redis
            .shard_of_key(&nodes)
            .ok_or(BusError::NoReply {
                op: "cluster_stats",
            })?
            .publisher
            .zrangebyscore(&nodes, now_millis() as f64, "+inf", false, None)
            .await
            .map_err(redis)?;
        // One GET per node and one ZCOUNT per room index key, each on its
        // shard (an MGET would span slots on a Redis Cluster).
        let mut pipe = self.redis.pipe();
        for node in &live {
            let key = self.keys.node_info(node);
            if let Some(p) = pipe.at(&key) {
                let _: Result<(), _> = p.get(&key).await;
            }
        }
        let now = now_millis() as f64;
        for bucket in self.keys.all_rooms() {
            if let Some(p) = pipe.at(&bucket) {
                let _: Result<(), _> = p.zcount(&bucket, now, f64::INFINITY).await;
            }
        }
        let mut results = pipe.all().await.into_iter();
        let mut connections = 0;
        for _ in &live {
            let info: Option<String> = match results.next() {
                Some(Ok(v)) => v.convert().ok(),
                Some(Err(e)) => return Err(redis(e)),
                None => None,
            };
            connections += info
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["connections"].as_u64())
                .unwrap_or(0);
        }
        let mut rooms = 0;
        for r in results {
            rooms += r.map_err(redis)?.as_u64().unwrap_or(0);
        }
        Ok(ClusterStats {
            nodes: live.len() as u64,
            counts: Counts { connections, rooms },
            bus: self.kind().into(),
        })
    }

    async fn deregister(&self) {
        // Stop the supervisor and the prober first, so that nothing resyncs
        // (re-registers) the node while it deregisters. The actor stops
        // after it, which ends the stream of presence changes.
        self.stop.cancel();
        self.registry.deregister().await;
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.registry.deregister().await;
        self.redis.quit().await;
    }
}
