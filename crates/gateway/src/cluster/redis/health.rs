//! What the node knows of its own standing in the cluster: whether it can
//! carry traffic ([`Health`]) and which other nodes are alive
//! ([`NodeLiveness`]).
//!
//! Both are plain shared state, written by the tasks that learn the facts
//! and read on the hot path without a round trip: a publish checks
//! readiness with three atomic loads, and a route script gets the dead
//! nodes from the last heartbeat. This file is the bottom of the Redis bus;
//! it imports nothing from the files beside it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::clock::now_millis;
use crate::cluster::{BusError, NotReady};
use crate::metrics as m;

/// What readiness depends on.
#[derive(Debug)]
pub(crate) struct Health {
    /// Both Redis connections are up. Written by the supervisor.
    connected: AtomicBool,
    /// The registry and subscriptions match the node's view. Set by the
    /// registry actor after a resync; cleared by the supervisor on a
    /// reconnect, by the prober on a lost probe, and by the actor when a
    /// script's outcome is unknown.
    synced: AtomicBool,
    /// Wall-clock ms of the last successful heartbeat. Written by the actor.
    last_beat_ms: AtomicU64,
    /// How old a heartbeat may be before other nodes take this one for dead.
    ttl_ms: u64,
    /// Why the node is not ready, for `/readyz` and for refused requests.
    /// Written by whoever learns it (supervisor, actor); meaningful only
    /// while [`Health::is_ready`] is false.
    reason: Mutex<NotReady>,
}

impl Health {
    /// Not ready until connected and registered; `ttl` is the entry TTL.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            connected: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            last_beat_ms: AtomicU64::new(0),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            reason: Mutex::new(NotReady::Connecting),
        }
    }

    fn set_reason(&self, why: NotReady) {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Records the state of the Redis connections (supervisor).
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        if !up {
            self.synced.store(false, Ordering::Release);
            self.set_reason(NotReady::Unreachable);
        }
    }

    /// Whether the Redis connections are up (as the supervisor last saw them).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether the registry and subscriptions match the node's view.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the registry in sync (after a resync) or in need of one.
    pub(crate) fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
        if !synced {
            self.set_reason(NotReady::Resyncing);
        }
    }

    /// Records a failed resync; it is retried by the supervisor.
    pub(crate) fn resync_failed(&self, err: &BusError) {
        self.set_reason(NotReady::ResyncFailed(error_chain(err)));
    }

    /// Records a successful heartbeat at `now` (wall-clock ms).
    pub(crate) fn heartbeat_ok(&self, now: u64) {
        self.last_beat_ms.store(now, Ordering::Release);
    }

    /// Records a failed heartbeat.
    pub(crate) fn heartbeat_failed(&self, err: &BusError) {
        self.set_reason(NotReady::HeartbeatFailing(error_chain(err)));
    }

    /// Connected, registered, and the last heartbeat is younger than the TTL.
    pub(crate) fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Acquire)
            && self.synced.load(Ordering::Acquire)
            && now_millis().saturating_sub(self.last_beat_ms.load(Ordering::Acquire)) < self.ttl_ms
    }

    /// `Ok` when ready, else why not.
    pub(crate) fn check(&self) -> Result<(), NotReady> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(self.not_ready())
        }
    }

    /// Connected and synced, but the last heartbeat is older than the TTL:
    /// its age in ms.
    fn stale_beat(&self) -> Option<u64> {
        let age = now_millis().saturating_sub(self.last_beat_ms.load(Ordering::Acquire));
        (self.connected.load(Ordering::Acquire)
            && self.synced.load(Ordering::Acquire)
            && age >= self.ttl_ms)
            .then_some(age)
    }

    /// Why the node is not ready (meaningful while it is not).
    pub(crate) fn not_ready(&self) -> NotReady {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match (self.stale_beat(), &reason) {
            // The reason recorded last may be an old one that has passed
            // (a resync long done): say what holds now.
            (Some(age_ms), r) if !matches!(r, NotReady::HeartbeatFailing(_)) => {
                NotReady::HeartbeatStale {
                    age_ms,
                    ttl_ms: self.ttl_ms,
                }
            }
            _ => reason,
        }
    }
}

/// An error and its sources on one line, for a readiness reason an operator reads.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Live and dead node ids as of the last heartbeat.
#[derive(Debug, Default)]
pub(crate) struct NodeLiveness {
    /// (live, dead): written by the registry actor after each heartbeat,
    /// read by the route scripts' callers (dead nodes are skipped) and by
    /// admissions (only live nodes' connections count).
    nodes: RwLock<(Vec<String>, Vec<String>)>,
}

impl NodeLiveness {
    /// Replaces the view with the heartbeat's answer.
    pub(crate) fn update(&self, live: Vec<String>, dead: Vec<String>) {
        m::cluster_nodes(live.len());
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = (live, dead);
    }

    /// Nodes whose heartbeat was current at the last heartbeat.
    pub(crate) fn live(&self) -> Vec<String> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_connected_synced_and_beating_and_the_reason_follows() {
        let h = Health::new(Duration::from_secs(10));
        assert_eq!(h.check(), Err(NotReady::Connecting));
        h.set_connected(true);
        h.set_synced(true);
        assert!(!h.is_ready(), "no heartbeat yet");
        h.heartbeat_ok(now_millis());
        assert_eq!(h.check(), Ok(()));
        h.set_connected(false);
        assert_eq!(h.check(), Err(NotReady::Unreachable));
        h.set_connected(true);
        h.set_synced(false);
        assert_eq!(h.check(), Err(NotReady::Resyncing));
        h.resync_failed(&BusError::Timeout { op: "script load" });
        match h.check() {
            Err(NotReady::ResyncFailed(why)) => assert!(why.contains("script load"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
