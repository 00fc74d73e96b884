//! Heartbeats, resync after a (re)connect, sweeping dead nodes, deregistering.
//!
//! On a Redis Cluster every multi-key step is a [`Pipe`] that sends each
//! command to the shard owning its key, and a resync can be scoped to one
//! shard: after that shard reconnected, was promoted or took slots over,
//! only what lives in its slots is resubscribed and rewritten, while the
//! other shards keep serving.

use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface};
use fred::types::{Expiration, SetOptions, Value};
use tracing::{debug, info, warn};

use super::actor::Actor;
use super::writes::{Cause, load_scripts, queue_room_expiries, queue_room_removals, users_of};
use crate::clock::now_millis;
use crate::cluster::BusError;
use crate::cluster::redis::keys::{self, IndexEntry, Layout, parse_index};
use crate::cluster::redis::scripts;
use crate::cluster::redis::shards::{self, Pipe, Redis, Shard};
use crate::cluster::redis::slots::slot_of;

/// Commands per pipeline when writing many entries.
const CHUNK: usize = 1_000;
/// Channels per SUBSCRIBE when resubscribing.
const SUBSCRIBE_BATCH: usize = 500;
/// Lifetime of a node's registry index; refreshed by every heartbeat.
const INDEX_TTL_SECS: i64 = 24 * 3600;
/// A dead node is swept this many TTLs after its heartbeat lapsed.
const SWEEP_GRACE_TTLS: u64 = 2;

fn redis_err(op: &'static str) -> impl Fn(fred::error::Error) -> BusError {
    move |e| BusError::redis(op, e)
}

/// The first error of a pipeline's results.
fn first_error(
    results: Vec<Result<Value, fred::error::Error>>,
    op: &'static str,
) -> Result<Vec<Value>, BusError> {
    results
        .into_iter()
        .map(|r| r.map_err(redis_err(op)))
        .collect()
}

impl Actor {
    /// The command connection of the shard owning `key`.
    fn client_for(&self, key: &str, op: &'static str) -> Result<Client, BusError> {
        self.redis
            .shard_of_key(key)
            .map(|s| s.publisher.clone())
            .ok_or(BusError::NoReply { op })
    }

    /// Refreshes this node and its rooms, reads node liveness, sweeps dead nodes.
    pub(super) async fn heartbeat(&mut self) {
        if !self.health.is_synced() {
            return;
        }
        let beat = match self.beat_node().await {
            Ok(Some(beat)) => {
                if self.keys.layout() == Layout::Cluster {
                    // The node's own entries are renewed: it is alive. Its
                    // rooms' shards fail on their own (refresh_rooms marks
                    // them), so record the beat before waiting on them.
                    self.health.heartbeat_ok(beat.now);
                }
                self.refresh_rooms(beat.expiry).await.map(|()| beat)
            }
            Ok(None) => return, // swept while alive: the next heartbeat resyncs
            Err(e) => Err(e),
        };
        match beat {
            Ok(beat) => self.health.heartbeat_ok(beat.now),
            Err(e) => {
                warn!(error = %e, cause = ?std::error::Error::source(&e), "heartbeat failed");
                self.health.heartbeat_failed(&e);
                return;
            }
        }
        self.repair().await;
        if let Err(e) = self.sweep_dead().await {
            debug!(error = %e, cause = ?std::error::Error::source(&e), "sweep failed; another round will retry");
        }
        if let Err(e) = self.audit_step().await {
            debug!(error = %e, cause = ?std::error::Error::source(&e), "registry audit step failed; the next round retries");
        }
    }

    /// Renews this node's own entries and reads who else is alive. `None`
    /// when the node finds its registry swept (it is then marked unsynced).
    async fn beat_node(&mut self) -> Result<Option<Beat>, BusError> {
        let now = now_millis();
        let ttl = self.config.entry_ttl().as_millis() as u64;
        let expiry = now + ttl;
        let node = self.keys.node().to_owned();
        let info = serde_json::json!({
            "id": node,
            "addr": self.addr,
            "started_ms": self.started_ms,
            "connections": self.registered.tenants.values().sum::<u32>(),
            "rooms": self.registered.rooms.len(),
        })
        .to_string();
        let (nodes, info_key, index) = (
            self.keys.nodes(),
            self.keys.node_info(&node),
            self.keys.node_index(&node),
        );
        let mut pipe = self.redis.pipe();
        if let Some(p) = pipe.at(&nodes) {
            let _: Result<(), _> = p
                .zadd(
                    &nodes,
                    None,
                    None,
                    false,
                    false,
                    (expiry as f64, node.as_str()),
                )
                .await;
        }
        if let Some(p) = pipe.at(&info_key) {
            let _: Result<(), _> = p
                .set(
                    &info_key,
                    info,
                    Some(Expiration::PX(ttl as i64)),
                    None,
                    false,
                )
                .await;
        }
        if let Some(p) = pipe.at(&index) {
            let _: Result<(), _> = p.expire(&index, INDEX_TTL_SECS, None).await;
        }
        if let Some(p) = pipe.at(&index) {
            let _: Result<(), _> = p.sismember(&index, keys::INDEX_MARKER).await;
        }
        if let Some(p) = pipe.at(&nodes) {
            let _: Result<(), _> = p
                .zrangebyscore(&nodes, now as f64, "+inf", false, None)
                .await;
        }
        if let Some(p) = pipe.at(&nodes) {
            let _: Result<(), _> = p
                .zrangebyscore(&nodes, "-inf", format!("({now}"), false, None)
                .await;
        }
        let mut results = pipe.all().await;
        let dead: Vec<String> = results
            .pop()
            .and_then(Result::ok)
            .and_then(|v| v.convert().ok())
            .unwrap_or_default();
        let live: Vec<String> = results
            .pop()
            .and_then(Result::ok)
            .and_then(|v| v.convert().ok())
            .unwrap_or_default();
        let indexed = results.pop().and_then(Result::ok).and_then(|v| v.as_bool());
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(BusError::redis("heartbeat", e));
        }
        self.liveness.update(live, dead);
        if indexed == Some(false) {
            // Our registry was swept while we were alive (we missed heartbeats
            // long enough to be taken for dead). Rewrite it.
            warn!("this node's registry entries were swept; re-registering");
            self.swept = true;
            self.health.set_synced(false);
            return Ok(None);
        }
        Ok(Some(Beat { now, expiry }))
    }

    /// The live nodes as the node index says now (admissions that met a
    /// node this one did not know yet); the last heartbeat's view if Redis
    /// does not answer.
    pub(super) async fn read_live(&self) -> Vec<String> {
        let nodes = self.keys.nodes();
        let read: Result<Vec<String>, BusError> = match self.client_for(&nodes, "live nodes") {
            Ok(client) => client
                .zrangebyscore(&nodes, now_millis() as f64, "+inf", false, None)
                .await
                .map_err(redis_err("live nodes")),
            Err(e) => Err(e),
        };
        read.unwrap_or_else(|_| self.liveness.live())
    }

    /// Renews the host entry of every room this node has members in. On a
    /// Redis Cluster a shard that fails is marked for a resync of its own
    /// (its rooms are rewritten when it is back) instead of failing the
    /// node's heartbeat.
    async fn refresh_rooms(&mut self, expiry: u64) -> Result<(), BusError> {
        let node = self.keys.node().to_owned();
        let tolerant = (self.keys.layout() == Layout::Cluster).then_some(self.config.heartbeat / 2);
        let mut pipe = Chunked::new(&self.redis, "heartbeat rooms", tolerant);
        let mut rooms = Vec::with_capacity(self.registered.rooms.len());
        for (tenant, room) in self.registered.rooms.keys() {
            let hosts = self.keys.room_hosts(tenant, room);
            if let Some(p) = pipe.next(&hosts).await? {
                let _: Result<(), _> = p
                    .zadd(&hosts, None, None, false, false, (expiry as f64, &*node))
                    .await;
            }
            rooms.push((expiry as f64, keys::room_id(tenant, room)));
        }
        pipe.finish().await?;
        let mut pipe = self.redis.pipe();
        queue_room_expiries(&mut pipe, &self.keys, rooms).await;
        let sent = pipe.all();
        let results = match tolerant {
            Some(limit) => tokio::time::timeout(limit, sent).await.unwrap_or_default(),
            None => sent.await,
        };
        for r in results {
            if let Err(e) = r {
                if tolerant.is_none() {
                    // One Redis: as every heartbeat write, a failure fails it.
                    return Err(BusError::redis("heartbeat rooms", e));
                }
                debug!(error = %e, "room index refresh failed; the next heartbeat retries");
            }
        }
        Ok(())
    }

    /// One node per round sweeps the registry entries of nodes whose
    /// heartbeat lapsed more than `SWEEP_GRACE_TTLS` TTLs ago.
    ///
    /// Readers already ignore a dead node's entries from the moment its
    /// heartbeat lapses; the sweep only collects the garbage, so it can wait.
    /// Waiting makes it very unlikely to race a node that comes back (whose
    /// resync first renews its heartbeat), and a node that finds its own
    /// index swept re-registers at its next heartbeat anyway.
    async fn sweep_dead(&mut self) -> Result<(), BusError> {
        // After an outage of Redis every node's heartbeat has lapsed at
        // once; the first node back must not sweep the others before they
        // had the time to reconnect and beat again (each would find itself
        // swept, its users announced gone and back).
        let grace_time = self.config.entry_ttl() * SWEEP_GRACE_TTLS as u32;
        if self.registered_at.is_some_and(|t| t.elapsed() < grace_time) {
            return Ok(());
        }
        let grace = self.config.entry_ttl().as_millis() as u64 * SWEEP_GRACE_TTLS;
        let threshold = now_millis().saturating_sub(grace);
        let nodes = self.keys.nodes();
        let sweepable: Vec<String> = self
            .client_for(&nodes, "sweep candidates")?
            .zrangebyscore(&nodes, "-inf", format!("({threshold}"), false, None)
            .await
            .map_err(redis_err("sweep candidates"))?;
        if sweepable.is_empty() {
            return Ok(());
        }
        let lock_ms = (self.config.heartbeat.as_millis() as i64 * 2).max(1);
        let lock = self.keys.sweeper();
        let got: Option<String> = self
            .client_for(&lock, "sweeper lock")?
            .set(
                &lock,
                self.keys.node(),
                Some(Expiration::PX(lock_ms)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(redis_err("sweeper lock"))?;
        if got.is_none() {
            return Ok(());
        }
        // Rooms whose every host is gone (kept by no heartbeat) are garbage too.
        let mut pipe = self.redis.pipe();
        for bucket in self.keys.all_rooms() {
            if let Some(p) = pipe.at(&bucket) {
                let _: Result<(), _> = p
                    .zremrangebyscore(&bucket, "-inf", format!("({threshold}"))
                    .await;
            }
        }
        let _ = pipe.all().await;
        for node in sweepable {
            if node == self.keys.node() {
                continue;
            }
            info!(dead_node = %node, "sweeping the registry entries of a dead node");
            self.sweep(&node, |_| true, Cause::Sweep).await?;
            self.delete_node(&node).await?;
            let _: i64 = self
                .redis
                .eval(
                    &scripts::REMOVE_DEAD_NODE,
                    vec![self.keys.nodes()],
                    vec![node.into(), threshold.to_string().into()],
                )
                .await
                .map_err(redis_err("sweep"))?;
        }
        Ok(())
    }

    /// Deletes a node's index and info (two slots on a Redis Cluster).
    pub(super) async fn delete_node(&self, node: &str) -> Result<(), BusError> {
        let mut pipe = self.redis.pipe();
        for key in [self.keys.node_index(node), self.keys.node_info(node)] {
            if let Some(p) = pipe.at(&key) {
                let _: Result<(), _> = p.del(&key).await;
            }
        }
        first_error(pipe.all().await, "sweep").map(drop)
    }

    /// Removes the registry entries `node` recorded in its index whose keys
    /// `within` selects (all of them, or those of one shard), reporting the
    /// users whose last field in a room went as departures.
    pub(super) async fn sweep(
        &self,
        node: &str,
        within: impl Fn(&str) -> bool,
        cause: Cause,
    ) -> Result<(), BusError> {
        let index = self.keys.node_index(node);
        let entries: Vec<String> = self
            .client_for(&index, "sweep index")?
            .smembers(&index)
            .await
            .map_err(redis_err("sweep index"))?;
        for chunk in entries.chunks(CHUNK) {
            let mut pipe = self.redis.pipe();
            let mut rooms = Vec::new();
            for entry in chunk {
                match parse_index(entry) {
                    Some(IndexEntry::Room(t, r)) => {
                        let keys = self.keys.room_script_keys(&t, &r);
                        if !within(&keys[0]) {
                            continue;
                        }
                        if let Some(p) = pipe.at(&keys[0]) {
                            scripts::queue(p, &scripts::SWEEP_ROOM, keys, vec![node.into()]).await;
                        }
                        rooms.push(Some((t, r)));
                    }
                    Some(IndexEntry::User(t, u)) => {
                        let key = self.keys.user_conns(&t, &u);
                        if !within(&key) {
                            continue;
                        }
                        if let Some(p) = pipe.at(&key) {
                            let _: Result<(), _> = p.hdel(&key, node).await;
                        }
                        rooms.push(None);
                    }
                    Some(IndexEntry::Tenant(t)) => {
                        let key = self.keys.tenant_conns(&t);
                        if !within(&key) {
                            continue;
                        }
                        if let Some(p) = pipe.at(&key) {
                            let _: Result<(), _> = p.hdel(&key, node).await;
                        }
                        rooms.push(None);
                    }
                    None => {}
                }
            }
            let results = pipe.all().await;
            let mut emptied = Vec::new();
            for (room, result) in rooms.into_iter().zip(results) {
                match (room, result) {
                    (Some((t, r)), Ok(v)) => {
                        self.depart(&t, &r, users_of(&v, 1), cause);
                        let hosts = match &v {
                            Value::Array(items) => items.first().and_then(Value::as_i64),
                            _ => None,
                        };
                        if hosts == Some(0) {
                            emptied.push(keys::room_id(&t, &r));
                        }
                    }
                    (_, Err(e)) => return Err(BusError::redis("sweep", e)),
                    _ => {}
                }
            }
            let mut pipe = self.redis.pipe();
            queue_room_removals(&mut pipe, &self.keys, emptied).await;
            first_error(pipe.all().await, "sweep rooms")?;
        }
        Ok(())
    }

    /// Rewrites this node's registry and subscriptions from its own view:
    /// after start and after every reconnect (one Redis), or when the node
    /// was swept while alive.
    ///
    /// Nothing is purged first: every entry of the view and of the node's
    /// index is written over in place and what the view no longer has is
    /// removed ([`Actor::reconcile`]), so other nodes never see this node's
    /// users vanish and come back. The node is not ready meanwhile only
    /// because its subscriptions may be missing.
    ///
    /// On a Redis Cluster the node-wide part (heartbeat, index) must
    /// succeed; each shard is then resynced on its own, and a shard that
    /// fails stays unsynced (its slots answer 503) and is retried by the
    /// supervisor, while the others serve.
    pub(super) async fn resync(&mut self) -> Result<(), BusError> {
        self.health.set_synced(false);
        let shards = self.redis.shards();
        // A reconnect during the resync makes the shard's part count for
        // nothing (its subscriptions may be on the replaced connection).
        let generations: Vec<u64> = shards.iter().map(|s| s.generation()).collect();
        for shard in &shards {
            shard.set_synced(false);
        }
        let cluster = self.keys.layout() == Layout::Cluster;
        for shard in &shards {
            match load_scripts(shard).await {
                Err(e) if !cluster => return Err(e),
                _ => {}
            }
        }
        // Renew our heartbeat first, so that no sweeper takes us for dead
        // while we rewrite our entries.
        let expiry = now_millis() + self.config.entry_ttl().as_millis() as u64;
        let nodes = self.keys.nodes();
        let _: () = self
            .client_for(&nodes, "resync heartbeat")?
            .zadd(
                &nodes,
                None,
                None,
                false,
                false,
                (expiry as f64, self.keys.node()),
            )
            .await
            .map_err(redis_err("resync heartbeat"))?;
        // The index first (a superset is safe): what is written below must
        // stay findable by a sweep if this node dies halfway.
        self.write_index(|_| true).await?;
        for pinned in self.keys.pinned() {
            self.channels.pin(pinned);
        }
        let rejoin = self.swept;
        for (shard, generation) in shards.iter().zip(generations) {
            shard.take_moved();
            let on = self.on_shard(shard);
            match self.rewrite(shard, on, rejoin).await {
                Ok(()) => {
                    shard.synced_since(generation);
                }
                Err(e) if cluster => {
                    warn!(shard = %shard.id, error = %e, "resync of a redis shard failed; retrying it alone");
                }
                Err(e) => return Err(e),
            }
        }
        self.swept = false;
        self.registered_at = Some(tokio::time::Instant::now());
        self.health.set_synced(true);
        // Node entries and liveness; the rooms were just written.
        if let Some(beat) = self.beat_node().await? {
            self.health.heartbeat_ok(beat.now);
        }
        crate::metrics::resubscribed();
        info!(
            rooms = self.registered.rooms.len(),
            users = self.registered.users.len(),
            "registered in the cluster"
        );
        Ok(())
    }

    /// Redis Cluster: resubscribes and rewrites what lives on one shard
    /// (after it reconnected, was promoted, or took slots over). Its entries
    /// are written over in place from the node's view, so that what a
    /// failover lost or kept stale is corrected.
    pub(super) async fn resync_shard(&mut self, id: &str) -> Result<(), BusError> {
        let Some(shard) = self.redis.shard(id) else {
            return Ok(()); // no longer a primary; its slots' new owner resyncs
        };
        let generation = shard.generation();
        shard.set_synced(false);
        shard.take_moved();
        load_scripts(&shard).await?;
        let node = self.keys.node().to_owned();
        if self.redis.key_on(&self.keys.node_index(&node), id) {
            self.write_index(|_| true).await?;
        }
        let on = self.on_shard(&shard);
        self.rewrite(&shard, on, false).await?;
        if !shard.synced_since(generation) {
            info!(shard = %id, "a redis shard reconnected during its resync; resyncing it again");
        }
        crate::metrics::shard_resynced();
        info!(shard = %id, "resubscribed and re-registered on a redis shard");
        Ok(())
    }

    /// Redis Cluster: slots a shard took over by a migration. Their keys
    /// arrived intact; their channels are subscribed on the new owner (the
    /// old one dropped them, telling only with a pushed `sunsubscribe`) and
    /// the node's entries there are written over. The shard's other slots
    /// are not touched and keep serving.
    pub(super) async fn resync_slots(
        &mut self,
        id: &str,
        slots: &std::collections::BTreeSet<u16>,
    ) -> Result<(), BusError> {
        let Some(shard) = self.redis.shard(id) else {
            return Ok(());
        };
        load_scripts(&shard).await?;
        self.rewrite(&shard, |k: &str| slots.contains(&slot_of(k)), false)
            .await?;
        if shard.is_synced() && !shard.has_moved() {
            shard.gap_closed();
        }
        crate::metrics::shard_resynced();
        info!(shard = %id, slots = slots.len(), "resubscribed and re-registered moved redis slots");
        Ok(())
    }

    /// Selects the keys and channels living on `shard` (all of them on one
    /// Redis).
    fn on_shard(&self, shard: &Shard) -> impl Fn(&str) -> bool + use<> {
        let redis = self.redis.clone();
        let cluster = self.keys.layout() == Layout::Cluster;
        let id = shard.id.clone();
        move |key: &str| !cluster || redis.key_on(key, &id)
    }

    /// Adds every entry of the node's view to its index (a superset is safe).
    async fn write_index(&self, within: impl Fn(&str) -> bool) -> Result<(), BusError> {
        let node = self.keys.node();
        let mut index = vec![keys::INDEX_MARKER.to_owned()];
        index.extend(self.view_entries());
        let key = self.keys.node_index(node);
        if !within(&key) {
            return Ok(());
        }
        let client = self.client_for(&key, "re-register index")?;
        for chunk in index.chunks(CHUNK) {
            let _: () = client
                .sadd(&key, chunk.to_vec())
                .await
                .map_err(redis_err("re-register index"))?;
        }
        Ok(())
    }

    /// Subscribes the channels and writes the entries of the node's view
    /// that `on` selects, on `shard` (with its probe channel). On one Redis
    /// the one shard holds everything. `rejoin`: this node was swept while
    /// alive, and the users it re-registers are announced again.
    async fn rewrite(
        &mut self,
        shard: &Shard,
        on: impl Fn(&str) -> bool,
        rejoin: bool,
    ) -> Result<(), BusError> {
        // Subscriptions before entries: a node hears a room before it
        // registers as its host.
        self.channels.reset_subscribed(&on);
        let wanted = self.channels.all(&on);
        if let Some(tag) = shard.probe_tag() {
            // Not one of `channels` (which would let it linger out): the
            // probe channel lives as long as the shard.
            let probe = [self.keys.probe_channel(&tag)];
            if let (_, Some(e)) = self.redis.subscribe(&probe).await {
                return Err(BusError::redis("resubscribe", e));
            }
        }
        for batch in wanted.chunks(SUBSCRIBE_BATCH) {
            let (done, failed) = self.redis.subscribe(batch).await;
            self.channels.mark_subscribed(&done);
            if let Some(e) = failed {
                return Err(BusError::redis("resubscribe", e));
            }
        }
        self.reconcile(on, rejoin).await
    }

    /// The node closes its clients: its user and tenant counts leave Redis
    /// at once (the view forgets them too, so that resyncs and repairs do
    /// not write them back), pipelined. Its rooms stay until each client's
    /// leave or the deregistration: members still connected keep getting
    /// their messages while the drain window runs. If Redis does not answer
    /// the deregistration (or the sweeper) removes them later.
    pub(super) async fn release_counts(&mut self) {
        let node = self.keys.node().to_owned();
        let users = std::mem::take(&mut self.registered.users);
        let tenants = std::mem::take(&mut self.registered.tenants);
        if !self.health.is_connected() {
            return;
        }
        let keys: Vec<String> = users
            .keys()
            .map(|(t, u)| self.keys.user_conns(t, u))
            .chain(tenants.keys().map(|t| self.keys.tenant_conns(t)))
            .collect();
        for chunk in keys.chunks(CHUNK) {
            let mut pipe = self.redis.pipe();
            for key in chunk {
                if let Some(p) = pipe.at(key) {
                    let _: Result<(), _> = p.hdel(key, node.as_str()).await;
                }
            }
            if let Some(Err(e)) = pipe.all().await.into_iter().find(Result::is_err) {
                debug!(error = %e, "releasing this node's counts failed; its deregistration removes them");
                return;
            }
        }
    }

    /// Removes this node from the cluster (drain): its entries, then itself.
    pub(super) async fn deregister(&mut self) {
        let node = self.keys.node().to_owned();
        if !self.health.is_connected() {
            // Waiting a command timeout per step for a Redis that is gone
            // would only hold the exit: the other nodes' sweeper removes
            // this node's entries (and announces its users' leaves) once its
            // heartbeat lapses.
            warn!("redis unreachable; leaving the registry to the sweeper");
            return;
        }
        let swept = match self.sweep(&node, |_| true, Cause::Drain).await {
            Ok(()) => self.delete_node(&node).await,
            Err(e) => Err(e),
        };
        match swept {
            Err(e) => {
                // Stay in the node index: the sweeper removes what is left
                // once the heartbeat lapses. Leaving it would hide the
                // entries from every sweep for good.
                warn!(error = %e, "deregistration incomplete; the sweeper removes the rest once the heartbeat lapses");
            }
            Ok(()) => {
                let nodes = self.keys.nodes();
                if let Ok(client) = self.client_for(&nodes, "deregister") {
                    let _: Result<(), _> = client.zrem(&nodes, node.as_str()).await;
                }
            }
        }
        // Readiness is left as it was: the node is draining (not ready on
        // its own account), and the departures reported above are still
        // to be published through this bus.
        self.redis.unsubscribe_all().await;
    }
}

/// When a heartbeat ran, and until when its entries hold.
struct Beat {
    now: u64,
    expiry: u64,
}

/// A pipeline that is sent once it holds about `CHUNK` commands, so that a
/// node with many rooms never sends one pipeline larger than a command
/// timeout allows.
///
/// `tolerant` (heartbeats on a Redis Cluster): the pipelines are waited
/// for this long at most, and a failed command marks its key's shard for a
/// resync of its own instead of failing the whole.
struct Chunked<'a> {
    redis: &'a Redis,
    pipe: Pipe,
    /// The key of each queued command (to find a failed command's shard).
    keys: Vec<String>,
    /// Names the work in errors.
    what: &'static str,
    tolerant: Option<std::time::Duration>,
}

impl<'a> Chunked<'a> {
    fn new(redis: &'a Redis, what: &'static str, tolerant: Option<std::time::Duration>) -> Self {
        Self {
            redis,
            pipe: redis.pipe(),
            keys: Vec::new(),
            what,
            tolerant,
        }
    }

    /// The pipeline to queue the next command on `key` on (sending the
    /// current one first when full). `None` when no shard owns the key:
    /// that command counts as failed.
    async fn next(
        &mut self,
        key: &str,
    ) -> Result<Option<&fred::clients::Pipeline<Client>>, BusError> {
        if self.keys.len() >= CHUNK {
            self.send().await?;
        }
        self.keys.push(key.to_owned());
        Ok(self.pipe.at(key))
    }

    async fn send(&mut self) -> Result<(), BusError> {
        let pipe = std::mem::replace(&mut self.pipe, self.redis.pipe());
        let keys = std::mem::take(&mut self.keys);
        if let Some(limit) = self.tolerant {
            // Waited for a bounded time only: a shard that died with
            // commands in flight holds them for the command timeout, and the
            // actor (with it the node's heartbeat) must not wait on one
            // shard. The commands are queued on their connections by the
            // first poll, so they keep their order with what follows.
            match tokio::time::timeout(limit, pipe.all()).await {
                Ok(results) => {
                    for (key, r) in keys.iter().zip(results) {
                        let Err(e) = r else { continue };
                        self.redis.mark_stale();
                        if shards::is_redirect(&e) {
                            // The slot moved: the refreshed map resyncs it
                            // on its new owner; its old shard is fine.
                            continue;
                        }
                        debug!(error = %e, what = self.what, "a redis shard failed; resyncing it");
                        if let Some(shard) = self.redis.shard_of_key(key) {
                            shard.set_synced(false);
                        }
                    }
                }
                Err(_) => {
                    debug!(
                        what = self.what,
                        "a redis shard is slow; not waiting for it"
                    );
                    self.redis.mark_stale();
                }
            }
            return Ok(());
        }
        for r in pipe.all().await {
            if let Err(e) = r {
                return Err(BusError::redis(self.what, e));
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), BusError> {
        if !self.keys.is_empty() {
            self.send().await?;
        }
        Ok(())
    }
}
