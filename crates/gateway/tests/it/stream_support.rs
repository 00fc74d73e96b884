//! Cluster test harness, part 4: numbered publish streams and what their
//! subscribers saw, for tests that break Redis underneath a running stream
//! (`redis_cluster_failover.rs`).
//!
//! A [`Publisher`] sends `{"seq": n}` into one room through `POST
//! /v1/publish` at a fixed period, through the nodes in turn, and records
//! every attempt with its answer and when it started and ended. A [`Reader`]
//! owns one subscribed WebSocket client and records every message; closed
//! with 4010 (a gap history cannot fill, an epoch change), it reconnects to
//! the same node and resubscribes with `since`, as a real client does, and
//! records that too. [`check_room`] then compares the two under an
//! [`Allowance`] saying what the fault may excuse.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cluster_support::{ClusterNode, any_room, request_keeping};
use crate::support::{Client, Event};

/// Upper bound of one publisher's attempts (a stream that is never stopped
/// still ends).
const MAX_ATTEMPTS: u64 = 5_000;
/// How long a reader waits for a frame before it looks at its stop flag.
const READ_SLICE: Duration = Duration::from_millis(50);

/// Locks a log; a poisoned lock (a panicking reader) still shows what it saw.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One publish as the publisher saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub seq: u64,
    pub via: SocketAddr,
    pub started: Instant,
    pub ended: Instant,
    pub status: u16,
    /// The answer: `id` (and `offset`, `epoch` in a room with history) for a 202.
    pub reply: Value,
}

/// Sends `{"seq": 1, 2, …}` into one room every `period` until stopped.
pub struct Publisher {
    pub tenant: String,
    pub room: String,
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Starts publishing `first`, `first + 1`, … into `tenant`/`room`
    /// through `nodes` in turn, one publish at a time (so offsets follow
    /// `seq`), a tick every `period` (a publish that takes longer delays the
    /// next tick, never doubles it).
    pub fn start(
        nodes: &[SocketAddr],
        tenant: &str,
        room: &str,
        first: u64,
        period: Duration,
    ) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (nodes, t, r) = (nodes.to_vec(), tenant.to_owned(), room.to_owned());
        let (log_w, stop_r) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for seq in first..first + MAX_ATTEMPTS {
                tick.tick().await;
                if stop_r.load(Ordering::Acquire) {
                    return;
                }
                let via = nodes[(seq as usize) % nodes.len()];
                let body = json!({"tenant":t,"room":r,"event":"seq","data":{"seq":seq}});
                let started = Instant::now();
                let (status, reply) = via.publish(body).await;
                let ended = Instant::now();
                lock(&log_w).push(Attempt {
                    seq,
                    via,
                    started,
                    ended,
                    status,
                    reply,
                });
            }
        });
        Self {
            tenant: tenant.to_owned(),
            room: room.to_owned(),
            log,
            stop,
            task,
        }
    }

    /// A copy of the attempts so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.log).clone()
    }

    /// Stops after the publish in flight; returns every attempt.
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("publisher task");
        lock(&self.log).clone()
    }
}

/// One publish after another into `room` through `via` until one answers
/// 202 or `within` passed; every attempt is appended to `log` (seq taken
/// from the end of `log`, which must be one room's). `None` if none was
/// accepted in time.
pub async fn publish_until_accepted(
    via: SocketAddr,
    tenant: &str,
    room: &str,
    log: &mut Vec<Attempt>,
    within: Duration,
) -> Option<Attempt> {
    let deadline = Instant::now() + within;
    loop {
        let seq = log.last().map_or(1, |a| a.seq + 1);
        let body = json!({"tenant":tenant,"room":room,"event":"seq","data":{"seq":seq}});
        let started = Instant::now();
        let (status, reply) = via.publish(body).await;
        let attempt = Attempt {
            seq,
            via,
            started,
            ended: Instant::now(),
            status,
            reply,
        };
        log.push(attempt.clone());
        if status == 202 {
            return Some(attempt);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Got {
    pub seq: u64,
    pub offset: Option<u64>,
    pub epoch: Option<String>,
    /// Which connection: 0 for the first, +1 after each recovery.
    pub segment: usize,
    pub at: Instant,
}

/// A 4010 close and the resubscribe that followed it.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub closed: (u16, String),
    /// When the new subscription was acknowledged.
    pub at: Instant,
    pub ack: Value,
}

/// Everything one subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub messages: Vec<Got>,
    pub recoveries: Vec<Recovery>,
    /// Anything else that went wrong: another close, a frame out of place.
    pub errors: Vec<String>,
}

impl Seen {
    fn record(&mut self, frame: &Value, segment: usize) {
        let Some(seq) = frame["data"]["seq"].as_u64() else {
            self.errors
                .push(format!("a message without data.seq: {frame}"));
            return;
        };
        self.messages.push(Got {
            seq,
            offset: frame["offset"].as_u64(),
            epoch: frame["epoch"].as_str().map(str::to_owned),
            segment,
            at: Instant::now(),
        });
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.messages.iter().map(|g| g.seq).collect()
    }
}

/// One subscriber of one room, read by its own task.
pub struct Reader {
    pub node: SocketAddr,
    pub user: String,
    pub room: String,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Reader {
    /// Reads `client` (subscribed to `room` on `node` as `user` of `tenant`)
    /// until stopped.
    pub fn start(node: SocketAddr, tenant: &str, user: &str, room: &str, client: Client) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(read(
            node,
            tenant.to_owned(),
            user.to_owned(),
            room.to_owned(),
            client,
            seen.clone(),
            stop.clone(),
        ));
        Self {
            node,
            user: user.to_owned(),
            room: room.to_owned(),
            seen,
            stop,
            task,
        }
    }

    /// `who` in failure messages.
    pub fn who(&self) -> String {
        format!("{} on {} in {}", self.user, self.node, self.room)
    }

    /// Stops reading; returns everything it saw.
    pub async fn stop(self) -> (String, Seen) {
        self.stop.store(true, Ordering::Release);
        let who = self.who();
        if let Err(e) = self.task.await {
            lock(&self.seen)
                .errors
                .push(format!("reader task failed: {e}"));
        }
        let seen = std::mem::take(&mut *lock(&self.seen));
        (who, seen)
    }
}

async fn read(
    node: SocketAddr,
    tenant: String,
    user: String,
    room: String,
    mut client: Client,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut segment = 0;
    while !stop.load(Ordering::Acquire) {
        match client.next_event(READ_SLICE).await {
            None => {}
            Some(Event::Frame(v)) if v["type"] == "message" => lock(&seen).record(&v, segment),
            Some(Event::Frame(_)) => {}
            Some(Event::Closed(Some((4010, reason)))) => {
                // What a client does after 4010: reconnect, and resubscribe
                // from the last position it saw.
                let since = lock(&seen)
                    .messages
                    .iter()
                    .rev()
                    .find_map(|g| Some((g.offset?, g.epoch.clone()?)));
                client = node.connect(&any_room(&user, &tenant)).await;
                let mut frame = json!({"type":"subscribe","room":room});
                if let Some((offset, epoch)) = since {
                    frame["since"] = json!({"offset": offset, "epoch": epoch});
                }
                let mut early = Vec::new();
                let ack = request_keeping(&mut client, frame, 1, &mut early).await;
                segment += 1;
                let mut seen = lock(&seen);
                if ack["type"] != "ack" {
                    seen.errors.push(format!("resubscribe after 4010: {ack}"));
                }
                seen.recoveries.push(Recovery {
                    closed: (4010, reason),
                    at: Instant::now(),
                    ack,
                });
                for m in &early {
                    seen.record(m, segment);
                }
            }
            Some(Event::Closed(other)) => {
                lock(&seen)
                    .errors
                    .push(format!("closed: {other:?} (only 4010 is expected)"));
                return;
            }
        }
    }
}

/// What a fault may excuse in one room.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    /// Publishes in flight during this window may answer 503 (and only 503).
    pub refusals: Option<(Instant, Instant)>,
    /// A 202 whose publish was in flight during this window may never
    /// arrive (a room without history has nothing to repair it from).
    pub loss: Option<(Instant, Instant)>,
    /// Subscribers may be closed with 4010 and resubscribe; what was
    /// published before such a resubscribe may be missing.
    pub recoveries: bool,
    /// Every message and every 202 of the room carries this epoch.
    pub epoch: Option<String>,
    /// A publish in flight at this moment (a SIGKILL) may answer 503 and
    /// still be delivered: Redis may have run it and died before answering.
    pub in_doubt: Option<Instant>,
}

/// Whether the publish was in flight at some moment of `window`.
fn overlaps(a: &Attempt, window: Option<(Instant, Instant)>) -> bool {
    window.is_some_and(|(from, to)| a.ended >= from && a.started <= to)
}

/// The accepted seqs of `attempts` that `seen` must have received.
pub fn must_receive(attempts: &[Attempt], allow: &Allowance, seen: &Seen) -> BTreeSet<u64> {
    let recovered_at = allow
        .recoveries
        .then(|| seen.recoveries.last().map(|r| r.at))
        .flatten();
    attempts
        .iter()
        .filter(|a| a.status == 202)
        .filter(|a| !overlaps(a, allow.loss))
        .filter(|a| recovered_at.is_none_or(|at| a.started > at))
        .map(|a| a.seq)
        .collect()
}

/// Seqs `seen` is still missing of what it must receive.
pub fn missing(attempts: &[Attempt], allow: &Allowance, seen: &Seen) -> Vec<u64> {
    let got: BTreeSet<u64> = seen.messages.iter().map(|g| g.seq).collect();
    must_receive(attempts, allow, seen)
        .difference(&got)
        .copied()
        .collect()
}

/// What [`check_room`] found, for the test's log.
#[derive(Debug, Default)]
pub struct RoomReport {
    pub accepted: usize,
    pub refused: usize,
    /// 202s that some subscriber never received (only within the allowance).
    pub lost: BTreeSet<u64>,
    pub recoveries: usize,
}

/// Asserts everything a room's publisher and subscribers saw against
/// `allow`; `history` says whether the room keeps history. `what` names
/// the room in failure messages.
pub fn check_room(
    what: &str,
    history: bool,
    attempts: &[Attempt],
    subscribers: &[(String, Seen)],
    allow: &Allowance,
) -> RoomReport {
    let mut report = RoomReport::default();
    // Answers: 202, or 503 inside the window.
    let mut positions = BTreeMap::new();
    for a in attempts {
        match a.status {
            202 => {
                report.accepted += 1;
                if history {
                    let pos = (
                        a.reply["epoch"].as_str().map(str::to_owned),
                        a.reply["offset"].as_u64(),
                    );
                    assert!(
                        pos.0.is_some() && pos.1.is_some(),
                        "{what}: a 202 without a position: {}",
                        a.reply
                    );
                    if let Some(e) = &allow.epoch {
                        assert_eq!(
                            pos.0.as_ref(),
                            Some(e),
                            "{what}: seq {} changed epoch: {}",
                            a.seq,
                            a.reply
                        );
                    }
                    if let Some(other) = positions.insert(pos.clone(), a.seq) {
                        panic!(
                            "{what}: seqs {other} and {} were both answered position {pos:?}: an offset was handed out twice",
                            a.seq
                        );
                    }
                }
            }
            status => {
                report.refused += 1;
                assert!(
                    status == 503 && overlaps(a, allow.refusals),
                    "{what}: seq {} via {} answered {status} {} ({:?} after the stream began; allowed: 503 in {:?})",
                    a.seq,
                    a.via,
                    a.reply,
                    a.started - attempts[0].started,
                    allow
                        .refusals
                        .map(|(x, y)| (x - attempts[0].started, y - attempts[0].started)),
                );
            }
        }
    }
    let in_doubt = |a: &Attempt| {
        allow
            .in_doubt
            .is_some_and(|t| a.started <= t && t <= a.ended)
    };
    let refused: BTreeSet<u64> = attempts
        .iter()
        .filter(|a| a.status != 202 && !in_doubt(a))
        .map(|a| a.seq)
        .collect();
    let by_seq: BTreeMap<u64, &Attempt> = attempts.iter().map(|a| (a.seq, a)).collect();

    for (who, seen) in subscribers {
        assert!(seen.errors.is_empty(), "{what}: {who}: {:?}", seen.errors);
        report.recoveries += seen.recoveries.len();
        assert!(
            allow.recoveries || seen.recoveries.is_empty(),
            "{what}: {who} was closed and resubscribed: {:?}",
            seen.recoveries
        );
        for r in &seen.recoveries {
            assert_eq!(r.ack["type"], "ack", "{what}: {who}: {r:?}");
        }
        let seqs = seen.seqs();
        if let Some(w) = seqs.windows(2).find(|w| w[0] >= w[1]) {
            panic!(
                "{what}: {who}: {} after {}: a duplicate or out of order: {seqs:?}",
                w[1], w[0]
            );
        }
        let leaked: Vec<&u64> = seqs.iter().filter(|s| refused.contains(s)).collect();
        assert!(
            leaked.is_empty(),
            "{what}: {who} received refused (non-202) seqs {leaked:?}"
        );
        let strays: Vec<&u64> = seqs.iter().filter(|s| !by_seq.contains_key(s)).collect();
        assert!(
            strays.is_empty(),
            "{what}: {who} received seqs nobody published: {strays:?}"
        );
        let absent = missing(attempts, allow, seen);
        assert!(
            absent.is_empty(),
            "{what}: {who} never received accepted seqs {absent:?} (received {} of {} accepted; recoveries {:?})",
            seqs.len(),
            report.accepted,
            seen.recoveries
        );
        let got: BTreeSet<u64> = seqs.iter().copied().collect();
        report.lost.extend(
            attempts
                .iter()
                .filter(|a| a.status == 202 && !got.contains(&a.seq))
                .map(|a| a.seq),
        );
        if history {
            check_positions(what, who, seen, &by_seq, allow);
        } else {
            let placed: Vec<&Got> = seen
                .messages
                .iter()
                .filter(|g| g.offset.is_some() || g.epoch.is_some())
                .collect();
            assert!(
                placed.is_empty(),
                "{what}: {who}: positions in a room without history: {placed:?}"
            );
        }
    }
    report
}

/// In a room with history: every message carries the position its publish
/// was answered with; within one connection offsets follow each other with
/// no hole and the epoch never changes (a change or a hole is a 4010).
fn check_positions(
    what: &str,
    who: &str,
    seen: &Seen,
    by_seq: &BTreeMap<u64, &Attempt>,
    allow: &Allowance,
) {
    for g in &seen.messages {
        let (Some(offset), Some(epoch)) = (g.offset, g.epoch.as_deref()) else {
            panic!("{what}: {who}: seq {} without a position", g.seq);
        };
        if let Some(e) = &allow.epoch {
            assert_eq!(epoch, e, "{what}: {who}: seq {} in another epoch", g.seq);
        }
        let attempt = by_seq[&g.seq];
        if attempt.status != 202 {
            continue; // in doubt: no position was answered
        }
        let reply = &attempt.reply;
        assert_eq!(
            (reply["offset"].as_u64(), reply["epoch"].as_str()),
            (Some(offset), Some(epoch)),
            "{what}: {who}: seq {} arrived at a position other than its 202 said",
            g.seq
        );
    }
    for w in seen.messages.windows(2) {
        if w[0].segment != w[1].segment {
            continue;
        }
        assert!(
            w[0].epoch == w[1].epoch && w[0].offset.map(|o| o + 1) == w[1].offset,
            "{what}: {who}: a silent jump from {:?}/{:?} (seq {}) to {:?}/{:?} (seq {}) on one connection",
            w[0].epoch,
            w[0].offset,
            w[0].seq,
            w[1].epoch,
            w[1].offset,
            w[1].seq
        );
    }
}
