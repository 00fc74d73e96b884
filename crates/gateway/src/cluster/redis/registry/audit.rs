//! The audit: finds registry entries of nodes that are gone from the node
//! index, which nothing else would ever remove.
//!
//! A dead node's entries are swept through its own index (`node:<id>:index`),
//! which is fast and exact but trusts that index. The index can be lost
//! where the entries are not: on a Redis Cluster it lives in another slot,
//! and a failover of its shard can lose the last writes while the shard
//! holding a count keeps them; a Redis restored from an older snapshot; an
//! index that expired while no node ran. Admission already ignores fields of
//! nodes that are not live, so such a leftover is never *counted*; the
//! audit makes it *removable* from what remains in Redis alone.
//!
//! A pass starts `redis.audit_interval` after the previous one ended and
//! scans the keyspace of the cluster's prefix, one `SCAN … COUNT` [`STEP`]
//! per shard each heartbeat (a hint Redis keeps to roughly: a big keyspace
//! costs it a little per beat, never a long command). For
//! each user or tenant hash and each room it runs a script that removes the
//! fields and hosts of nodes absent from the node index (`P:nodes`, read
//! after the scan: a node adds itself there before it writes any entry, so
//! a node whose entry the scan saw is either listed or gone; a node swept
//! while alive may write before its next heartbeat re-adds it, and its
//! resync then writes back whatever the audit removed). A node index
//! whose node is gone is swept like a dead node's. Departures this causes
//! are announced.

use std::collections::BTreeSet;

use fanout_protocol::Name;
use fred::interfaces::{ClientLike, SortedSetsInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::time::Instant;
use tracing::{debug, info};

use super::actor::Actor;
use super::writes::{Cause, users_of};
use crate::cluster::BusError;
use crate::cluster::redis::scripts;
use crate::metrics as m;

/// Keys a SCAN step asks each shard for.
const STEP: u32 = 1_000;

/// What a scanned key is, for the audit.
#[derive(Debug, PartialEq, Eq)]
enum Scanned {
    /// A room (by its hash tag `t/r`): hosts zset and members hash.
    Room(String),
    /// A user or tenant hash (node → connections).
    Counts(String),
    /// A node's registry index (by node id).
    Index(String),
}

/// Classifies a key of the cluster's prefix.
fn classify(prefix: &str, key: &str) -> Option<Scanned> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    if let Some(node) = rest.strip_prefix("node:") {
        return node
            .strip_suffix(":index")
            .map(|id| Scanned::Index(id.to_owned()));
    }
    let tagged = rest.strip_prefix('{')?;
    let (tag, kind) = tagged.split_once("}:")?;
    match kind {
        "hosts" | "members" if tag.contains('/') => Some(Scanned::Room(tag.to_owned())),
        "conns" if !tag.contains('/') => Some(Scanned::Counts(key.to_owned())),
        k if k.starts_with("user:") && !tag.contains('/') => Some(Scanned::Counts(key.to_owned())),
        _ => None,
    }
}

impl Actor {
    /// One step of the audit (each heartbeat).
    pub(super) async fn audit_step(&mut self) -> Result<(), BusError> {
        let now = Instant::now();
        if self.audit.next_pass.is_some_and(|t| now < t) {
            return Ok(());
        }
        let prefix = self.keys.prefix().to_owned();
        let pattern = format!("{prefix}:*");
        let mut found = Vec::new();
        let shards = self.redis.shards();
        for shard in &shards {
            let id = shard.id.to_string();
            let cursor = match self.audit.cursors.get(&id) {
                Some(0) => continue,
                Some(c) => *c,
                None => 0,
            };
            let reply: Value = shard
                .publisher
                .custom(
                    CustomCommand::new_static("SCAN", ClusterHash::Random, false),
                    vec![
                        Value::from(cursor.to_string()),
                        "MATCH".into(),
                        pattern.clone().into(),
                        "COUNT".into(),
                        Value::from(i64::from(STEP)),
                    ],
                )
                .await
                .map_err(|e| BusError::redis("audit scan", e))?;
            let Value::Array(mut parts) = reply else {
                return Err(BusError::ScriptReply { script: "scan" });
            };
            let keys = parts.pop().map(|v| users_of(&v, 0)).unwrap_or_default();
            let next = parts
                .pop()
                .and_then(|v| v.as_string())
                .and_then(|c| c.parse::<u64>().ok())
                .unwrap_or(0);
            self.audit.cursors.insert(id, next);
            found.extend(keys.iter().filter_map(|k| classify(&prefix, k)));
        }
        if !found.is_empty() {
            self.audit_keys(found).await?;
        }
        let done = shards
            .iter()
            .all(|s| self.audit.cursors.get(&*s.id) == Some(&0));
        if done {
            self.audit.cursors.clear();
            self.audit.next_pass = Some(now + self.config.audit_interval);
        } else {
            self.audit.next_pass = None;
        }
        Ok(())
    }

    /// Runs the audit scripts on what one step found.
    async fn audit_keys(&mut self, found: Vec<Scanned>) -> Result<(), BusError> {
        // The node index, read after the scan (see the module doc).
        let nodes = self.keys.nodes();
        let known: Vec<String> = self
            .redis
            .shard_of_key(&nodes)
            .ok_or(BusError::NoReply { op: "audit nodes" })?
            .publisher
            .zrange(&nodes, 0, -1, None, false, None, false)
            .await
            .map_err(|e| BusError::redis("audit nodes", e))?;
        let me = self.keys.node().to_owned();
        let args: Vec<Value> = known
            .iter()
            .chain(std::iter::once(&me))
            .cloned()
            .map(Value::from)
            .collect();
        let mut rooms = BTreeSet::new();
        let mut orphans = BTreeSet::new();
        let mut pipe = self.redis.pipe();
        let mut queued: Vec<Option<(Name, Name)>> = Vec::new();
        for item in found {
            match item {
                Scanned::Room(tag) => {
                    if !rooms.insert(tag.clone()) {
                        continue;
                    }
                    let Some((t, r)) = tag.split_once('/') else {
                        continue;
                    };
                    let (Ok(t), Ok(r)) = (Name::new("tenant", t), Name::new("room", r)) else {
                        continue;
                    };
                    let keys = self.keys.room_script_keys(&t, &r);
                    if let Some(p) = pipe.at(&keys[0]) {
                        scripts::queue(p, &scripts::AUDIT_ROOM, keys, args.clone()).await;
                        queued.push(Some((t, r)));
                    }
                }
                Scanned::Counts(key) => {
                    if let Some(p) = pipe.at(&key) {
                        scripts::queue(p, &scripts::AUDIT_COUNTS, vec![key], args.clone()).await;
                        queued.push(None);
                    }
                }
                Scanned::Index(node) => {
                    if node != me && !known.contains(&node) {
                        orphans.insert(node);
                    }
                }
            }
        }
        let mut removed = 0u64;
        for (room, result) in queued.into_iter().zip(pipe.all().await) {
            let v = match result {
                Ok(v) => v,
                Err(e) => {
                    debug!(error = %e, "an audit script failed; the next pass retries");
                    continue;
                }
            };
            match room {
                Some((t, r)) => {
                    if let Value::Array(items) = &v {
                        removed += items.first().and_then(Value::as_i64).unwrap_or(0).max(0) as u64;
                    }
                    self.depart(&t, &r, users_of(&v, 1), Cause::Audit);
                }
                None => removed += v.as_i64().unwrap_or(0).max(0) as u64,
            }
        }
        if removed > 0 {
            info!(
                removed,
                "the registry audit removed entries of nodes gone from the node index"
            );
        }
        m::audit_removed(removed);
        for node in orphans {
            info!(gone_node = %node, "sweeping the registry index of a node gone from the node index");
            self.sweep(&node, |_| true, Cause::Audit).await?;
            self.delete_node(&node).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_their_shape() {
        let p = "fx";
        assert_eq!(
            classify(p, "fx:{acme/lobby}:members"),
            Some(Scanned::Room("acme/lobby".into()))
        );
        assert_eq!(
            classify(p, "fx:{acme/lobby}:hosts"),
            Some(Scanned::Room("acme/lobby".into()))
        );
        assert_eq!(
            classify(p, "fx:{acme}:conns"),
            Some(Scanned::Counts("fx:{acme}:conns".into()))
        );
        assert_eq!(
            classify(p, "fx:{acme}:user:u-1"),
            Some(Scanned::Counts("fx:{acme}:user:u-1".into()))
        );
        assert_eq!(
            classify(p, "fx:node:n-1:index"),
            Some(Scanned::Index("n-1".into()))
        );
        for other in [
            "fx:node:n-1:info",
            "fx:nodes",
            "fx:rooms",
            "fx:rooms:{#r3}",
            "fx:sweeper",
            "fx:{acme/lobby}:stream",
            "fx:{acme/lobby}:meta",
            "fx:{acme/lobby}:idem:k",
            "fx:{acme}:idem:k",
            "fy:{acme}:conns",
            "fxx:{acme}:conns",
        ] {
            assert_eq!(classify(p, other), None, "{other}");
        }
    }
}
