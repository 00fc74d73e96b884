//! The receiving side of the relay: Redis pub/sub → bounded queue → hub.
//!
//! fred hands subscriber messages out through a tokio broadcast channel that
//! drops the oldest messages when a receiver lags (`RecvError::Lagged`). The
//! reader here does nothing but move messages into the node's own bounded
//! queue (`redis.pubsub_buffer` messages), so it keeps up; the dispatcher
//! decodes and delivers. If the dispatcher falls that far behind, the reader
//! waits and fred's channel overflows: that lag is counted and logged, never
//! silent.
//!
//! The probe: a node publishes a numbered probe to its own inbox every
//! `probe_interval` (on a Redis Cluster: to a channel of its own in one slot
//! of each shard). If one has not come back two rounds later while the
//! publisher is healthy, that subscriber connection has silently stopped
//! delivering, and it is reconnected (which resubscribes what it carried).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use fanout_protocol::{CloseCode, Name};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::envelope::{Envelope, Kind, VERSION};
use super::health::Health;
use super::keys::{Keyspace, Layout};
use super::shards::{Redis, Shard};
use crate::clock::now_millis;
use crate::hub::Hub;
use crate::message::{Audience, Broadcast, EncodedFrame, Position, Recipients};
use crate::metrics as m;

/// A message in the dispatch queue, holding its share of the byte budget
/// until the dispatcher is done with it.
pub(crate) struct Queued {
    pub(crate) bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// The dispatch queue's byte budget (`redis.pubsub_buffer_bytes`): a
/// semaphore with one permit per byte, taken by the reader for each message
/// and given back when the dispatcher drops it. The queue is thus bounded
/// by messages (its capacity) and by bytes (this), whichever comes first.
#[derive(Clone)]
pub(crate) struct ByteBudget {
    permits: Arc<Semaphore>,
    /// All of it: a message larger than the budget waits for all of it.
    total: u32,
}

impl ByteBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }
}

/// Moves pub/sub messages (from the subscriber's `message_rx()`) into the
/// bounded dispatch queue; counts and logs every message lost on the way.
pub(crate) async fn read(
    mut rx: tokio::sync::broadcast::Receiver<Message>,
    queue: mpsc::Sender<Queued>,
    budget: ByteBudget,
    stop: CancellationToken,
) {
    loop {
        let msg: Message = tokio::select! {
            () = stop.cancelled() => return,
            msg = rx.recv() => match msg {
                Ok(msg) => msg,
                Err(RecvError::Lagged(n)) => {
                    m::pubsub_lagged(n);
                    error!(lost = n, "pub/sub receive buffer overflowed; messages were lost (raise redis.pubsub_buffer)");
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        let Some(bytes) = msg.value.as_bytes().map(Bytes::copy_from_slice) else {
            m::pubsub_dropped("not_bytes");
            continue;
        };
        // Waiting here (for bytes of the budget, then for a place in the
        // queue) pushes back on fred's broadcast channel, whose overflow is
        // counted as lag above; a full queue drops nothing silently. A
        // message larger than the whole budget waits for all of it.
        let want = u32::try_from(bytes.len().max(1))
            .unwrap_or(u32::MAX)
            .min(budget.total);
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = budget.permits.clone().acquire_many_owned(want) => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if queue
            .send(Queued {
                bytes,
                _budget: permit,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Decodes envelopes and hands them to the hub.
pub(crate) async fn dispatch(
    node: String,
    hub: Hub,
    mut queue: mpsc::Receiver<Queued>,
    probes: Arc<Probes>,
) {
    // Each message's share of the byte budget returns when `queued` drops,
    // after it was handed to the hub.
    while let Some(queued) = queue.recv().await {
        let env = match Envelope::decode(&queued.bytes) {
            Ok(env) if env.v == VERSION => env,
            Ok(env) => {
                m::pubsub_dropped("version");
                debug!(version = env.v, "envelope of another version ignored");
                continue;
            }
            Err(e) => {
                m::pubsub_dropped("malformed");
                warn!(error = %e, "malformed envelope ignored");
                continue;
            }
        };
        if env.origin == node {
            if env.kind == Kind::Probe {
                probes.received(&env.id, env.ts);
            }
            // Our own message published on a room or tenant channel: local
            // members were served before it was published.
            continue;
        }
        m::pubsub_lag(now_millis().saturating_sub(env.ts));
        match env.kind {
            Kind::Deliver => deliver(&hub, env),
            Kind::Disconnect => {
                if let (Ok(tenant), Some(Ok(user))) = (
                    Name::new("tenant", &env.tenant),
                    env.user.as_deref().map(|u| Name::new("user", u)),
                ) {
                    hub.close_user(
                        &tenant,
                        &user,
                        CloseCode::AuthFailed,
                        "disconnected by the server",
                    );
                }
            }
            Kind::Probe => {}
        }
    }
}

fn deliver(hub: &Hub, env: Envelope) {
    let Ok(tenant) = Name::new("tenant", &env.tenant) else {
        m::pubsub_dropped("malformed");
        return;
    };
    let audience = match (&env.room, &env.user) {
        (Some(room), _) => Name::new("room", room).map(Audience::Room),
        (None, Some(user)) => Name::new("user", user).map(Audience::User),
        (None, None) => Ok(Audience::Tenant),
    };
    let (Ok(audience), Ok(frame)) = (audience, EncodedFrame::from_wire(env.json, env.msgpack))
    else {
        m::pubsub_dropped("malformed");
        return;
    };
    // A room message with history: the route script appended its position.
    let position = match (env.offset, env.epoch) {
        (Some(offset), Some(epoch)) if offset > 0 => Some(Position {
            offset,
            epoch: Arc::from(epoch),
        }),
        _ => None,
    };
    let frame = match &position {
        Some(pos) => match frame.with_position(pos) {
            Some(frame) => frame,
            None => {
                m::pubsub_dropped("malformed");
                return;
            }
        },
        None => frame,
    };
    hub.deliver(&Broadcast {
        tenant,
        audience,
        recipients: if env.presence_only {
            Recipients::PresenceWatchers
        } else {
            Recipients::Everyone
        },
        exclude: None,
        frame: Arc::new(frame),
        accepted_at: Instant::now(),
        ts: env.ts,
        id: Arc::from(env.id.as_str()),
        position,
    });
}

/// Probe numbers sent, and the last received per shard.
#[derive(Debug, Default)]
pub(crate) struct Probes {
    sent: AtomicU64,
    /// Shard id → highest probe number received through it.
    received: Mutex<HashMap<String, u64>>,
}

impl Probes {
    fn received(&self, shard: &str, n: u64) {
        let mut map = self.received.lock().unwrap_or_else(|p| p.into_inner());
        let got = map.entry(shard.to_owned()).or_insert(0);
        *got = (*got).max(n);
    }

    fn has_received(&self, shard: &str, n: u64) -> bool {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(shard)
            .is_some_and(|&got| got >= n)
    }
}

/// Publishes probes to our own inbox (one Redis) or probe channels (one per
/// shard of a Redis Cluster) and restarts a silent subscriber.
pub(crate) struct Prober {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) health: Arc<Health>,
    pub(crate) probes: Arc<Probes>,
    pub(crate) interval: std::time::Duration,
}

impl Prober {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        // Per shard, the probes not yet seen back, oldest first. A probe is
        // judged two rounds after it was sent (one round is within reach of
        // a busy machine: a false alarm resubscribes a whole shard). Only
        // probes sent and judged while the shard was ready count: probes
        // lost in an outage say nothing about the subscriber after it.
        let mut outstanding: HashMap<String, VecDeque<u64>> = HashMap::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.health.is_ready() {
                outstanding.clear();
                continue;
            }
            let shards = self.redis.shards();
            outstanding.retain(|id, _| shards.iter().any(|s| &*s.id == id));
            for shard in shards {
                let key = shard.id.to_string();
                if !shard.is_ready() && self.keys.layout() == Layout::Cluster {
                    outstanding.remove(&key);
                    continue;
                }
                let waiting = outstanding.entry(key.clone()).or_default();
                while waiting
                    .front()
                    .is_some_and(|&n| self.probes.has_received(&key, n))
                {
                    waiting.pop_front();
                }
                if waiting.len() >= 2 {
                    outstanding.remove(&key);
                    self.lost(&shard).await;
                    continue;
                }
                if let Some(n) = self.send(&shard).await {
                    waiting.push_back(n);
                }
            }
        }
    }

    /// A probe did not come back: that subscriber connection is replaced,
    /// and what it carried is resynced.
    async fn lost(&self, shard: &Shard) {
        warn!(shard = %shard.id, "a subscriber connection stopped delivering (probe lost); reconnecting it");
        m::probe_failed();
        match self.keys.layout() {
            Layout::Single => self.health.set_synced(false),
            Layout::Cluster => shard.set_synced(false),
        }
        if let Err(e) = shard.subscriber.force_reconnection().await {
            warn!(error = %e, "subscriber reconnect failed");
        }
    }

    /// Publishes the next probe through `shard`; its number if it went out.
    async fn send(&self, shard: &Shard) -> Option<u64> {
        let n = self.probes.sent.fetch_add(1, Ordering::AcqRel) + 1;
        let bytes = Envelope::probe(self.keys.node(), &shard.id, n)
            .encode()
            .ok()?;
        let sent: Result<i64, _> = match self.keys.layout() {
            Layout::Single => {
                let inbox = self.keys.inbox(self.keys.node());
                shard.publisher.publish(inbox, bytes).await
            }
            Layout::Cluster => {
                let channel = self.keys.probe_channel(&shard.probe_tag()?);
                shard.publisher.spublish(channel, bytes).await
            }
        };
        sent.ok().map(|_| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::config::Server;
    use fred::types::{MessageKind, Value};

    fn counter(name: &str) -> f64 {
        crate::metrics::install()
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn message(n: u8) -> Message {
        Message {
            channel: "ch".into(),
            value: Value::Bytes(Bytes::from(vec![n])),
            kind: MessageKind::Message,
            server: Server::new("127.0.0.1", 6379),
        }
    }

    #[tokio::test]
    async fn lag_in_the_broadcast_buffer_is_counted_not_silent_and_the_rest_flows() {
        let before = counter(crate::metrics::PUBSUB_LAGGED);
        let (tx, rx) = tokio::sync::broadcast::channel(8);
        for n in 0..20 {
            tx.send(message(n)).unwrap();
        }
        let (queue_tx, mut queue_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let reader = tokio::spawn(read(rx, queue_tx, ByteBudget::new(1 << 20), stop.clone()));
        let mut got = Vec::new();
        for _ in 0..8 {
            got.push(queue_rx.recv().await.unwrap().bytes[0]);
        }
        assert_eq!(
            got,
            (12..20).collect::<Vec<u8>>(),
            "the newest 8 survive, in order"
        );
        assert!(counter(crate::metrics::PUBSUB_LAGGED) - before >= 12.0);
        stop.cancel();
        reader.await.unwrap();
    }

    fn sized(n: u8, len: usize) -> Message {
        Message {
            value: Value::Bytes(Bytes::from(vec![n; len])),
            ..message(n)
        }
    }

    #[tokio::test]
    async fn the_dispatch_queue_is_bounded_by_bytes_as_well_as_messages() {
        let (tx, rx) = tokio::sync::broadcast::channel(64);
        for n in 0..10 {
            tx.send(sized(n, 40)).unwrap();
        }
        // Room for 64 messages but only 100 bytes: two of 40 bytes fit.
        let (queue_tx, mut queue_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let reader = tokio::spawn(read(rx, queue_tx, ByteBudget::new(100), stop.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let first = queue_rx.try_recv().expect("a first message");
        let second = queue_rx.try_recv().expect("a second message");
        assert!(
            queue_rx.try_recv().is_err(),
            "a third message exceeded the byte budget"
        );
        // Handing one back to the budget lets the next one in, in order.
        assert_eq!((first.bytes[0], second.bytes[0]), (0, 1));
        drop(first);
        let third = tokio::time::timeout(std::time::Duration::from_secs(1), queue_rx.recv())
            .await
            .expect("the next message in time")
            .expect("open");
        assert_eq!(third.bytes[0], 2);
        // A message larger than the whole budget waits for all of it.
        drop((second, third));
        tx.send(sized(99, 500)).unwrap();
        let mut last = None;
        while let Ok(Some(m)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), queue_rx.recv()).await
        {
            let n = m.bytes[0];
            drop(m);
            last = Some(n);
            if n == 99 {
                break;
            }
        }
        assert_eq!(last, Some(99));
        stop.cancel();
        reader.await.unwrap();
    }
}
