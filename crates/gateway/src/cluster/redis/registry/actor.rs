//! The actor's state and its loop: take a batch of requests, apply it,
//! heartbeat on a timer, let lingering channels go.

use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::PubsubInterface;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use super::op::Op;
use super::state::{Channels, Registered};
use crate::cluster::redis::health::{Health, NodeLiveness};
use crate::cluster::redis::keys::Keyspace;
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
    /// Commands and scripts (shared with the bus, which publishes on it).
    pub(crate) publisher: Client,
    /// SUBSCRIBE / UNSUBSCRIBE (the receiver reads its messages).
    pub(crate) subscriber: SubscriberClient,
    /// Readiness: the actor records heartbeats and marks itself unsynced
    /// when a script's outcome is unknown.
    pub(crate) health: Arc<Health>,
    /// Live and dead nodes, written after each heartbeat.
    pub(crate) liveness: Arc<NodeLiveness>,
    /// Channel subscriptions and their linger deadlines (whether a channel
    /// is needed follows from `registered`).
    pub(crate) channels: Channels,
    /// What this node has told Redis: the truth for every resync.
    pub(crate) registered: Registered,
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
                    if self.handle_batch(batch).await == Flow::Stop {
                        return;
                    }
                }
                _ = beat.tick() => self.heartbeat().await,
                _ = linger.tick() => self.release_lingering().await,
            }
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
                Op::Resync { reply } => {
                    // Resync and deregister see every earlier change applied.
                    self.flush(std::mem::take(&mut changes)).await;
                    let _ = reply.send(self.resync().await);
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
        if let Err(e) = self.subscriber.unsubscribe(expired.clone()).await {
            warn!(error = %e, channels = expired.len(), "unsubscribe failed; the channels are resubscribed on the next join");
        }
    }
}

/// Whether the actor goes on after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}
