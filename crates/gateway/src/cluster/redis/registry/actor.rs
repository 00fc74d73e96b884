//! The actor's state and its loop: take a batch of requests, apply it,
//! heartbeat on a timer, let lingering channels go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::op::{Op, Scope};
use super::state::{Audit, Channels, Registered, Unknown};
use crate::cluster::PresenceChange;
use crate::cluster::redis::health::{Health, NodeLiveness};
use crate::cluster::redis::keys::Keyspace;
use crate::cluster::redis::shards::Redis;
use crate::config::RedisConfig;

/// Longest batch the actor takes at once.
const MAX_BATCH: usize = 512;

/// The actor's state.
///
/// Owned by the actor's task alone (no locks): the only writer of this
/// node's registry entries and channel subscriptions.
pub(crate) struct Actor {
    /// Key and channel names.
    pub(crate) keys: Keyspace,
    /// `[redis]`: TTLs, heartbeat period, channel linger.
    pub(crate) config: RedisConfig,
    /// The connections by shard (shared with the bus, which publishes on
    /// them): commands, scripts, (S)SUBSCRIBE; the receiver reads the
    /// messages.
    pub(crate) redis: Redis,
    /// Readiness: the actor records heartbeats, and marks itself unsynced
    /// while it resyncs or after finding itself swept (a failed script
    /// only marks its entries dirty).
    pub(crate) health: Arc<Health>,
    /// Live and dead nodes, written after each heartbeat.
    pub(crate) liveness: Arc<NodeLiveness>,
    /// Channel subscriptions and their linger deadlines (whether a channel
    /// is needed follows from `registered`).
    pub(crate) channels: Channels,
    /// What this node has told Redis: the truth for every resync.
    pub(crate) registered: Registered,
    /// Index entries whose registry script failed or whose outcome is
    /// unknown: rewritten from `registered` at the next heartbeat, and
    /// retried until that succeeds.
    pub(crate) dirty: BTreeMap<String, Unknown>,
    /// Set when a heartbeat found this node swept while it was alive: its
    /// users were announced as gone, so the resync announces them again.
    pub(crate) swept: bool,
    /// When this node last re-registered after (re)connecting: it sweeps
    /// no one for the sweep grace after it (see `sweep_dead`).
    pub(crate) registered_at: Option<Instant>,
    /// Presence changes for the node to announce (see [`PresenceChange`]).
    pub(crate) announce: mpsc::Sender<PresenceChange>,
    /// Where the audit of stale entries stands.
    pub(crate) audit: Audit,
    /// Node start time (ms), published in the node info.
    pub(crate) started_ms: u64,
    /// Listen address, published in the node info.
    pub(crate) addr: String,
}

impl Actor {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let period = Duration::from_millis(250)
            .min(self.config.channel_linger)
            .max(Duration::from_millis(1));
        let mut linger = tokio::time::interval(period);
        linger.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                op = rx.recv() => {
                    let Some(op) = op else { return };
                    let mut batch = vec![op];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let started = Instant::now();
                    if self.handle_batch(batch).await == Flow::Stop {
                        return;
                    }
                    self.took("a batch of changes", started);
                }
                _ = beat.tick() => {
                    let started = Instant::now();
                    self.heartbeat().await;
                    self.took("a heartbeat", started);
                }
                _ = linger.tick() => {
                    let started = Instant::now();
                    self.release_lingering().await;
                    self.took("releasing channels", started);
                }
            }
        }
    }

    /// Logs a step that held the actor longer than a heartbeat period:
    /// while it runs no heartbeat does, and after three periods other
    /// nodes take this one for dead.
    fn took(&self, what: &str, started: Instant) {
        let took = started.elapsed();
        if took > self.config.heartbeat {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                heartbeat_ms = self.config.heartbeat.as_millis() as u64,
                "{what} held the registry actor longer than a heartbeat period"
            );
        }
    }

    async fn handle_batch(&mut self, batch: Vec<Op>) -> Flow {
        let mut changes = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Change(change) => {
                    if change.needs_ready() && !self.health.is_ready() {
                        change.refuse(self.health.not_ready().into());
                    } else {
                        changes.push(change);
                    }
                }
                Op::Resync { scope, reply } => {
                    // Resync and deregister see every earlier change applied.
                    self.flush(std::mem::take(&mut changes)).await;
                    let done = match scope {
                        Scope::All => self.resync().await,
                        Scope::Shard(id) => self.resync_shard(&id).await,
                        Scope::Slots(id, slots) => self.resync_slots(&id, &slots).await,
                    };
                    let _ = reply.send(done);
                }
                Op::Closing { reply } => {
                    self.flush(std::mem::take(&mut changes)).await;
                    self.release_counts().await;
                    let _ = reply.send(());
                }
                Op::Deregister { reply } => {
                    self.flush(std::mem::take(&mut changes)).await;
                    self.deregister().await;
                    let _ = reply.send(());
                    return Flow::Stop;
                }
            }
        }
        self.flush(changes).await;
        Flow::Continue
    }

    /// Unsubscribes channels whose linger is over, in one command.
    async fn release_lingering(&mut self) {
        let expired = self.channels.expired(Instant::now());
        if expired.is_empty() {
            return;
        }
        // Whatever the outcome, treat them as unsubscribed: SUBSCRIBE is
        // idempotent, so a later join resubscribes rather than trusting a
        // subscription an unanswered UNSUBSCRIBE may have ended.
        self.channels.forget(&expired);
        self.redis.unsubscribe(&expired).await;
    }
}

/// Whether the actor goes on after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}
