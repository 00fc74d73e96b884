//! The pieces of Redis work the registry's steps share: loading the
//! scripts, updating the room index, reading the users a room script
//! reports, and the key an index entry is written through. Free functions
//! over plain data; the steps (`batch`, `sync`, `repair`, `audit`) call them.

use fred::interfaces::{LuaInterface, SortedSetsInterface};
use fred::types::Value;
use fred::types::sorted_sets::Ordering;

use crate::cluster::BusError;
use crate::cluster::redis::keys::{self, IndexEntry};
use crate::cluster::redis::scripts;
use crate::cluster::redis::shards::{Pipe, Shard};

/// Room index members per command.
const CHUNK: usize = 1_000;

/// Why a presence change is announced (the `cause` label of
/// `fanout_departures_total`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    /// A dead node was swept.
    Sweep,
    /// A repair or resync removed a stale entry of this node.
    Repair,
    /// The audit removed entries of a node gone from the node index.
    Audit,
    /// A draining node released its connections without waiting.
    Drain,
}

impl Cause {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Cause::Sweep => "sweep",
            Cause::Repair => "repair",
            Cause::Audit => "audit",
            Cause::Drain => "drain",
        }
    }
}

/// Whether a Redis error says the script cache lacks the script.
pub(crate) fn is_noscript(e: &fred::error::Error) -> bool {
    e.details().starts_with("NOSCRIPT") || e.to_string().contains("NOSCRIPT")
}

/// The users of a script reply (bulk strings), from `skip` on.
pub(crate) fn users_of(v: &Value, skip: usize) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .skip(skip)
            .filter_map(|u| u.as_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// The Redis key an index entry is written through (its slot decides the
/// shard).
pub(crate) fn entry_key(keyspace: &keys::Keyspace, entry: &IndexEntry) -> String {
    match entry {
        IndexEntry::Room(t, r) => keyspace.room_hosts(t, r),
        IndexEntry::User(t, u) => keyspace.user_conns(t, u),
        IndexEntry::Tenant(t) => keyspace.tenant_conns(t),
    }
}

/// Loads every script on one shard (scripts are not replicated: a promoted
/// replica, or a Redis restarted empty, has none).
pub(super) async fn load_scripts(shard: &Shard) -> Result<(), BusError> {
    for script in scripts::all() {
        if let Some(lua) = script.lua() {
            let _: Value = shard
                .publisher
                .script_load(lua.to_string())
                .await
                .map_err(|e| BusError::redis("script load", e))?;
        }
    }
    Ok(())
}

/// Queues the expiry of rooms in the cluster's room index (never lowering
/// one): one command per index key.
pub(super) async fn queue_room_expiries(
    pipe: &mut Pipe,
    keyspace: &keys::Keyspace,
    rooms: Vec<(f64, String)>,
) {
    for (key, members) in by_room_key(keyspace, rooms, |(_, id)| id) {
        // At most CHUNK members per command, so that no one command holds
        // Redis long however many rooms a node has.
        for chunk in members.chunks(CHUNK) {
            if let Some(p) = pipe.at(&key) {
                let _: Result<(), _> = p
                    .zadd(
                        &key,
                        None,
                        Some(Ordering::GreaterThan),
                        false,
                        false,
                        chunk.to_vec(),
                    )
                    .await;
            }
        }
    }
}

/// Queues the removal of rooms from the cluster's room index.
pub(super) async fn queue_room_removals(
    pipe: &mut Pipe,
    keyspace: &keys::Keyspace,
    rooms: Vec<String>,
) {
    for (key, members) in by_room_key(keyspace, rooms, |id| id) {
        if let Some(p) = pipe.at(&key) {
            let _: Result<(), _> = p.zrem(&key, members).await;
        }
    }
}

/// Rooms grouped by the room index key each belongs in.
fn by_room_key<T>(
    keyspace: &keys::Keyspace,
    rooms: Vec<T>,
    id: impl Fn(&T) -> &String,
) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for room in rooms {
        let key = keyspace.rooms(id(&room));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(room),
            None => groups.push((key, vec![room])),
        }
    }
    groups
}
