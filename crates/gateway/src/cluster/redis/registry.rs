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

mod state;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::Name;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{PubsubInterface, SetsInterface, SortedSetsInterface};
use fred::types::Value;
use fred::types::sorted_sets::Ordering;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use super::keys::{self, Keyspace};
use super::scripts;
use super::{Health, NodeLiveness};
use crate::cluster::{AdmitError, BusError};
use crate::config::RedisConfig;
use crate::hub::{ConnLimits, LimitExceeded};
use state::{Channels, Registered};

/// Longest batch the actor takes at once.
const MAX_BATCH: usize = 512;

/// A request to the registry actor.
#[derive(Debug)]
pub(crate) enum Op {
    Register {
        tenant: Name,
        user: Name,
        limits: ConnLimits,
        reply: oneshot::Sender<Result<(), AdmitError>>,
    },
    Unregister {
        tenant: Name,
        user: Name,
    },
    Join {
        tenant: Name,
        room: Name,
        user: Name,
        reply: oneshot::Sender<Result<bool, BusError>>,
    },
    Leave {
        tenant: Name,
        room: Name,
        user: Name,
        reply: oneshot::Sender<Result<bool, BusError>>,
    },
    /// Rewrite this node's whole registry and subscriptions (start, reconnect).
    Resync {
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    /// Remove this node from the registry (drain).
    Deregister {
        reply: oneshot::Sender<()>,
    },
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
    pub(crate) async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
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
        self.call(|reply| Op::Register {
            tenant,
            user,
            limits,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(gone().into()))
    }

    pub(crate) async fn unregister(&self, tenant: Name, user: Name) {
        let _ = self.tx.send(Op::Unregister { tenant, user }).await;
    }

    pub(crate) async fn join(
        &self,
        tenant: Name,
        room: Name,
        user: Name,
    ) -> Result<bool, BusError> {
        self.call(|reply| Op::Join {
            tenant,
            room,
            user,
            reply,
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
        self.call(|reply| Op::Leave {
            tenant,
            room,
            user,
            reply,
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

/// What one op of a batch needs from the pipeline.
enum Pending {
    Register {
        tenant: Name,
        user: Name,
        limits: ConnLimits,
        reply: oneshot::Sender<Result<(), AdmitError>>,
    },
    Unregister {
        tenant: Name,
        user: Name,
    },
    Join {
        tenant: Name,
        room: Name,
        user: Name,
        reply: oneshot::Sender<Result<bool, BusError>>,
    },
    Leave {
        tenant: Name,
        room: Name,
        user: Name,
        reply: oneshot::Sender<Result<bool, BusError>>,
    },
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut linger =
            tokio::time::interval(Duration::from_millis(250).min(self.config.channel_linger));
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
                    self.handle_batch(batch).await;
                }
                _ = beat.tick() => self.heartbeat().await,
                _ = linger.tick() => self.release_lingering().await,
            }
        }
    }

    async fn handle_batch(&mut self, batch: Vec<Op>) {
        let mut pending = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Resync { reply } => {
                    // Resync and deregister see every earlier op applied.
                    self.flush(std::mem::take(&mut pending)).await;
                    let _ = reply.send(self.resync().await);
                }
                Op::Deregister { reply } => {
                    self.flush(std::mem::take(&mut pending)).await;
                    self.deregister().await;
                    let _ = reply.send(());
                }
                Op::Register {
                    tenant,
                    user,
                    reply,
                    limits,
                } => {
                    if !self.health.is_ready() {
                        let _ = reply.send(Err(AdmitError::Unavailable(self.health.unavailable())));
                        continue;
                    }
                    pending.push(Pending::Register {
                        tenant,
                        user,
                        limits,
                        reply,
                    });
                }
                Op::Unregister { tenant, user } => {
                    pending.push(Pending::Unregister { tenant, user })
                }
                Op::Join {
                    tenant,
                    room,
                    user,
                    reply,
                } => {
                    if !self.health.is_ready() {
                        let _ = reply.send(Err(self.health.unavailable()));
                        continue;
                    }
                    pending.push(Pending::Join {
                        tenant,
                        room,
                        user,
                        reply,
                    });
                }
                Op::Leave {
                    tenant,
                    room,
                    user,
                    reply,
                } => pending.push(Pending::Leave {
                    tenant,
                    room,
                    user,
                    reply,
                }),
            }
        }
        self.flush(pending).await;
    }

    /// Subscribes what the batch needs, runs its scripts in one pipeline, replies.
    async fn flush(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        // 1. Channels first: a node must hear a room or tenant before it
        //    registers for it.
        let mut wanted = Vec::new();
        for p in &batch {
            match p {
                Pending::Register { tenant, .. } => wanted.push(self.keys.tenant_channel(tenant)),
                Pending::Join { tenant, room, .. } => {
                    wanted.push(self.keys.room_channel(tenant, room))
                }
                _ => {}
            }
        }
        let to_subscribe = self.channels.missing(&wanted);
        let subscribed = if to_subscribe.is_empty() {
            Ok(())
        } else {
            self.subscriber
                .subscribe(to_subscribe.clone())
                .await
                .map_err(|e| BusError(format!("subscribe failed: {e}")))
        };
        if subscribed.is_ok() {
            self.channels.mark_subscribed(&to_subscribe);
        }

        // 2. One pipeline for every script of the batch.
        let pipe = self.publisher.pipeline();
        let now = super::now_ms();
        let expiry = now + self.config.entry_ttl().as_millis() as u64;
        let node = self.keys.node().to_owned();
        let dead = self.liveness.dead();
        let mut sent = Vec::with_capacity(batch.len());
        for p in batch {
            let queued = match (&p, &subscribed) {
                (Pending::Register { .. } | Pending::Join { .. }, Err(_)) => false,
                (
                    Pending::Register {
                        tenant,
                        user,
                        limits,
                        ..
                    },
                    Ok(()),
                ) => {
                    let mut args: Vec<Value> = vec![
                        node.clone().into(),
                        limits.per_user.into(),
                        limits.per_tenant.into(),
                    ];
                    args.extend(dead.iter().cloned().map(Value::from));
                    let keys = vec![
                        self.keys.user_conns(tenant, user),
                        self.keys.tenant_conns(tenant),
                    ];
                    scripts::queue(&pipe, &scripts::ADMIT, keys, args).await;
                    true
                }
                (Pending::Unregister { tenant, user }, _) => {
                    let keys = vec![
                        self.keys.user_conns(tenant, user),
                        self.keys.tenant_conns(tenant),
                    ];
                    scripts::queue(&pipe, &scripts::RELEASE, keys, vec![node.clone().into()]).await;
                    true
                }
                (
                    Pending::Join {
                        tenant, room, user, ..
                    },
                    Ok(()),
                ) => {
                    let keys = vec![
                        self.keys.room_hosts(tenant, room),
                        self.keys.room_members(tenant, room),
                    ];
                    let args: Vec<Value> = vec![
                        node.clone().into(),
                        user.to_string().into(),
                        now.to_string().into(),
                        expiry.to_string().into(),
                    ];
                    scripts::queue(&pipe, &scripts::JOIN, keys, args).await;
                    true
                }
                (
                    Pending::Leave {
                        tenant, room, user, ..
                    },
                    _,
                ) => {
                    let empty_here = self.registered.room_member_count(tenant, room) <= 1;
                    let keys = vec![
                        self.keys.room_hosts(tenant, room),
                        self.keys.room_members(tenant, room),
                    ];
                    let args: Vec<Value> = vec![
                        node.clone().into(),
                        user.to_string().into(),
                        now.to_string().into(),
                        if empty_here { "1" } else { "0" }.into(),
                    ];
                    scripts::queue(&pipe, &scripts::LEAVE, keys, args).await;
                    true
                }
            };
            sent.push((p, queued));
        }
        let mut results = pipe.try_all::<Value>().await.into_iter();

        // 3. Apply results to our own view and reply.
        let mut index_add = Vec::new();
        let mut index_rem = Vec::new();
        let mut rooms_add = Vec::new();
        let mut rooms_rem = Vec::new();
        for (p, queued) in sent {
            let result = if queued { results.next() } else { None };
            let bus_err = |r: &Option<Result<Value, fred::error::Error>>| match r {
                Some(Err(e)) => BusError(format!("redis: {e}")),
                _ => subscribed
                    .clone()
                    .err()
                    .unwrap_or_else(|| BusError("no reply".into())),
            };
            match p {
                Pending::Register {
                    tenant,
                    user,
                    limits,
                    reply,
                } => {
                    let outcome = match &result {
                        Some(Ok(v)) => match v.as_i64() {
                            Some(0) => Ok(()),
                            Some(1) => {
                                Err(AdmitError::Limit(LimitExceeded::PerUser(limits.per_user)))
                            }
                            Some(2) => Err(AdmitError::Limit(LimitExceeded::PerTenant(
                                limits.per_tenant,
                            ))),
                            _ => Err(AdmitError::Unavailable(BusError(
                                "unexpected admit reply".into(),
                            ))),
                        },
                        _ => Err(AdmitError::Unavailable(bus_err(&result))),
                    };
                    if outcome.is_ok() {
                        let (first_user, first_tenant) = self.registered.add_conn(&tenant, &user);
                        self.channels.acquire(self.keys.tenant_channel(&tenant));
                        if first_user {
                            index_add.push(keys::index_user(&tenant, &user));
                        }
                        if first_tenant {
                            index_add.push(keys::index_tenant(&tenant));
                        }
                    }
                    let _ = reply.send(outcome);
                }
                Pending::Unregister { tenant, user } => {
                    let (last_user, last_tenant) = self.registered.remove_conn(&tenant, &user);
                    self.channels.release(
                        &self.keys.tenant_channel(&tenant),
                        self.config.channel_linger,
                    );
                    if last_user {
                        index_rem.push(keys::index_user(&tenant, &user));
                    }
                    if last_tenant {
                        index_rem.push(keys::index_tenant(&tenant));
                    }
                    if let Some(Err(e)) = result {
                        debug!(error = %e, "unregister not recorded; the resync after the outage corrects it");
                    }
                }
                Pending::Join {
                    tenant,
                    room,
                    user,
                    reply,
                } => {
                    let outcome = match &result {
                        Some(Ok(v)) => Ok(pair(v)),
                        _ => Err(bus_err(&result)),
                    };
                    match outcome {
                        Ok((joined, _hosts)) => {
                            if self.registered.add_member(&tenant, &room, &user) {
                                index_add.push(keys::index_room(&tenant, &room));
                                rooms_add.push(keys::room_id(&tenant, &room));
                            }
                            self.channels
                                .acquire(self.keys.room_channel(&tenant, &room));
                            let _ = reply.send(Ok(joined == 1));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Pending::Leave {
                    tenant,
                    room,
                    user,
                    reply,
                } => {
                    if self.registered.remove_member(&tenant, &room, &user) {
                        index_rem.push(keys::index_room(&tenant, &room));
                    }
                    self.channels.release(
                        &self.keys.room_channel(&tenant, &room),
                        self.config.channel_linger,
                    );
                    let outcome = match &result {
                        Some(Ok(v)) => {
                            let (left, hosts) = pair(v);
                            if hosts == 0 {
                                rooms_rem.push(keys::room_id(&tenant, &room));
                            }
                            Ok(left == 1)
                        }
                        _ => Err(bus_err(&result)),
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
        self.update_indexes(index_add, index_rem, rooms_add, rooms_rem)
            .await;
    }

    async fn update_indexes(
        &self,
        index_add: Vec<String>,
        index_rem: Vec<String>,
        rooms_add: Vec<String>,
        rooms_rem: Vec<String>,
    ) {
        if index_add.is_empty()
            && index_rem.is_empty()
            && rooms_add.is_empty()
            && rooms_rem.is_empty()
        {
            return;
        }
        let pipe = self.publisher.pipeline();
        let index = self.keys.node_index(self.keys.node());
        if !index_add.is_empty() {
            let _: Result<(), _> = pipe.sadd(&index, index_add).await;
        }
        if !index_rem.is_empty() {
            let _: Result<(), _> = pipe.srem(&index, index_rem).await;
        }
        if !rooms_add.is_empty() {
            let expiry = (super::now_ms() + self.config.entry_ttl().as_millis() as u64) as f64;
            let members: Vec<(f64, String)> = rooms_add.into_iter().map(|r| (expiry, r)).collect();
            let _: Result<(), _> = pipe
                .zadd(
                    self.keys.rooms(),
                    None,
                    Some(Ordering::GreaterThan),
                    false,
                    false,
                    members,
                )
                .await;
        }
        if !rooms_rem.is_empty() {
            let _: Result<(), _> = pipe.zrem(self.keys.rooms(), rooms_rem).await;
        }
        for r in pipe.try_all::<Value>().await {
            if let Err(e) = r {
                debug!(error = %e, "registry index update failed; the next resync rewrites it");
            }
        }
    }

    /// Unsubscribes channels whose linger is over, in one command.
    async fn release_lingering(&mut self) {
        let expired = self.channels.expired(Instant::now());
        if expired.is_empty() {
            return;
        }
        match self.subscriber.unsubscribe(expired.clone()).await {
            Ok(()) => self.channels.forget(&expired),
            Err(e) => {
                warn!(error = %e, channels = expired.len(), "unsubscribe failed; retrying later")
            }
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
