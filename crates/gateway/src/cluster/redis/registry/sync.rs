//! Heartbeats, resync after a (re)connect, sweeping dead nodes, deregistering.

use fred::interfaces::{
    HashesInterface, KeysInterface, LuaInterface, PubsubInterface, SetsInterface,
    SortedSetsInterface,
};
use fred::types::sorted_sets::Ordering;
use fred::types::{Expiration, SetOptions, Value};
use tracing::{debug, info, warn};

use super::actor::Actor;
use crate::clock::now_millis;
use crate::cluster::BusError;
use crate::cluster::redis::keys::{self, IndexEntry, parse_index};
use crate::cluster::redis::scripts;

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

impl Actor {
    /// Refreshes this node and its rooms, reads node liveness, sweeps dead nodes.
    pub(super) async fn heartbeat(&mut self) {
        if !self.health.is_synced() {
            return;
        }
        let beat = match self.beat_node().await {
            Ok(Some(beat)) => self.refresh_rooms(beat.expiry).await.map(|()| beat),
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
        if let Err(e) = self.sweep_dead().await {
            debug!(error = %e, cause = ?std::error::Error::source(&e), "sweep failed; another round will retry");
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
        let pipe = self.publisher.pipeline();
        let _: Result<(), _> = pipe
            .zadd(
                self.keys.nodes(),
                None,
                None,
                false,
                false,
                (expiry as f64, node.as_str()),
            )
            .await;
        let _: Result<(), _> = pipe
            .set(
                self.keys.node_info(&node),
                info,
                Some(Expiration::PX(ttl as i64)),
                None,
                false,
            )
            .await;
        let _: Result<(), _> = pipe
            .expire(self.keys.node_index(&node), INDEX_TTL_SECS, None)
            .await;
        let _: Result<(), _> = pipe
            .sismember(self.keys.node_index(&node), keys::INDEX_MARKER)
            .await;
        let _: Result<(), _> = pipe
            .zrangebyscore(self.keys.nodes(), now as f64, "+inf", false, None)
            .await;
        let _: Result<(), _> = pipe
            .zrangebyscore(self.keys.nodes(), "-inf", format!("({now}"), false, None)
            .await;
        let mut results = pipe.try_all::<Value>().await;
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
            self.health.set_synced(false);
            return Ok(None);
        }
        Ok(Some(Beat { now, expiry }))
    }

    /// Renews the host entry of every room this node has members in.
    async fn refresh_rooms(&mut self, expiry: u64) -> Result<(), BusError> {
        let node = self.keys.node().to_owned();
        let mut pipe = Chunked::new(&self.publisher, "heartbeat rooms");
        for (tenant, room) in self.registered.rooms.keys() {
            let p = pipe.next(2).await?;
            queue_room_host(p, &self.keys, tenant, room, &node, expiry).await;
        }
        pipe.finish().await
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
        let grace = self.config.entry_ttl().as_millis() as u64 * SWEEP_GRACE_TTLS;
        let threshold = now_millis().saturating_sub(grace);
        let sweepable: Vec<String> = self
            .publisher
            .zrangebyscore(
                self.keys.nodes(),
                "-inf",
                format!("({threshold}"),
                false,
                None,
            )
            .await
            .map_err(redis_err("sweep candidates"))?;
        if sweepable.is_empty() {
            return Ok(());
        }
        let lock_ms = (self.config.heartbeat.as_millis() as i64 * 2).max(1);
        let got: Option<String> = self
            .publisher
            .set(
                self.keys.sweeper(),
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
        let _: Result<(), _> = self
            .publisher
            .zremrangebyscore(self.keys.rooms(), "-inf", format!("({threshold}"))
            .await;
        for node in sweepable {
            if node == self.keys.node() {
                continue;
            }
            info!(dead_node = %node, "sweeping the registry entries of a dead node");
            self.sweep(&node).await?;
            let _: i64 = scripts::REMOVE_DEAD_NODE
                .evalsha_with_reload(
                    &self.publisher,
                    vec![self.keys.nodes()],
                    vec![node, threshold.to_string()],
                )
                .await
                .map_err(redis_err("sweep"))?;
        }
        Ok(())
    }

    /// Removes every registry entry `node` recorded in its index.
    pub(super) async fn sweep(&self, node: &str) -> Result<(), BusError> {
        let index = self.keys.node_index(node);
        let entries: Vec<String> = self
            .publisher
            .smembers(&index)
            .await
            .map_err(redis_err("sweep index"))?;
        for chunk in entries.chunks(CHUNK) {
            let pipe = self.publisher.pipeline();
            let mut rooms = Vec::new();
            for entry in chunk {
                match parse_index(entry) {
                    Some(IndexEntry::Room(t, r)) => {
                        let keys = self.keys.room_script_keys(&t, &r);
                        scripts::queue(&pipe, &scripts::SWEEP_ROOM, keys, vec![node.into()]).await;
                        rooms.push(Some(keys::room_id(&t, &r)));
                    }
                    Some(IndexEntry::User(t, u)) => {
                        let _: Result<(), _> = pipe.hdel(self.keys.user_conns(&t, &u), node).await;
                        rooms.push(None);
                    }
                    Some(IndexEntry::Tenant(t)) => {
                        let _: Result<(), _> = pipe.hdel(self.keys.tenant_conns(&t), node).await;
                        rooms.push(None);
                    }
                    None => {}
                }
            }
            let results = pipe.try_all::<Value>().await;
            let mut emptied = Vec::new();
            for (room, result) in rooms.into_iter().zip(results) {
                match (room, result) {
                    (Some(room), Ok(v)) if v.as_i64() == Some(0) => emptied.push(room),
                    (_, Err(e)) => return Err(BusError::redis("sweep", e)),
                    _ => {}
                }
            }
            if !emptied.is_empty() {
                let _: () = self
                    .publisher
                    .zrem(self.keys.rooms(), emptied)
                    .await
                    .map_err(redis_err("sweep rooms"))?;
            }
        }
        let _: () = self
            .publisher
            .del(vec![index, self.keys.node_info(node)])
            .await
            .map_err(redis_err("sweep"))?;
        Ok(())
    }

    /// Rewrites this node's registry and subscriptions from its own view:
    /// after start and after every reconnect.
    pub(super) async fn resync(&mut self) -> Result<(), BusError> {
        self.health.set_synced(false);
        for script in scripts::all() {
            if let Some(lua) = script.lua() {
                let _: Value = self
                    .publisher
                    .script_load(lua.to_string())
                    .await
                    .map_err(redis_err("script load"))?;
            }
        }
        // Renew our heartbeat first, so that no sweeper takes us for dead
        // while we rewrite our entries.
        let expiry = now_millis() + self.config.entry_ttl().as_millis() as u64;
        let _: () = self
            .publisher
            .zadd(
                self.keys.nodes(),
                None,
                None,
                false,
                false,
                (expiry as f64, self.keys.node()),
            )
            .await
            .map_err(redis_err("resync heartbeat"))?;
        // Subscriptions: inbox and control, then every room/tenant channel we hold.
        self.channels.reset_subscribed();
        self.channels.pin(self.keys.inbox(self.keys.node()));
        self.channels.pin(self.keys.control());
        let all = self.channels.all();
        for batch in all.chunks(SUBSCRIBE_BATCH) {
            self.subscriber
                .subscribe(batch.to_vec())
                .await
                .map_err(redis_err("resubscribe"))?;
            self.channels.mark_subscribed(batch);
        }
        // Registry: purge whatever an earlier incarnation or a half-applied
        // operation left, then write exactly our view.
        let node = self.keys.node().to_owned();
        self.sweep(&node).await?;
        let expiry = now_millis() + self.config.entry_ttl().as_millis() as u64;
        // The index first (a superset is safe to sweep), then the entries,
        // in pipelines of CHUNK commands so that a node with many rooms
        // never sends one pipeline larger than a command timeout allows.
        let mut index = vec![keys::INDEX_MARKER.to_owned()];
        index.extend(
            self.registered
                .rooms
                .keys()
                .map(|(t, r)| keys::index_room(t, r)),
        );
        index.extend(
            self.registered
                .users
                .keys()
                .map(|(t, u)| keys::index_user(t, u)),
        );
        index.extend(self.registered.tenants.keys().map(keys::index_tenant));
        for chunk in index.chunks(CHUNK) {
            let _: () = self
                .publisher
                .sadd(self.keys.node_index(&node), chunk.to_vec())
                .await
                .map_err(redis_err("re-register index"))?;
        }
        let mut pipe = Chunked::new(&self.publisher, "re-register");
        for ((tenant, room), users) in &self.registered.rooms {
            let p = pipe.next(3).await?;
            queue_room_host(p, &self.keys, tenant, room, &node, expiry).await;
            let fields: Vec<(String, String)> = users
                .iter()
                .map(|(u, n)| (format!("{node}|{u}"), n.to_string()))
                .collect();
            let _: Result<(), _> = p.hset(self.keys.room_members(tenant, room), fields).await;
        }
        for ((tenant, user), n) in &self.registered.users {
            let p = pipe.next(1).await?;
            let _: Result<(), _> = p
                .hset(
                    self.keys.user_conns(tenant, user),
                    (node.as_str(), n.to_string()),
                )
                .await;
        }
        for (tenant, n) in &self.registered.tenants {
            let p = pipe.next(1).await?;
            let _: Result<(), _> = p
                .hset(
                    self.keys.tenant_conns(tenant),
                    (node.as_str(), n.to_string()),
                )
                .await;
        }
        pipe.finish().await?;
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

    /// Removes this node from the cluster (drain): its entries, then itself.
    pub(super) async fn deregister(&mut self) {
        let node = self.keys.node().to_owned();
        if let Err(e) = self.sweep(&node).await {
            warn!(error = %e, "deregistration incomplete; entries expire with the heartbeat TTL");
        }
        let _: Result<(), _> = self.publisher.zrem(self.keys.nodes(), node.as_str()).await;
        let _: Result<(), _> = self.subscriber.unsubscribe(Vec::<String>::new()).await;
        self.health.set_synced(false);
    }
}

/// When a heartbeat ran, and until when its entries hold.
struct Beat {
    now: u64,
    expiry: u64,
}

/// Queues "this node hosts the room until `expiry`": the room's host entry,
/// and the room in the cluster's room set (whose score only moves up, as
/// several nodes renew it).
async fn queue_room_host<C: SortedSetsInterface + Sync>(
    p: &C,
    keyspace: &keys::Keyspace,
    tenant: &fanout_protocol::Name,
    room: &fanout_protocol::Name,
    node: &str,
    expiry: u64,
) {
    let _: Result<(), _> = p
        .zadd(
            keyspace.room_hosts(tenant, room),
            None,
            None,
            false,
            false,
            (expiry as f64, node),
        )
        .await;
    queue_room_expiries(
        p,
        keyspace,
        vec![(expiry as f64, keys::room_id(tenant, room))],
    )
    .await;
}

/// Queues the expiry of rooms in the cluster's room set (never lowering one).
pub(super) async fn queue_room_expiries<C: SortedSetsInterface + Sync>(
    p: &C,
    keyspace: &keys::Keyspace,
    rooms: Vec<(f64, String)>,
) {
    let _: Result<(), _> = p
        .zadd(
            keyspace.rooms(),
            None,
            Some(Ordering::GreaterThan),
            false,
            false,
            rooms,
        )
        .await;
}

/// A pipeline that is sent once it holds about `CHUNK` commands, so that a
/// node with many rooms never sends one pipeline larger than a command
/// timeout allows.
struct Chunked<'a> {
    client: &'a fred::clients::Client,
    pipe: fred::clients::Pipeline<fred::clients::Client>,
    commands: usize,
    /// Names the work in errors.
    what: &'static str,
}

impl<'a> Chunked<'a> {
    fn new(client: &'a fred::clients::Client, what: &'static str) -> Self {
        Self {
            client,
            pipe: client.pipeline(),
            commands: 0,
            what,
        }
    }

    /// The pipeline to queue the next `commands` commands on (sending the
    /// current one first when they would not fit).
    async fn next(
        &mut self,
        commands: usize,
    ) -> Result<&fred::clients::Pipeline<fred::clients::Client>, BusError> {
        if self.commands > 0 && self.commands + commands > CHUNK {
            self.send().await?;
        }
        self.commands += commands;
        Ok(&self.pipe)
    }

    async fn send(&mut self) -> Result<(), BusError> {
        let pipe = std::mem::replace(&mut self.pipe, self.client.pipeline());
        self.commands = 0;
        match pipe
            .try_all::<Value>()
            .await
            .into_iter()
            .find(Result::is_err)
        {
            Some(Err(e)) => Err(BusError::redis(self.what, e)),
            _ => Ok(()),
        }
    }

    async fn finish(mut self) -> Result<(), BusError> {
        if self.commands > 0 {
            self.send().await?;
        }
        Ok(())
    }
}
