//! Targeted repair: rewriting exactly the registry entries an operation
//! touched, from the node's own view, in place.
//!
//! A registry script can fail or leave its outcome unknown: a Redis timeout
//! (the script may have run after the client gave up), `NOSCRIPT` after
//! Redis lost its script cache, a shard that went away. The view
//! (`Registered`) is settled as if the script did not run, so the entries
//! it touched are marked dirty and rewritten from the view at the next
//! heartbeat, until that succeeds. The node stays ready meanwhile: one
//! failed script says nothing about the rest of the registry, and a Redis
//! latency spike that fails scripts on every node at once must not make
//! every node unready and absent together.
//!
//! The same writes serve a resync ([`Actor::reconcile`]): every entry of the
//! view and every entry of the node's index is written over in place —
//! rooms by `REWRITE_ROOM`, counts by `HSET` — and entries the view no
//! longer has are removed (`SWEEP_ROOM`, `HDEL`). Nothing is removed before
//! it is rewritten, so other nodes never see this node's users vanish and
//! come back (spurious `leave`/`join` events) nor skip it in direct routes.
//!
//! A removal that takes a user's last field in a room reports a departure
//! (its `leave` is due): the node announces it.

use std::collections::BTreeSet;

use fanout_protocol::Name;
use fred::interfaces::{HashesInterface, SetsInterface};
use fred::types::Value;
use tracing::{debug, warn};

use super::actor::Actor;
use super::state::Unknown;
use super::writes::{
    Cause, entry_key, is_noscript, load_scripts, queue_room_expiries, queue_room_removals, users_of,
};
use crate::clock::now_millis;
use crate::cluster::BusError;
use crate::cluster::PresenceChange;
use crate::cluster::redis::keys::{self, IndexEntry, parse_index};
use crate::cluster::redis::scripts;
use crate::metrics as m;

/// Entries written per pipeline.
const CHUNK: usize = 1_000;

impl Actor {
    /// Reports users who left a room cluster-wide.
    pub(super) fn depart(
        &self,
        tenant: &Name,
        room: &Name,
        users: impl IntoIterator<Item = String>,
        cause: Cause,
    ) {
        self.announce(tenant, room, users, false, cause);
    }

    fn announce(
        &self,
        tenant: &Name,
        room: &Name,
        users: impl IntoIterator<Item = String>,
        joined: bool,
        cause: Cause,
    ) {
        let mut n = 0;
        for user in users {
            let Ok(user) = Name::new("user", &user) else {
                continue; // not written by fanout
            };
            let change = PresenceChange {
                tenant: tenant.clone(),
                room: room.clone(),
                user,
                joined,
            };
            if self.announce.try_send(change).is_err() {
                m::dropped("presence_backlog");
                continue;
            }
            n += 1;
        }
        if !joined {
            m::departures(cause.label(), n);
        }
    }

    /// Rewrites the dirty entries from the view (each heartbeat while any
    /// are dirty). Entries that fail stay dirty for the next one.
    pub(super) async fn repair(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let entries: Vec<(String, Unknown)> = std::mem::take(&mut self.dirty).into_iter().collect();
        let total = entries.len() as u64;
        let failed = self.write_entries(entries, false).await;
        m::registry_repairs(total - failed.len() as u64, failed.len() as u64);
        if !failed.is_empty() {
            debug!(
                entries = failed.len(),
                "registry repair incomplete; retried at the next heartbeat"
            );
        }
        for (entry, unknown) in failed {
            self.dirty.entry(entry).or_default().merge(unknown);
        }
    }

    /// Writes the view over every entry of the view and of this node's
    /// index that `within` selects (a resync: the whole node, or one
    /// shard's slots). `announce_arrivals`: this node was swept while alive,
    /// so the users it re-registers are announced again.
    pub(super) async fn reconcile(
        &mut self,
        within: impl Fn(&str) -> bool,
        announce_arrivals: bool,
    ) -> Result<(), BusError> {
        let node = self.keys.node().to_owned();
        let index = self.keys.node_index(&node);
        let mut entries: BTreeSet<String> = match self.redis.shard_of_key(&index) {
            Some(shard) => shard
                .publisher
                .smembers(&index)
                .await
                .map_err(|e| BusError::redis("reconcile index", e))?,
            None => {
                return Err(BusError::NoReply {
                    op: "reconcile index",
                });
            }
        };
        entries.extend(self.view_entries());
        entries.extend(self.dirty.keys().cloned());
        let selected: Vec<(String, Unknown)> = entries
            .into_iter()
            .filter(|e| parse_index(e).is_some_and(|entry| within(&entry_key(&self.keys, &entry))))
            .map(|e| {
                let unknown = self.dirty.remove(&e).unwrap_or_default();
                (e, unknown)
            })
            .collect();
        let failed = self.write_entries(selected, announce_arrivals).await;
        let n = failed.len();
        for (entry, unknown) in failed {
            self.dirty.entry(entry).or_default().merge(unknown);
        }
        match n {
            0 => Ok(()),
            n => Err(BusError::Repair { entries: n }),
        }
    }

    /// Every index entry of the view.
    pub(super) fn view_entries(&self) -> Vec<String> {
        let r = &self.registered;
        r.rooms
            .keys()
            .map(|(t, room)| keys::index_room(t, room))
            .chain(r.users.keys().map(|(t, u)| keys::index_user(t, u)))
            .chain(r.tenants.keys().map(keys::index_tenant))
            .collect()
    }

    /// Writes the view of `entries` into Redis; returns those that failed.
    /// A `NOSCRIPT` reloads the scripts on that shard and retries once.
    async fn write_entries(
        &mut self,
        entries: Vec<(String, Unknown)>,
        announce_arrivals: bool,
    ) -> Vec<(String, Unknown)> {
        let mut failed = Vec::new();
        let mut noscript = Vec::new();
        for chunk in entries.chunks(CHUNK) {
            self.write_chunk(chunk, announce_arrivals, &mut failed, &mut noscript)
                .await;
        }
        if noscript.is_empty() {
            return failed;
        }
        let mut reloaded = BTreeSet::new();
        for (entry, _) in &noscript {
            let Some(parsed) = parse_index(entry) else {
                continue;
            };
            if let Some(shard) = self.redis.shard_of_key(&entry_key(&self.keys, &parsed))
                && reloaded.insert(shard.id.to_string())
                && let Err(e) = load_scripts(&shard).await
            {
                warn!(shard = %shard.id, error = %e, "reloading the registry scripts failed");
            }
        }
        let mut again = Vec::new();
        self.write_chunk(&noscript, announce_arrivals, &mut failed, &mut again)
            .await;
        failed.extend(again);
        failed
    }

    async fn write_chunk(
        &mut self,
        chunk: &[(String, Unknown)],
        announce_arrivals: bool,
        failed: &mut Vec<(String, Unknown)>,
        noscript: &mut Vec<(String, Unknown)>,
    ) {
        let node = self.keys.node().to_owned();
        let expiry = now_millis() + self.config.entry_ttl().as_millis() as u64;
        let mut pipe = self.redis.pipe();
        let mut sent: Vec<(&String, &Unknown, IndexEntry)> = Vec::with_capacity(chunk.len());
        for (entry, unknown) in chunk {
            let Some(parsed) = parse_index(entry) else {
                continue; // the marker
            };
            let key = entry_key(&self.keys, &parsed);
            let Some(p) = pipe.at(&key) else {
                failed.push((entry.clone(), unknown.clone()));
                continue;
            };
            match &parsed {
                IndexEntry::Room(t, r) => {
                    let keys = self.keys.room_script_keys(t, r);
                    let users = self.registered.rooms.get(&(t.clone(), r.clone()));
                    let mut args: Vec<Value> = vec![
                        node.clone().into(),
                        expiry.to_string().into(),
                        users.map_or(0, |u| u.len() as i64).into(),
                    ];
                    for (u, n) in users.into_iter().flatten() {
                        args.push(u.to_string().into());
                        args.push(n.to_string().into());
                    }
                    args.extend(unknown.leaves.iter().cloned().map(Value::from));
                    scripts::queue(p, &scripts::REWRITE_ROOM, keys, args).await;
                }
                IndexEntry::User(t, u) => {
                    let n = self.registered.users.get(&(t.clone(), u.clone()));
                    count(p, &key, &node, n.copied()).await;
                }
                IndexEntry::Tenant(t) => {
                    let n = self.registered.tenants.get(t);
                    count(p, &key, &node, n.copied()).await;
                }
            }
            sent.push((entry, unknown, parsed));
        }
        let results = pipe.all().await;
        let mut expiries = Vec::new();
        let mut emptied = Vec::new();
        let mut removed = Vec::new();
        for ((entry, unknown, parsed), result) in sent.into_iter().zip(results) {
            let v = match result {
                Ok(v) => v,
                Err(e) => {
                    if is_noscript(&e) {
                        noscript.push((entry.clone(), unknown.clone()));
                    } else {
                        debug!(error = %e, %entry, "registry entry not written");
                        failed.push((entry.clone(), unknown.clone()));
                    }
                    continue;
                }
            };
            let in_view = self.in_view(entry);
            if let IndexEntry::Room(t, r) = &parsed {
                let part = |i: usize| match &v {
                    Value::Array(parts) => parts.get(i).map(|p| users_of(p, 0)).unwrap_or_default(),
                    _ => Vec::new(),
                };
                let (gone, came, absent) = (part(0), part(1), part(2));
                // A user whose join never reached the client was never
                // announced: removing it announces nothing. A leave whose
                // outcome was unknown and that did run is announced now.
                let mut leaves: Vec<String> = gone
                    .iter()
                    .filter(|u| !unknown.joins.contains(*u))
                    .cloned()
                    .collect();
                leaves.extend(absent.into_iter().filter(|u| !gone.contains(u)));
                self.depart(t, r, leaves, Cause::Repair);
                if announce_arrivals {
                    self.announce(t, r, came, true, Cause::Repair);
                }
                if in_view {
                    expiries.push((expiry as f64, keys::room_id(t, r)));
                } else {
                    let hosts = match &v {
                        Value::Array(parts) => parts.get(3).and_then(Value::as_i64),
                        _ => None,
                    };
                    if hosts == Some(0) {
                        emptied.push(keys::room_id(t, r));
                    }
                }
            }
            if !in_view {
                removed.push(entry.clone());
            }
        }
        // The room index and this node's index follow (best effort: a room
        // index entry expires by its score, a superset index is safe).
        let mut pipe = self.redis.pipe();
        queue_room_expiries(&mut pipe, &self.keys, expiries).await;
        queue_room_removals(&mut pipe, &self.keys, emptied).await;
        if !removed.is_empty() {
            let index = self.keys.node_index(&node);
            if let Some(p) = pipe.at(&index) {
                let _: Result<(), _> = p.srem(index, removed).await;
            }
        }
        for r in pipe.all().await {
            if let Err(e) = r {
                debug!(error = %e, "registry index update failed; the next resync rewrites it");
            }
        }
    }
}

/// Queues the write of one node's count in a user or tenant hash.
async fn count<C: HashesInterface + Sync>(p: &C, key: &str, node: &str, n: Option<u32>) {
    match n {
        Some(n) => {
            let _: Result<(), _> = p.hset(key, (node, n.to_string())).await;
        }
        None => {
            let _: Result<(), _> = p.hdel(key, node).await;
        }
    }
}
