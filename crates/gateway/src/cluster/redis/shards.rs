//! The node's Redis connections, by shard, and the routing of every
//! command to the shard that owns its slot.
//!
//! One Redis (`redis://`) is one shard that owns every slot. A
//! Redis Cluster (`redis-cluster://`) is one shard per
//! primary, each with its own command and subscriber connection, plus a
//! slot map read with `CLUSTER SLOTS` and refreshed every `redis.cluster_refresh`
//! and at once after a redirection or a broken connection.
//!
//! Why not fred's clustered client: with fanout's one-attempt rule (a
//! publish answered 503 is never replayed) every `MOVED` fails the command;
//! an `ASK` during a slot migration stops its routing task for good; its one
//! routing task stalls every slot while one primary is down; and it drops
//! the `sunsubscribe` Redis pushes after a slot moves. Per-primary
//! connections keep a dead primary's trouble on its own slots, and this
//! file retries exactly the replies that prove a command did not run
//! (`MOVED`, `ASK`, `TRYAGAIN`), never a timeout. See
//! `docs/architecture.md` ("Redis Cluster").
//!
//! A shard carries its own readiness ([`Shard::is_ready`]): connected, and
//! its slots' subscriptions and registry entries rewritten since its last
//! reconnect (or since it became a primary). Publishes into a slot whose
//! shard is not ready answer 503; every other slot keeps working. Slots
//! that a known primary takes over by a migration are resynced on their
//! own, without taking the shard out of service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fred::clients::{Client, Pipeline, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::FromValue;
use fred::types::cluster::ClusterRouting;
use fred::types::config::{
    Config as FredConfig, ConnectionConfig, PerformanceConfig, ReconnectPolicy, Server,
    ServerConfig,
};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::keys::Layout;
use super::scripts;
use super::slots::{SLOTS, slot_of, tag_for_slot};
use crate::cluster::NotReady;
use crate::config::RedisConfig;

/// Capacity of fred's pub/sub broadcast channel per subscriber (messages).
const FRED_BROADCAST_CAPACITY: usize = 4_096;
/// Pause before retrying a `TRYAGAIN` (a multi-key script during a slot
/// migration).
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(25);
/// A slot without a primary in the map.
const NO_OWNER: u16 = u16::MAX;

/// Why the Redis bus could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `redis.url` is not a Redis URL fred understands.
    #[error("redis.url: {0}")]
    Url(#[source] fred::error::Error),
}

/// A shard's name: its primary's `host:port`.
pub(crate) type ShardId = Arc<str>;

/// One Redis primary and the node's two connections to it.
pub(crate) struct Shard {
    /// `host:port` of the primary.
    pub(crate) id: ShardId,
    /// Commands, scripts, publishes.
    pub(crate) publisher: Client,
    /// (S)SUBSCRIBE and the messages it brings, in the order the primary
    /// published them.
    pub(crate) subscriber: SubscriberClient,
    /// Subscriptions and registry entries of this shard's slots match the
    /// node's view. Cleared on a reconnect of either connection, a lost
    /// probe, a failed registry script, or when the shard gains slots; set
    /// by the registry actor's resync of the shard.
    synced: AtomicBool,
    /// Slots this (already synced) shard took over from another primary by
    /// a migration: their channels must be subscribed here and their
    /// entries rewritten, without disturbing the shard's other slots (a
    /// migration copies keys intact, so nothing needs purging). Taken by
    /// the registry actor's resync of those slots.
    moved: std::sync::Mutex<std::collections::BTreeSet<u16>>,
    /// Since when some of this shard's subscriptions may be missing (it was
    /// marked unsynced or took slots over), until the resync that restores
    /// them: the window in which messages of its slots can be lost, added
    /// to `fanout_redis_shard_gap_seconds_total`.
    gap_since: std::sync::Mutex<Option<Instant>>,
    /// Cluster layout: a hash tag of one of this shard's slots, under which
    /// the node probes its own subscription (`None` on one Redis, which
    /// probes its inbox). Rewritten when the shard's slots change.
    probe: RwLock<Option<(u16, String)>>,
    /// Bumped by every reconnect of either connection: a resync that began
    /// before one must not mark the shard synced (its subscriptions may
    /// have been made on the connection that was replaced).
    generation: std::sync::atomic::AtomicU64,
    /// Stops the tasks that serve only this shard (reader, event watcher).
    pub(crate) stop: CancellationToken,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// Both connections are up.
    pub(crate) fn is_connected(&self) -> bool {
        self.publisher.is_connected() && self.subscriber.is_connected()
    }

    /// Connected and resynced: publishes into its slots are served.
    pub(crate) fn is_ready(&self) -> bool {
        self.is_connected() && self.is_synced()
    }

    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(crate) fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
        if synced {
            self.gap_closed();
        } else {
            self.gap_opened();
        }
    }

    fn gap_opened(&self) {
        self.gap_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
    }

    /// Subscriptions are complete again: counts the window they were not.
    pub(crate) fn gap_closed(&self) {
        let since = self
            .gap_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(since) = since {
            crate::metrics::shard_gap(since.elapsed());
        }
    }

    /// The reconnect generation, read when a resync begins.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks the shard synced by a resync that began at `generation`,
    /// unless a reconnect came since (then it stays unsynced and is resynced
    /// again). Returns whether it was marked.
    pub(crate) fn synced_since(&self, generation: u64) -> bool {
        if self.generation() != generation {
            return false;
        }
        self.set_synced(true);
        true
    }

    /// Takes the slots that moved here since the last call.
    pub(crate) fn take_moved(&self) -> std::collections::BTreeSet<u16> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back slots whose resync failed (retried next round).
    pub(crate) fn add_moved(&self, slots: impl IntoIterator<Item = u16>) {
        self.gap_opened();
        self.moved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(slots);
    }

    /// Whether slots moved here are waiting for their resync.
    pub(crate) fn has_moved(&self) -> bool {
        !self
            .moved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// The hash tag this node probes the shard under (cluster layout).
    pub(crate) fn probe_tag(&self) -> Option<String> {
        self.probe
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, tag)| tag.clone())
    }
}

/// Which primary owns which slot.
struct Topology {
    /// The primaries.
    shards: Vec<Arc<Shard>>,
    /// Slot → index into `shards` (`NO_OWNER`: none). Empty on one Redis,
    /// where shard 0 owns everything.
    owners: Vec<u16>,
}

impl Topology {
    fn owner(&self, slot: u16) -> Option<&Arc<Shard>> {
        if self.owners.is_empty() {
            return self.shards.first();
        }
        match self.owners.get(slot as usize) {
            Some(&i) if i != NO_OWNER => self.shards.get(i as usize),
            _ => None,
        }
    }

    fn owner_of_key(&self, key: &str) -> Option<&Arc<Shard>> {
        if self.owners.is_empty() {
            return self.shards.first();
        }
        self.owner(slot_of(key))
    }
}

/// How shards are made (cluster layout): the URL's credentials and TLS with
/// one primary's address each.
struct Factory {
    template: FredConfig,
    perf: PerformanceConfig,
    conn: ConnectionConfig,
    policy: ReconnectPolicy,
    /// Seeds from the URL: asked for the slot map when no shard answers.
    seeds: Vec<Server>,
}

/// Called for every new shard (starts its pub/sub reader).
pub(crate) type OnShard = Box<dyn Fn(&Arc<Shard>) + Send + Sync>;

/// The node's connections to Redis, by shard. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    /// The current slot map and shards; replaced whole on a refresh.
    topology: RwLock<Arc<Topology>>,
    /// Cluster layout: how to connect to a new primary.
    factory: Option<Factory>,
    /// Starts a new shard's reader.
    on_shard: OnShard,
    /// Something suggests the slot map is stale (a redirection, a broken
    /// connection): the supervisor refreshes it at once.
    stale: AtomicBool,
    /// Wakes the supervisor: a shard reconnected or the map looks stale.
    changed: Notify,
    /// Whether a slot map was ever read (cluster layout).
    mapped: AtomicBool,
    /// One refresh at a time (the supervisor's poll and a redirection may
    /// ask at once; two would each add a shard for a new primary).
    refreshing: tokio::sync::Mutex<()>,
    command_timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("layout", &self.inner.layout)
            .finish_non_exhaustive()
    }
}

/// The layout a `redis.url` selects.
pub(crate) fn layout_of(url: &str) -> Layout {
    if url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://") {
        Layout::Cluster
    } else {
        Layout::Single
    }
}

fn fred_configs(config: &RedisConfig) -> (PerformanceConfig, ConnectionConfig, ReconnectPolicy) {
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
    (perf, conn, policy)
}

/// Builds a shard's two clients and starts their connection tasks (not
/// awaited: they connect and reconnect in the background).
fn new_shard(
    id: ShardId,
    fred: FredConfig,
    perf: &PerformanceConfig,
    conn: &ConnectionConfig,
    policy: &ReconnectPolicy,
) -> Arc<Shard> {
    // Only the subscriber needs the large broadcast buffer (pub/sub
    // messages); the publisher's event channels carry a few events.
    let publisher_perf = PerformanceConfig {
        broadcast_channel_capacity: 64,
        ..perf.clone()
    };
    let publisher = Client::new(
        fred.clone(),
        Some(publisher_perf),
        Some(conn.clone()),
        Some(policy.clone()),
    );
    let subscriber = SubscriberClient::new(
        fred,
        Some(perf.clone()),
        Some(conn.clone()),
        Some(policy.clone()),
    );
    drop(publisher.connect());
    drop(subscriber.connect());
    Arc::new(Shard {
        id,
        publisher,
        subscriber,
        synced: AtomicBool::new(false),
        moved: Default::default(),
        gap_since: Default::default(),
        generation: Default::default(),
        probe: RwLock::new(None),
        stop: CancellationToken::new(),
    })
}

fn server_id(server: &Server) -> ShardId {
    Arc::from(format!("{}:{}", server.host, server.port))
}

/// What a script is, for the redirections [`Redis::eval_with`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// A publishing script: follows `MOVED`, waits out `TRYAGAIN` within
    /// the command timeout, refuses `ASK` (see [`Redis::eval`]).
    Publish,
    /// A registry script, run by the registry actor: follows `MOVED` and
    /// `ASK` (its keys are where Redis says), and does not wait out
    /// `TRYAGAIN` (a migration can outlast a heartbeat; the change is
    /// refused as "slot being migrated" and the client retries).
    Registry,
}

/// A redirection or cluster condition in an error reply.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    /// The slot lives elsewhere for good (`MOVED <slot> <host:port>`).
    Moved(String),
    /// The slot is migrating and the key is already on the target
    /// (`ASK <slot> <host:port>`).
    Ask(String),
    /// A multi-key command during a slot migration (`TRYAGAIN`).
    TryAgain,
    /// The cluster, or this slot, has no primary now (`CLUSTERDOWN`).
    Down,
}

fn redirect(e: &fred::error::Error) -> Option<Redirect> {
    let d = e.details();
    let addr = |rest: &str| rest.split_whitespace().nth(1).map(str::to_owned);
    if let Some(i) = d.find("MOVED ") {
        return addr(&d[i + 6..]).map(Redirect::Moved);
    }
    if let Some(i) = d.find("ASK ") {
        return addr(&d[i + 4..]).map(Redirect::Ask);
    }
    if d.contains("TRYAGAIN") {
        return Some(Redirect::TryAgain);
    }
    if d.contains("CLUSTERDOWN") {
        return Some(Redirect::Down);
    }
    None
}

/// A reply proving the command did not run because its slot is elsewhere
/// or moving (`MOVED`, `ASK`, `TRYAGAIN`): safe to run again, routed anew.
pub(crate) fn is_redirect(e: &fred::error::Error) -> bool {
    matches!(
        redirect(e),
        Some(Redirect::Moved(_) | Redirect::Ask(_) | Redirect::TryAgain)
    )
}

fn no_primary(slot: u16) -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Cluster,
        format!("no redis primary known for slot {slot}"),
    )
}

impl Redis {
    /// Builds the connections `redis.url` names and starts them. Does not
    /// wait for Redis; on a cluster the first slot map is read by the
    /// supervisor's first [`Redis::refresh`].
    pub(crate) fn connect(config: &RedisConfig, on_shard: OnShard) -> Result<Self, StartError> {
        let layout = layout_of(&config.url);
        let mut fred = FredConfig::from_url(&config.url).map_err(StartError::Url)?;
        fred.fail_fast = false;
        let (perf, conn, policy) = fred_configs(config);
        let (shards, factory) = match layout {
            Layout::Single => {
                // Named by host:port, never by the URL (it may carry a password).
                let id: ShardId = match &fred.server {
                    ServerConfig::Centralized { server } => server_id(server),
                    _ => Arc::from("redis"),
                };
                let shard = new_shard(id, fred, &perf, &conn, &policy);
                (vec![shard], None)
            }
            Layout::Cluster => {
                let seeds = match &fred.server {
                    ServerConfig::Clustered { hosts, .. } => hosts.clone(),
                    _ => Vec::new(),
                };
                let factory = Factory {
                    template: fred,
                    perf,
                    conn,
                    policy,
                    seeds,
                };
                (Vec::new(), Some(factory))
            }
        };
        let redis = Self {
            inner: Arc::new(Inner {
                layout,
                topology: RwLock::new(Arc::new(Topology {
                    shards,
                    owners: Vec::new(),
                })),
                factory,
                on_shard,
                stale: AtomicBool::new(true),
                changed: Notify::new(),
                mapped: AtomicBool::new(false),
                refreshing: tokio::sync::Mutex::new(()),
                command_timeout: config.command_timeout,
            }),
        };
        for shard in redis.shards() {
            redis.adopt(&shard);
        }
        Ok(redis)
    }

    /// Starts what serves a new shard: its reader, and a watcher that marks
    /// it unsynced on every reconnect of either connection (a new
    /// subscriber connection has lost every subscription; a new command
    /// connection may face a Redis restarted empty).
    fn adopt(&self, shard: &Arc<Shard>) {
        (self.inner.on_shard)(shard);
        let mut pub_events = shard.publisher.reconnect_rx();
        let mut sub_events = shard.subscriber.reconnect_rx();
        let weak = Arc::downgrade(shard);
        let inner = Arc::downgrade(&self.inner);
        let stop = shard.stop.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                // A lagged receiver missed events: treat it as a reconnect.
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = pub_events.recv() => if matches!(r, Err(RecvError::Closed)) { return },
                    r = sub_events.recv() => if matches!(r, Err(RecvError::Closed)) { return },
                }
                let (Some(shard), Some(inner)) = (weak.upgrade(), inner.upgrade()) else {
                    return;
                };
                debug!(shard = %shard.id, "redis shard reconnected; resyncing it");
                shard.generation.fetch_add(1, Ordering::AcqRel);
                shard.set_synced(false);
                inner.stale.store(true, Ordering::Release);
                inner.changed.notify_one();
            }
        });
    }

    /// One Redis or a Redis Cluster.
    pub(crate) fn layout(&self) -> Layout {
        self.inner.layout
    }

    fn topology(&self) -> Arc<Topology> {
        self.inner
            .topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every shard (primary) known now.
    pub(crate) fn shards(&self) -> Vec<Arc<Shard>> {
        self.topology().shards.clone()
    }

    /// The shard owning `key`'s slot.
    pub(crate) fn shard_of_key(&self, key: &str) -> Option<Arc<Shard>> {
        self.topology().owner_of_key(key).cloned()
    }

    /// The shard named `id`, if it is a primary now.
    pub(crate) fn shard(&self, id: &str) -> Option<Arc<Shard>> {
        self.topology()
            .shards
            .iter()
            .find(|s| &*s.id == id)
            .cloned()
    }

    /// Whether the node can reach Redis at all: on one Redis both
    /// connections are up; on a cluster a slot map was read and some shard
    /// is connected.
    pub(crate) fn is_connected(&self) -> bool {
        let topo = self.topology();
        match self.inner.layout {
            Layout::Single => topo.shards.iter().all(|s| s.is_connected()),
            Layout::Cluster => {
                self.inner.mapped.load(Ordering::Acquire)
                    && topo.shards.iter().any(|s| s.is_connected())
            }
        }
    }

    /// `Ok` when the shard owning `key` serves publishes (cluster layout;
    /// one Redis is checked by the node's readiness alone).
    pub(crate) fn check_key(&self, key: &str) -> Result<(), NotReady> {
        if self.inner.layout == Layout::Single {
            return Ok(());
        }
        match self.shard_of_key(key) {
            Some(shard) if shard.is_ready() => Ok(()),
            Some(shard) if shard.is_connected() => Err(NotReady::ShardResyncing {
                shard: shard.id.to_string(),
            }),
            Some(shard) => Err(NotReady::ShardUnreachable {
                shard: shard.id.to_string(),
            }),
            None => Err(NotReady::NoPrimary { slot: slot_of(key) }),
        }
    }

    /// Waits until a shard reconnected or the slot map looks stale.
    pub(crate) async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    /// Asks for a slot map refresh (after a redirection or a broken link).
    pub(crate) fn mark_stale(&self) {
        if self.inner.layout == Layout::Cluster {
            self.inner.stale.store(true, Ordering::Release);
            self.inner.changed.notify_one();
        }
    }

    /// Whether a refresh was asked for since the last one.
    pub(crate) fn is_stale(&self) -> bool {
        self.inner.stale.load(Ordering::Acquire)
    }

    /// Notes a failed reply: redirections and cluster errors make the map stale.
    fn note(&self, e: &fred::error::Error) {
        if redirect(e).is_some() || matches!(e.kind(), fred::error::ErrorKind::IO) {
            self.mark_stale();
        }
    }

    /// Reads the slot map and adopts it (cluster layout; a no-op on one
    /// Redis). New primaries get shards (unsynced: a promoted replica may
    /// lack the last writes, so everything of its slots is rewritten),
    /// primaries that are gone are retired, and slots that moved to a known
    /// primary are queued on it for a resync of those slots alone.
    pub(crate) async fn refresh(&self) -> Result<(), fred::error::Error> {
        let Some(factory) = &self.inner.factory else {
            return Ok(());
        };
        let _one = self.inner.refreshing.lock().await;
        self.inner.stale.store(false, Ordering::Release);
        let (slots, host) = self.read_slots(factory).await?;
        let routing = ClusterRouting::from_cluster_slots(slots, host.as_str())?;
        if routing.slots().is_empty() {
            // A node that lost its cluster config (or is not in one) answers
            // an empty map: keep the one we have rather than retire every shard.
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Cluster,
                "CLUSTER SLOTS answered an empty slot map",
            ));
        }
        let old = self.topology();
        let mut shards: Vec<Arc<Shard>> = Vec::new();
        let mut owners = vec![NO_OWNER; SLOTS as usize];
        let mut first_slot: HashMap<usize, u16> = HashMap::new();
        for range in routing.slots() {
            let id = server_id(&range.primary);
            let index = match shards.iter().position(|s| s.id == id) {
                Some(i) => i,
                None => {
                    let shard = match old.shards.iter().find(|s| s.id == id) {
                        Some(s) => s.clone(),
                        None => {
                            let mut fred = factory.template.clone();
                            fred.server = ServerConfig::Centralized {
                                server: range.primary.clone(),
                            };
                            let shard = new_shard(
                                id.clone(),
                                fred,
                                &factory.perf,
                                &factory.conn,
                                &factory.policy,
                            );
                            info!(shard = %id, "redis cluster primary added");
                            self.adopt(&shard);
                            shard
                        }
                    };
                    shards.push(shard);
                    shards.len() - 1
                }
            };
            for slot in range.start..=range.end.min(SLOTS - 1) {
                owners[slot as usize] = index as u16;
            }
            let first = first_slot.entry(index).or_insert(range.start);
            *first = (*first).min(range.start);
        }
        // Slots that changed owner must be subscribed and rewritten there.
        let mut gained: HashMap<usize, Vec<u16>> = HashMap::new();
        if !old.owners.is_empty() {
            for (slot, &i) in owners.iter().enumerate() {
                if i == NO_OWNER {
                    continue;
                }
                let id = &shards[i as usize].id;
                if old.owner(slot as u16).map(|s| &s.id) != Some(id) {
                    gained.entry(i as usize).or_default().push(slot as u16);
                }
            }
        }
        for (i, shard) in shards.iter().enumerate() {
            let first = first_slot.get(&i).copied();
            let mut probe = shard.probe.write().unwrap_or_else(|p| p.into_inner());
            if probe.as_ref().map(|(slot, _)| *slot) != first {
                let known = probe.is_some();
                *probe = first.map(|slot| (slot, tag_for_slot(slot)));
                if let (true, Some(slot)) = (known, first) {
                    // Subscribe the new probe channel with that slot's resync.
                    shard.add_moved([slot]);
                }
            }
        }
        for (i, slots) in gained {
            let shard = &shards[i];
            if old.shards.iter().any(|s| s.id == shard.id) {
                info!(shard = %shard.id, slots = slots.len(), "redis cluster slots moved to a primary");
                shard.add_moved(slots);
            } else {
                shard.set_synced(false);
            }
        }
        for shard in &old.shards {
            if !shards.iter().any(|s| s.id == shard.id) {
                info!(shard = %shard.id, "redis cluster primary gone; its connections are closed");
                retire(shard.clone());
            }
        }
        *self
            .inner
            .topology
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(Topology { shards, owners });
        self.inner.mapped.store(true, Ordering::Release);
        Ok(())
    }

    /// `CLUSTER SLOTS` from a connected shard, else from the URL's seeds.
    async fn read_slots(&self, factory: &Factory) -> Result<(Value, String), fred::error::Error> {
        let cmd = || CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
        let mut last = fred::error::Error::new(
            fred::error::ErrorKind::Cluster,
            "no redis cluster node answered CLUSTER SLOTS",
        );
        for shard in self.shards() {
            if !shard.publisher.is_connected() {
                continue;
            }
            match shard
                .publisher
                .custom::<Value, _>(cmd(), vec!["SLOTS"])
                .await
            {
                Ok(v) => {
                    let host = shard.id.rsplit_once(':').map(|(h, _)| h.to_owned());
                    return Ok((v, host.unwrap_or_default()));
                }
                Err(e) => last = e,
            }
        }
        for seed in &factory.seeds {
            let mut fred = factory.template.clone();
            fred.server = ServerConfig::Centralized {
                server: seed.clone(),
            };
            // A one-off client: no reconnect policy, so it must fail fast
            // (fred never completes its first connection otherwise).
            fred.fail_fast = true;
            let client = Client::new(fred, None, Some(factory.conn.clone()), None);
            let task = client.connect();
            let asked = async {
                client.wait_for_connect().await?;
                client.custom::<Value, _>(cmd(), vec!["SLOTS"]).await
            };
            let result = tokio::time::timeout(self.inner.command_timeout, asked).await;
            let _ = client.quit().await;
            task.abort();
            match result {
                Ok(Ok(v)) => return Ok((v, seed.host.to_string())),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        format!("seed {}:{} did not answer", seed.host, seed.port),
                    )
                }
            }
        }
        Err(last)
    }

    /// Runs a publishing script on the shard owning its first key. On a
    /// cluster, `MOVED` is followed (after refreshing the map) and
    /// `TRYAGAIN` retried within the command timeout: each proves the script
    /// did not run. `ASK` (a slot half-way through a migration) is answered
    /// as "slot being migrated": on the importing node the publish would
    /// reach nobody, since every node listens on the source until the
    /// migration ends. Anything else (a timeout above all) is returned as
    /// is and never replayed.
    pub(crate) async fn eval<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, fred::error::Error> {
        self.eval_with(script, keys, args, Follow::Publish).await
    }

    /// [`Redis::eval`] for a registry script or a publishing one.
    pub(crate) async fn eval_with<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
        follow: Follow,
    ) -> Result<R, fred::error::Error> {
        let wait_tryagain = follow == Follow::Publish;
        let first = keys.first().cloned().unwrap_or_default();
        if self.inner.layout == Layout::Single {
            let shard = self.shard_of_key(&first).ok_or_else(|| no_primary(0))?;
            return script
                .evalsha_with_reload(&shard.publisher, keys, args)
                .await;
        }
        let slot = slot_of(&first);
        let deadline = Instant::now() + self.inner.command_timeout;
        let mut moved = 0;
        loop {
            let shard = self.shard_of_key(&first).ok_or_else(|| no_primary(slot))?;
            let err = match script
                .evalsha_with_reload(&shard.publisher, keys.clone(), args.clone())
                .await
            {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match redirect(&err) {
                Some(Redirect::Moved(_)) if moved < 2 => {
                    moved += 1;
                    if let Err(e) = self.refresh().await {
                        warn!(error = %e, "redis cluster slot map refresh failed");
                        return Err(err);
                    }
                }
                Some(Redirect::Ask(_)) if follow == Follow::Publish => {
                    return Err(fred::error::Error::new(
                        fred::error::ErrorKind::Cluster,
                        format!(
                            "TRYAGAIN slot {slot} is being migrated (a publish does not follow ASK)"
                        ),
                    ));
                }
                Some(Redirect::Ask(target)) => {
                    return self.ask(&target, script, keys.clone(), args.clone()).await;
                }
                Some(Redirect::TryAgain)
                    if wait_tryagain && Instant::now() + TRYAGAIN_PAUSE < deadline =>
                {
                    tokio::time::sleep(TRYAGAIN_PAUSE).await;
                }
                _ => {
                    self.note(&err);
                    return Err(err);
                }
            }
        }
    }

    /// `ASKING` + the script on the migration target, in one pipeline.
    async fn ask<R: FromValue>(
        &self,
        target: &str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, fred::error::Error> {
        let Some(shard) = self.shard(target) else {
            self.mark_stale();
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Cluster,
                format!("ASK to {target}, which is not a known primary"),
            ));
        };
        let pipe = shard.publisher.pipeline();
        let _: Result<(), _> = pipe
            .custom(
                CustomCommand::new_static("ASKING", ClusterHash::Random, false),
                Vec::<Value>::new(),
            )
            .await;
        scripts::queue(&pipe, script, keys, args).await;
        let mut results = pipe.try_all::<Value>().await;
        let reply = results.pop().ok_or_else(|| {
            fred::error::Error::new(fred::error::ErrorKind::Unknown, "no reply to ASKING")
        })?;
        R::from_value(reply?)
    }

    /// A pipeline that sends each command to the shard owning its key.
    pub(crate) fn pipe(&self) -> Pipe {
        Pipe {
            redis: self.clone(),
            topology: self.topology(),
            groups: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Subscribes `channels` (a classic SUBSCRIBE on one Redis; on a cluster
    /// one SSUBSCRIBE per slot, on the slot's shard). Returns the channels
    /// now subscribed and the first error.
    pub(crate) async fn subscribe(
        &self,
        channels: &[String],
    ) -> (Vec<String>, Option<fred::error::Error>) {
        let topo = self.topology();
        if self.inner.layout == Layout::Single {
            let Some(shard) = topo.shards.first() else {
                return (Vec::new(), Some(no_primary(0)));
            };
            return match shard.subscriber.subscribe(channels.to_vec()).await {
                Ok(()) => (channels.to_vec(), None),
                Err(e) => (Vec::new(), Some(e)),
            };
        }
        let mut done = Vec::with_capacity(channels.len());
        let mut error = None;
        let mut topo = topo;
        for (slot, group) in by_slot(channels) {
            // A slot that moved answers MOVED: refresh the map and follow it
            // once (SSUBSCRIBE is idempotent).
            for attempt in 0..2 {
                let Some(shard) = topo.owner(slot).cloned() else {
                    error.get_or_insert(no_primary(slot));
                    break;
                };
                if !shard.subscriber.is_connected() {
                    // Fail at once rather than wait out the command timeout:
                    // the registry actor must not stall on one dead primary.
                    error.get_or_insert(Unsent::Down(shard.id.clone()).error());
                    break;
                }
                match shard.subscriber.ssubscribe(group.clone()).await {
                    Ok(()) => {
                        done.extend(group);
                        break;
                    }
                    Err(e) if attempt == 0 && matches!(redirect(&e), Some(Redirect::Moved(_))) => {
                        if self.refresh().await.is_err() {
                            error.get_or_insert(e);
                            break;
                        }
                        topo = self.topology();
                    }
                    Err(e) => {
                        self.note(&e);
                        error.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        (done, error)
    }

    /// Unsubscribes `channels`; failures are logged only (a later join
    /// subscribes again, and SUBSCRIBE is idempotent).
    pub(crate) async fn unsubscribe(&self, channels: &[String]) {
        let topo = self.topology();
        if self.inner.layout == Layout::Single {
            if let Some(shard) = topo.shards.first()
                && let Err(e) = shard.subscriber.unsubscribe(channels.to_vec()).await
            {
                warn!(error = %e, channels = channels.len(), "unsubscribe failed; the channels are resubscribed on the next join");
            }
            return;
        }
        for (slot, group) in by_slot(channels) {
            // A disconnected subscriber lost its subscriptions already;
            // asking it would hold the caller (the registry actor) for the
            // command timeout.
            if let Some(shard) = topo.owner(slot)
                && shard.subscriber.is_connected()
                && let Err(e) = shard.subscriber.sunsubscribe(group).await
            {
                debug!(error = %e, "sunsubscribe failed");
            }
        }
    }

    /// Drops every subscription (drain; on a cluster the connections are
    /// closed right after, which drops them too).
    pub(crate) async fn unsubscribe_all(&self) {
        if self.inner.layout == Layout::Single {
            for shard in self.shards() {
                let _ = shard.subscriber.unsubscribe(Vec::<String>::new()).await;
            }
        }
    }

    /// Whether `key` lives on the shard `id` now.
    pub(crate) fn key_on(&self, key: &str, id: &str) -> bool {
        self.topology()
            .owner_of_key(key)
            .is_some_and(|s| &*s.id == id)
    }

    /// Closes every connection (drain).
    pub(crate) async fn quit(&self) {
        for shard in self.shards() {
            shard.stop.cancel();
            let _ = shard.publisher.quit().await;
            let _ = shard.subscriber.quit().await;
        }
    }
}

/// Channels grouped by slot (one SSUBSCRIBE may not span slots).
fn by_slot(channels: &[String]) -> Vec<(u16, Vec<String>)> {
    let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
    for c in channels {
        groups.entry(slot_of(c)).or_default().push(c.clone());
    }
    let mut out: Vec<_> = groups.into_iter().collect();
    out.sort_by_key(|(slot, _)| *slot);
    out
}

/// Stops a shard that is no longer a primary: its reader and watcher at
/// once (messages still queued on its subscriber are dropped: that
/// primary no longer owns the slots they came from), then both connections
/// (QUIT, after the commands already sent on them).
fn retire(shard: Arc<Shard>) {
    shard.stop.cancel();
    tokio::spawn(async move {
        let _ = shard.publisher.quit().await;
        let _ = shard.subscriber.quit().await;
    });
}

/// A pipeline over shards: each command goes to the shard owning its key,
/// each shard's commands are sent as one pipeline, all shards at once, and
/// the results come back in the order the commands were queued.
pub(crate) struct Pipe {
    redis: Redis,
    topology: Arc<Topology>,
    /// (shard index, its pipeline, commands queued on it)
    groups: Vec<(usize, Pipeline<Client>, usize)>,
    /// Per queued command: (group, position in the group), or why it was
    /// not sent (its result is that error).
    order: Vec<Result<(usize, usize), Unsent>>,
}

/// Why a command of a [`Pipe`] was not sent.
#[derive(Debug, Clone)]
enum Unsent {
    /// No primary owns the slot.
    NoOwner(u16),
    /// Redis Cluster: the slot's primary is disconnected; the command fails
    /// at once instead of waiting out the command timeout, so that one dead
    /// primary does not hold up the registry's work on the others.
    Down(ShardId),
}

impl Unsent {
    fn error(&self) -> fred::error::Error {
        match self {
            Self::NoOwner(slot) => no_primary(*slot),
            Self::Down(id) => fred::error::Error::new(
                fred::error::ErrorKind::IO,
                format!("redis shard {id} is unreachable"),
            ),
        }
    }
}

impl Pipe {
    /// The pipeline to queue the next command on, for a command on `key`.
    /// Queue exactly one command per call: results are matched by order.
    /// `None` (nothing to queue on) when no shard owns the key; that command
    /// fails.
    pub(crate) fn at(&mut self, key: &str) -> Option<&Pipeline<Client>> {
        let shard = if self.topology.owners.is_empty() {
            (!self.topology.shards.is_empty()).then_some(0)
        } else {
            let slot = slot_of(key);
            match self.topology.owners.get(slot as usize) {
                Some(&i) if i != NO_OWNER => {
                    let shard = &self.topology.shards[i as usize];
                    if !shard.publisher.is_connected() {
                        self.order.push(Err(Unsent::Down(shard.id.clone())));
                        return None;
                    }
                    Some(i as usize)
                }
                _ => {
                    self.order.push(Err(Unsent::NoOwner(slot)));
                    return None;
                }
            }
        };
        let Some(shard) = shard else {
            self.order.push(Err(Unsent::NoOwner(0)));
            return None;
        };
        let group = match self.groups.iter().position(|(s, ..)| *s == shard) {
            Some(g) => g,
            None => {
                let pipe = self.topology.shards[shard].publisher.pipeline();
                self.groups.push((shard, pipe, 0));
                self.groups.len() - 1
            }
        };
        let entry = &mut self.groups[group];
        self.order.push(Ok((group, entry.2)));
        entry.2 += 1;
        Some(&entry.1)
    }

    /// Commands queued so far.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Sends every shard's pipeline (concurrently) and returns the results
    /// in queue order.
    pub(crate) async fn all(self) -> Vec<Result<Value, fred::error::Error>> {
        let Self {
            redis,
            groups,
            order,
            ..
        } = self;
        let sent = groups
            .into_iter()
            .map(|(_, pipe, _)| async move { pipe.try_all::<Value>().await });
        let mut replies: Vec<Vec<Option<Result<Value, fred::error::Error>>>> =
            futures_util::future::join_all(sent)
                .await
                .into_iter()
                .map(|r| r.into_iter().map(Some).collect())
                .collect();
        order
            .into_iter()
            .map(|at| match at {
                Ok((g, i)) => {
                    let r = replies
                        .get_mut(g)
                        .and_then(|rs| rs.get_mut(i))
                        .and_then(Option::take)
                        .unwrap_or_else(|| {
                            Err(fred::error::Error::new(
                                fred::error::ErrorKind::Unknown,
                                "no reply in the pipeline",
                            ))
                        });
                    if let Err(e) = &r {
                        redis.note(e);
                    }
                    r
                }
                Err(unsent) => Err(unsent.error()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> fred::error::Error {
        fred::error::Error::new(fred::error::ErrorKind::Unknown, s.to_owned())
    }

    #[test]
    fn redirections_are_told_apart() {
        assert_eq!(
            redirect(&err("MOVED 3999 127.0.0.1:6381")),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(&err("ASK 3999 127.0.0.1:6381")),
            Some(Redirect::Ask("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(&err(
                "TRYAGAIN Multiple keys request during rehashing of slot"
            )),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            redirect(&err("CLUSTERDOWN The cluster is down")),
            Some(Redirect::Down)
        );
        assert_eq!(redirect(&err("NOSCRIPT No matching script")), None);
        assert_eq!(redirect(&err("timeout")), None);
    }

    #[test]
    fn the_url_scheme_selects_the_layout() {
        assert_eq!(layout_of("redis://127.0.0.1:6379"), Layout::Single);
        assert_eq!(layout_of("rediss://h:6379"), Layout::Single);
        assert_eq!(
            layout_of("redis-cluster://127.0.0.1:30001?node=127.0.0.1:30002"),
            Layout::Cluster
        );
        assert_eq!(layout_of("rediss-cluster://h:30001"), Layout::Cluster);
    }

    #[test]
    fn channels_are_grouped_by_slot() {
        let chans: Vec<String> = ["p:{t/a}:ch", "p:{t/a}:in:n1", "p:{t/b}:ch"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let groups = by_slot(&chans);
        assert_eq!(groups.len(), 2);
        let a = groups.iter().find(|(s, _)| *s == slot_of("t/a")).unwrap();
        assert_eq!(a.1.len(), 2);
    }
}
