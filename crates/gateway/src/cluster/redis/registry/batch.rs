//! Applying a batch of registry changes: subscribe, then one pipeline.
//!
//! Changes are applied to the actor's own view (`Registered`) in the order
//! they arrived, *before* the pipeline runs, so every script sees the state
//! its predecessors in the batch produced (a leave after a join in the same
//! batch knows the room is not empty). A change Redis refused is rolled back.
//! Index entries a change creates are added to the node's index at the front
//! of the same pipeline (a superset is safe to sweep); entries that end up
//! unused are removed after the pipeline, from the final view.

use std::collections::BTreeSet;

use fred::interfaces::SetsInterface;
use fred::types::Value;
use tracing::debug;

use super::actor::Actor;
use super::op::{Change, LeaveReply};
use super::state::Unknown;
use super::writes::Cause;
use crate::clock::now_millis;
use crate::cluster::redis::keys::{self, IndexEntry};
use crate::cluster::redis::{scripts, shards};
use crate::cluster::{AdmitError, BusError};
use crate::hub::LimitExceeded;

/// The error of a script that failed or got no reply.
fn script_error(script: &'static str, r: Option<Result<Value, fred::error::Error>>) -> BusError {
    match r {
        Some(Err(e)) => BusError::redis(script, e),
        _ => BusError::NoReply { op: script },
    }
}

/// The index entries a change touches.
pub(super) fn index_entries(change: &Change) -> Vec<String> {
    match change {
        Change::Register { tenant, user, .. } | Change::Unregister { tenant, user } => {
            vec![keys::index_user(tenant, user), keys::index_tenant(tenant)]
        }
        Change::Join { tenant, room, .. } | Change::Leave { tenant, room, .. } => {
            vec![keys::index_room(tenant, room)]
        }
    }
}

/// Reads a `{a, b}` script reply.
fn pair(v: &Value) -> (i64, i64) {
    match v {
        Value::Array(items) => (
            items.first().and_then(Value::as_i64).unwrap_or(0),
            items.get(1).and_then(Value::as_i64).unwrap_or(0),
        ),
        _ => (0, 0),
    }
}

impl Actor {
    /// The channels a change needs subscribed before it registers.
    fn channels_of(&self, change: &Change) -> Vec<String> {
        match change {
            Change::Register { tenant, .. } => self.keys.tenant_listen(tenant),
            Change::Join { tenant, room, .. } => self.keys.room_listen(tenant, room),
            _ => Vec::new(),
        }
    }

    /// Subscribes what the batch needs, runs its scripts in one pipeline, replies.
    pub(super) async fn flush(&mut self, mut batch: Vec<Change>) {
        if batch.is_empty() {
            return;
        }
        // 1. Channels first: a node must hear a room or tenant before it
        //    registers for it. If that fails, those changes fail now.
        let wanted: Vec<String> = batch.iter().flat_map(|c| self.channels_of(c)).collect();
        let missing = self.channels.missing(&wanted);
        if !missing.is_empty() {
            let (done, failed) = self.redis.subscribe(&missing).await;
            self.channels.mark_subscribed(&done);
            if let Some(e) = failed {
                let err = BusError::redis("subscribe", e);
                let lacking = self.channels.missing(&missing);
                let (refused, kept): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .partition(|c| self.channels_of(c).iter().any(|ch| lacking.contains(ch)));
                refused.into_iter().for_each(|c| c.refuse(err.clone()));
                batch = kept;
            }
        }

        // 2. Apply in order to our view and queue the scripts.
        let now = now_millis();
        let expiry = now + self.config.entry_ttl().as_millis() as u64;
        let node = self.keys.node().to_owned();
        let live: Vec<Value> = self.liveness.live().into_iter().map(Value::from).collect();
        let linger = self.config.channel_linger;
        let mut created = Vec::new();
        let mut touched = BTreeSet::new();
        let mut new_rooms = Vec::new();
        let mut scripted = Vec::with_capacity(batch.len());
        for change in batch {
            let (script, keys, mut args): (_, Vec<String>, Vec<Value>) = match &change {
                Change::Register {
                    tenant,
                    user,
                    limits,
                    ..
                } => {
                    let (first_user, first_tenant) = self.registered.add_conn(tenant, user);
                    if first_user {
                        created.push(keys::index_user(tenant, user));
                    }
                    if first_tenant {
                        for ch in self.keys.tenant_listen(tenant) {
                            self.channels.needed(ch);
                        }
                        created.push(keys::index_tenant(tenant));
                    }
                    touched.insert(keys::index_user(tenant, user));
                    touched.insert(keys::index_tenant(tenant));
                    let keys = vec![
                        self.keys.user_conns(tenant, user),
                        self.keys.tenant_conns(tenant),
                    ];
                    let args = vec![
                        node.clone().into(),
                        limits.per_user.into(),
                        limits.per_tenant.into(),
                        "1".into(),
                    ];
                    (&scripts::ADMIT, keys, args)
                }
                Change::Unregister { tenant, user } => {
                    let Some((_, last_tenant)) = self.registered.remove_conn(tenant, user) else {
                        // Its counts left Redis when the drain began.
                        continue;
                    };
                    if last_tenant {
                        for ch in self.keys.tenant_listen(tenant) {
                            self.channels.unneeded(&ch, linger);
                        }
                    }
                    touched.insert(keys::index_user(tenant, user));
                    touched.insert(keys::index_tenant(tenant));
                    let keys = vec![
                        self.keys.user_conns(tenant, user),
                        self.keys.tenant_conns(tenant),
                    ];
                    (&scripts::RELEASE, keys, vec![node.clone().into()])
                }
                Change::Join {
                    tenant, room, user, ..
                } => {
                    if self.registered.add_member(tenant, room, user) {
                        for ch in self.keys.room_listen(tenant, room) {
                            self.channels.needed(ch);
                        }
                        created.push(keys::index_room(tenant, room));
                        new_rooms.push((expiry as f64, keys::room_id(tenant, room)));
                    }
                    touched.insert(keys::index_room(tenant, room));
                    let keys = self.keys.room_script_keys(tenant, room);
                    let args = vec![
                        node.clone().into(),
                        user.to_string().into(),
                        now.to_string().into(),
                        expiry.to_string().into(),
                    ];
                    (&scripts::JOIN, keys, args)
                }
                Change::Leave {
                    tenant, room, user, ..
                } => {
                    let emptied = self.registered.remove_member(tenant, room, user);
                    if emptied {
                        for ch in self.keys.room_listen(tenant, room) {
                            self.channels.unneeded(&ch, linger);
                        }
                    }
                    touched.insert(keys::index_room(tenant, room));
                    let keys = self.keys.room_script_keys(tenant, room);
                    let args = vec![
                        node.clone().into(),
                        user.to_string().into(),
                        now.to_string().into(),
                        if emptied { "1" } else { "0" }.into(),
                    ];
                    (&scripts::LEAVE, keys, args)
                }
            };
            if matches!(change, Change::Register { .. }) {
                args.extend(live.iter().cloned());
            }
            scripted.push((change, script, keys, args));
        }
        if !self.health.is_connected() {
            // Redis is unreachable (only departures get here: admissions and
            // joins were refused as not ready). Waiting a command timeout for
            // each batch would hold every closing session; the view has them
            // already, and the resync after the reconnect writes it.
            for (change, ..) in scripted {
                self.mark_dirty(&change);
                self.settle(change, None, &mut Vec::new());
            }
            return;
        }
        let mut pipe = self.redis.pipe();
        if !created.is_empty() {
            let index = self.keys.node_index(&node);
            if let Some(p) = pipe.at(&index) {
                let _: Result<(), _> = p.sadd(index, created).await;
            }
        }
        if !new_rooms.is_empty() {
            super::writes::queue_room_expiries(&mut pipe, &self.keys, new_rooms).await;
        }
        let prefix = pipe.len();
        for (_, script, keys, args) in &scripted {
            if let Some(p) = pipe.at(&keys[0]) {
                scripts::queue(p, script, keys.clone(), args.clone()).await;
            }
        }
        let mut results = pipe.all().await.into_iter().skip(prefix);

        // 3. Replies; roll back what Redis refused.
        let mut emptied_rooms = Vec::new();
        let mut fresh_live: Option<Vec<String>> = None;
        for (change, script, keys, args) in scripted {
            let mut result = results.next();
            if let Some(Err(e)) = &result
                && shards::is_redirect(e)
            {
                // A slot moving (Redis Cluster): the script did not run;
                // run it alone, following the redirection. A later change
                // of the same room in this batch touches the same keys, so
                // it met the same redirection and is rerun after this one,
                // unless the migration moved one of the keys between the
                // two (then the rerun may reorder a join and a leave of one
                // room; the next resync of the slot rewrites the truth).
                result = Some(
                    self.redis
                        .eval_with::<Value>(
                            script,
                            keys.clone(),
                            args.clone(),
                            shards::Follow::Registry,
                        )
                        .await,
                );
            }
            if matches!(change, Change::Register { .. })
                && matches!(&result, Some(Ok(v)) if v.as_i64() == Some(3))
            {
                // Fields of a node this one does not know would decide a
                // refusal: ask again, knowing who is live now.
                let live = match fresh_live.take() {
                    Some(live) => live,
                    None => self.read_live().await,
                };
                let mut args = args;
                args.truncate(3);
                args.push("0".into());
                args.extend(live.iter().cloned().map(Value::from));
                fresh_live = Some(live);
                result = Some(
                    self.redis
                        .eval_with::<Value>(script, keys.clone(), args, shards::Follow::Registry)
                        .await,
                );
            }
            if !matches!(result, Some(Ok(_))) {
                if let Some(Err(e)) = &result {
                    debug!(error = %e, key = %keys[0], "registry script failed; repairing its entries");
                }
                // The script failed, or its outcome is unknown (a timeout may
                // come after it ran; NOSCRIPT after a lost script cache). The
                // view is settled as if it did not run, which Redis may not
                // agree with: the entries it touched are rewritten from the
                // view at the next heartbeat (a repair), and only those. The
                // node stays ready meanwhile. A dirty entry stays in the
                // node's index (step 4), so that whatever the script left
                // stays findable.
                self.mark_dirty(&change);
            }
            self.settle(change, result, &mut emptied_rooms);
        }

        // 4. Index entries no longer backed by our view; rooms nobody hosts.
        let stale: Vec<String> = touched
            .into_iter()
            .filter(|e| !self.in_view(e) && !self.dirty.contains_key(e))
            .collect();
        if stale.is_empty() && emptied_rooms.is_empty() {
            return;
        }
        let mut pipe = self.redis.pipe();
        if !stale.is_empty() {
            let index = self.keys.node_index(&node);
            if let Some(p) = pipe.at(&index) {
                let _: Result<(), _> = p.srem(index, stale).await;
            }
        }
        super::writes::queue_room_removals(&mut pipe, &self.keys, emptied_rooms).await;
        for r in pipe.all().await {
            if let Err(e) = r {
                debug!(error = %e, "registry index cleanup failed; the next resync rewrites it");
            }
        }
    }

    /// Replies to one change with its script's result, rolling it back on failure.
    fn settle(
        &mut self,
        change: Change,
        result: Option<Result<Value, fred::error::Error>>,
        emptied_rooms: &mut Vec<String>,
    ) {
        let linger = self.config.channel_linger;
        match change {
            Change::Register {
                tenant,
                user,
                limits,
                reply,
            } => {
                let outcome = match &result {
                    Some(Ok(v)) => match v.as_i64() {
                        Some(0) => Ok(()),
                        Some(1) => Err(AdmitError::Limit(LimitExceeded::PerUser(limits.per_user))),
                        Some(2) => Err(AdmitError::Limit(LimitExceeded::PerTenant(
                            limits.per_tenant,
                        ))),
                        _ => Err(AdmitError::Unavailable(BusError::ScriptReply {
                            script: "admit",
                        })),
                    },
                    _ => Err(AdmitError::Unavailable(script_error("admit", result))),
                };
                if outcome.is_err()
                    && self
                        .registered
                        .remove_conn(&tenant, &user)
                        .is_some_and(|(_, last_tenant)| last_tenant)
                {
                    for ch in self.keys.tenant_listen(&tenant) {
                        self.channels.unneeded(&ch, linger);
                    }
                }
                let _ = reply.send(outcome);
            }
            Change::Unregister { .. } => {
                if let Some(Err(e)) = result {
                    debug!(error = %e, "unregister not recorded; the resync after the outage corrects it");
                }
            }
            Change::Join {
                tenant,
                room,
                user,
                reply,
            } => match result {
                Some(Ok(v)) => drop(reply.send(Ok(pair(&v).0 == 1))),
                other => {
                    if self.registered.remove_member(&tenant, &room, &user) {
                        for ch in self.keys.room_listen(&tenant, &room) {
                            self.channels.unneeded(&ch, linger);
                        }
                    }
                    let _ = reply.send(Err(script_error("join", other)));
                }
            },
            Change::Leave {
                tenant,
                room,
                user,
                reply,
            } => match result {
                Some(Ok(v)) => {
                    let (left, hosts) = pair(&v);
                    if hosts == 0 {
                        emptied_rooms.push(keys::room_id(&tenant, &room));
                    }
                    if left == 1 && matches!(reply, LeaveReply::Announce) {
                        self.depart(&tenant, &room, [user.to_string()], Cause::Drain);
                    }
                    reply.send(Ok(left == 1));
                }
                other => reply.send(Err(script_error("leave", other))),
            },
        }
    }

    /// Marks the entries a change touched for a repair, with what its
    /// unknown outcome may have done.
    fn mark_dirty(&mut self, change: &Change) {
        let mut unknown = Unknown::default();
        match change {
            Change::Join { user, .. } => {
                unknown.joins.insert(user.to_string());
            }
            Change::Leave { user, .. } => {
                unknown.leaves.insert(user.to_string());
            }
            _ => {}
        }
        for entry in index_entries(change) {
            self.dirty.entry(entry).or_default().merge(unknown.clone());
        }
    }

    /// Whether an index entry is still backed by this node's view.
    pub(super) fn in_view(&self, entry: &str) -> bool {
        match keys::parse_index(entry) {
            Some(IndexEntry::Room(t, r)) => self.registered.rooms.contains_key(&(t, r)),
            Some(IndexEntry::User(t, u)) => self.registered.users.contains_key(&(t, u)),
            Some(IndexEntry::Tenant(t)) => self.registered.tenants.contains_key(&t),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Batches against a real redis-server (installed by
    //! `scripts/install-test-deps.sh`), started on a free loopback port.

    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Duration;

    use fred::interfaces::SortedSetsInterface;

    use fanout_protocol::Name;
    use tokio::sync::oneshot;

    use super::*;
    use crate::cluster::redis::health::{Health, NodeLiveness};
    use crate::cluster::redis::keys::{Keyspace, Layout};
    use crate::cluster::redis::shards::Redis as Connections;
    use crate::config::RedisConfig;

    struct Redis(Child);

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn redis() -> (Redis, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed: run scripts/install-test-deps.sh (apt-get install redis-server)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (Redis(child), url)
    }

    async fn actor(url: &str) -> Actor {
        let config = RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        };
        let redis = Connections::connect(&config, Box::new(|_| {})).unwrap();
        for _ in 0..200 {
            if redis.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let health = Arc::new(Health::new(config.entry_ttl()));
        health.set_connected(true);
        let mut actor = Actor {
            keys: Keyspace::new("t", "node-a", Layout::Single),
            config,
            redis,
            health,
            liveness: Arc::new(NodeLiveness::default()),
            channels: Default::default(),
            registered: Default::default(),
            dirty: Default::default(),
            swept: false,
            registered_at: None,
            announce: tokio::sync::mpsc::channel(16).0,
            audit: Default::default(),
            started_ms: 0,
            addr: "127.0.0.1:0".into(),
        };
        actor.resync().await.unwrap();
        actor
    }

    fn n(s: &str) -> Name {
        Name::new("t", s).unwrap()
    }

    fn join(user: &str) -> (Change, oneshot::Receiver<Result<bool, BusError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Change::Join {
                tenant: n("acme"),
                room: n("lobby"),
                user: n(user),
                reply,
            },
            rx,
        )
    }

    fn leave(user: &str) -> (Change, oneshot::Receiver<Result<bool, BusError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Change::Leave {
                tenant: n("acme"),
                room: n("lobby"),
                user: n(user),
                reply: LeaveReply::Caller(reply),
            },
            rx,
        )
    }

    async fn is_host(actor: &Actor) -> bool {
        let shard = actor.redis.shards().remove(0);
        let score: Option<f64> = shard
            .publisher
            .zscore(actor.keys.room_hosts(&n("acme"), &n("lobby")), "node-a")
            .await
            .unwrap();
        score.is_some()
    }

    #[tokio::test]
    async fn a_join_batched_with_the_last_leave_keeps_the_node_a_host() {
        let (_redis, url) = redis().await;
        let mut actor = actor(&url).await;
        let (first, rx) = join("u1");
        actor.flush(vec![first]).await;
        assert!(rx.await.unwrap().unwrap());
        assert!(is_host(&actor).await);

        // u3 joins and u1 leaves in the same batch: the room is not empty here.
        let ((j, jrx), (l, lrx)) = (join("u3"), leave("u1"));
        actor.flush(vec![j, l]).await;
        jrx.await.unwrap().unwrap();
        lrx.await.unwrap().unwrap();
        assert!(
            is_host(&actor).await,
            "the node must stay a host of a room it has a member in"
        );

        // Two leaves in one batch: the last one empties the room here.
        let ((j, jrx), ..) = (join("u4"), ());
        actor.flush(vec![j]).await;
        jrx.await.unwrap().unwrap();
        let ((l3, r3), (l4, r4)) = (leave("u3"), leave("u4"));
        actor.flush(vec![l3, l4]).await;
        r3.await.unwrap().unwrap();
        r4.await.unwrap().unwrap();
        assert!(
            !is_host(&actor).await,
            "a node without members must not stay a host"
        );
    }
}
