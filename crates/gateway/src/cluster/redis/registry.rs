//! The registry actor: the one owner of this node's state in Redis.
//!
//! Every change a node makes to the cluster registry (admissions, joins,
//! leaves, heartbeats, resyncs after an outage) goes through this one task,
//! in order. That order is what makes the registry simple to reason about:
//!
//! - a node subscribes to a room's channel *before* it registers as a host
//!   of the room, and a later join of another local member cannot overtake
//!   the first one's registration, so an acknowledged subscribe always
//!   finds the node registered and subscribed;
//! - the actor keeps its own copy of what it has told Redis (rooms, users,
//!   tenants with their local counts); after an outage it rewrites exactly
//!   that, so in-flight operations can neither be counted twice nor lost.
//!
//! Requests that arrive together are handled as one batch: one SUBSCRIBE for
//! all new channels, one pipeline for all scripts. Heartbeats are pipelined
//! per node, never one round trip per connection.

mod batch;
mod state;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::Name;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::PubsubInterface;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use super::keys::Keyspace;
use super::{Health, NodeLiveness};
use crate::cluster::{AdmitError, BusError};
use crate::config::RedisConfig;
use crate::hub::ConnLimits;
pub(crate) use batch::Change;
use state::{Channels, Registered};

/// Longest batch the actor takes at once.
const MAX_BATCH: usize = 512;

/// A request to the registry actor.
#[derive(Debug)]
pub(crate) enum Op {
    /// A registry change of one connection (batched with others).
    Change(Change),
    /// Rewrite this node's whole registry and subscriptions (start, reconnect).
    Resync {
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// Remove this node from the registry (drain); the actor stops after it.
    Deregister { reply: oneshot::Sender<()> },
}

/// A cheap handle to the actor.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    tx: mpsc::Sender<Op>,
}

fn gone() -> BusError {
    BusError("registry stopped".into())
}

impl Registry {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    pub(crate) async fn register(
        &self,
        tenant: Name,
        user: Name,
        limits: ConnLimits,
    ) -> Result<(), AdmitError> {
        self.call(|reply| {
            Op::Change(Change::Register {
                tenant,
                user,
                limits,
                reply,
            })
        })
        .await
        .unwrap_or_else(|| Err(gone().into()))
    }

    pub(crate) async fn unregister(&self, tenant: Name, user: Name) {
        let _ = self
            .tx
            .send(Op::Change(Change::Unregister { tenant, user }))
            .await;
    }

    pub(crate) async fn join(
        &self,
        tenant: Name,
        room: Name,
        user: Name,
    ) -> Result<bool, BusError> {
        self.call(|reply| {
            Op::Change(Change::Join {
                tenant,
                room,
                user,
                reply,
            })
        })
        .await
        .unwrap_or_else(|| Err(gone()))
    }

    pub(crate) async fn leave(
        &self,
        tenant: Name,
        room: Name,
        user: Name,
    ) -> Result<bool, BusError> {
        self.call(|reply| {
            Op::Change(Change::Leave {
                tenant,
                room,
                user,
                reply,
            })
        })
        .await
        .unwrap_or_else(|| Err(gone()))
    }

    pub(crate) async fn resync(&self) -> Result<(), BusError> {
        self.call(|reply| Op::Resync { reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }

    pub(crate) async fn deregister(&self) {
        let _ = self.call(|reply| Op::Deregister { reply }).await;
    }
}

/// The actor's state.
pub(crate) struct Actor {
    pub(crate) keys: Keyspace,
    pub(crate) config: RedisConfig,
    pub(crate) publisher: Client,
    pub(crate) subscriber: SubscriberClient,
    pub(crate) health: Arc<Health>,
    pub(crate) liveness: Arc<NodeLiveness>,
    /// Channel subscriptions with reference counts and linger deadlines.
    pub(crate) channels: Channels,
    /// What this node has registered in Redis.
    pub(crate) registered: Registered,
    /// Node start time (ms), published in the node info.
    pub(crate) started_ms: u64,
    /// Listen address, published in the node info.
    pub(crate) addr: String,
}

/// Starts the actor; returns its handle.
pub(crate) fn spawn(actor: Actor) -> Registry {
    let (tx, rx) = mpsc::channel(16 * 1024);
    tokio::spawn(actor.run(rx));
    Registry { tx }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
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
                        change.refuse(self.health.unavailable());
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
