//! The chaos suite (issue 14 item 6): three nodes (the real `fanout`
//! binary) and one real `redis-server` under a sequence-numbered load,
//! while a scheduler injects faults drawn from a fixed seed, and after each
//! fault has settled the cluster's state and every client's experience are
//! checked against what the test knows to be true.
//!
//! - **Load** (`load.rs`): 36 connections of 24 users in two tenants, rooms
//!   of 1, 5 and 30 members with and without history, presence watchers,
//!   transient users; 13 publishers (rooms, user sends, tenant sends)
//!   through the HTTP API, each numbering its messages.
//! - **Faults** (`plan.rs`, `rig.rs`, `proxy.rs`): a node SIGKILLed or
//!   drained and replaced; a drain while Redis is down; Redis SIGKILLed and
//!   restarted with its append-only file or empty; Redis paused (`CLIENT
//!   PAUSE` or SIGSTOP) shorter and longer than the nodes' command timeout;
//!   a TCP proxy between each node and Redis that stalls or resets the
//!   node's connections (one node's or all); a slow consumer under a flood.
//! - **Invariants** (`check.rs`, table in its module doc): no duplicate, no
//!   reorder, no loss for clients that keep up (history rooms: none after
//!   recovery), presence and counts equal to the truth within `heartbeat ×
//!   3` (plus the sweep for a dead node), presence events consistent,
//!   admission exact, dead nodes leave nothing in Redis, every node ready.
//!
//! **Running it.** `cargo test -p fanout-gateway --test chaos` runs the CI
//! round: every fault kind once in an order drawn from the seed, plus two
//! more (13 faults). It takes about 80 s on the 2-core development machine
//! once built (measured: 73-82 s over six seeds) and is bounded: no new
//! fault starts after 6 minutes, every wait has a bound. The seed is
//! printed at the start and in every failure; `FANOUT_CHAOS_SEED=<seed>`
//! replays one, `FANOUT_CHAOS_DURATION=30m` soaks (random faults until the
//! time is up; `scripts/chaos.sh 30m [seed]`), `FANOUT_CHAOS_FAULTS=a,b`
//! runs only those kinds (names in `plan.rs`), `FANOUT_CHAOS_KEEP_GOING=1`
//! lists every violation at the end instead of stopping at the first, and
//! `FANOUT_CHAOS_STRICT=1` turns on every check below that is off.
//!
//! Needs `redis-server` on the PATH (`scripts/install-test-deps.sh`); fails,
//! never skips, without it. Everything listens on 127.0.0.1.

#![allow(unreachable_pub, missing_docs, clippy::unwrap_used)]

#[path = "../it/cluster_support.rs"]
mod cluster_support;
#[path = "../it/redis_support.rs"]
mod redis_support;
#[path = "../it/support.rs"]
mod support;

mod check;
mod load;
mod plan;
mod proxy;
mod rig;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::{Instant, sleep};

use crate::check::{Checker, Dead, FaultRecord, Flag, Journal, Scope, SharedJournal, Window};
use crate::cluster_support::READY_WAIT;
use crate::load::{ClientHandle, Cmd, Ended, LiveNode, Publishers, State, lock};
use crate::plan::{Fault, Mode, PauseHow, Reach, Scheduler};
use crate::rig::{DRAIN_WINDOW, GRACE, HEARTBEAT, Rig, command_timeout, ttl};

// The checks behind these constants failed on the code this suite was
// written against (cc9fbad) or still fail; each says which. A check that is
// off reports its findings as "known defect" without failing.

/// Issue 14 item 1: per-user, per-tenant and room-member counts never leak
/// (Redis holds exactly each live node's connections; admission refuses at
/// the limit, never below it; a dead node's counted fields are gone after
/// its sweep). On: passes since 87cc4c1 (the leak itself was not
/// reproduced here on cc9fbad; `it::registry_faults` reproduces it).
pub const EXPECT_NO_LEAKED_COUNTS: bool = true;
/// Issue 14 item 1, while the cluster recovers: a client reconnecting
/// during a Redis restart or a drain is never refused with 4003 below its
/// limit (the checkpoints' counts and probes are under the flag above).
/// Off: fails after a Redis restart empty; the drain case passes since
/// 83c6299 (`it::registry_faults` tests it).
pub const EXPECT_EXACT_ADMISSION_DURING_RECOVERY: bool = false;
/// Issue 14 item 2: watchers get `leave` for the users of a SIGKILLed node
/// once it is swept (when the user has no connection left in the room).
/// On: fails on cc9fbad, passes since 87cc4c1.
pub const EXPECT_LEAVE_EVENTS_AFTER_SWEEP: bool = true;
/// Issue 14 item 3: after a Redis pause or a network stall longer than the
/// command timeout, publishes are refused and rooms without history lose
/// messages only during the spike and its aftermath (two heartbeats), not
/// until every node has rewritten its registry.
/// (A spike shorter than the command timeout is always checked strictly:
/// nothing refused, nothing lost.) On: passes on cc9fbad and since (this
/// load's registries are rewritten in milliseconds; the purge-and-rewrite
/// of item 3 shows as the presence events below).
pub const EXPECT_TARGETED_REPAIR: bool = true;
/// Issue 14 item 4: a node drained while Redis is down closes every
/// client with 1012 within its drain window and exits within its grace.
/// On: fails on cc9fbad (connections with a request in flight get no 1012,
/// all end at the grace), passes since cbaa7b8 (a close interrupts a
/// request in flight).
pub const EXPECT_DRAIN_WITHOUT_REDIS: bool = true;
/// Issue 14 items 2-3, and what this suite found beyond them: a watcher's
/// presence snapshot plus the `join`/`leave` events after it equal who is
/// in the room; no `leave` while the user is still there. Off: fails
/// before and after 87cc4c1 (events of different nodes overtake each
/// other; a reconnecting watcher gets the `leave` its old connection
/// caused after its new snapshot, and never the `join` it caused itself).
pub const EXPECT_CONSISTENT_PRESENCE_EVENTS: bool = false;
/// Found by this suite: the same across a Redis restart (empty or with its
/// data), while every node re-registers. Off: fails before and after
/// 87cc4c1 (on cc9fbad the first node back sweeps the others as dead).
pub const EXPECT_PRESENCE_EVENTS_ACROSS_REDIS_LOSS: bool = false;
/// Found by this suite (issue 14 item 5 follow-up): a publish whose Redis
/// connection broke after the route script was sent may have run; its 503
/// must say "may still be delivered" like a timeout's. On: failed on
/// cc9fbad and 87cc4c1 (a proxy reset mid-publish answered "redis route_room
/// failed" and the message was delivered; 1 in 40 resets with the default
/// seed), passes since 83c6299 (`FANOUT_CHAOS_FAULTS` = 40 × `cut`).
pub const EXPECT_UNKNOWN_OUTCOME_ON_CONNECTION_LOSS: bool = true;

/// Counts and presence must equal the truth this long after the clients
/// settled: three heartbeats, plus slack for a loaded 2-core machine.
pub const COUNTS_BOUND: Duration =
    Duration::from_millis(HEARTBEAT.as_millis() as u64 * 3 + check::LOAD_SLACK.as_millis() as u64);
/// A dead node's entries are swept 2 TTLs after its heartbeat lapsed (one
/// TTL after its last beat); a sweeper runs on every heartbeat.
pub fn sweep_bound() -> Duration {
    ttl() * 3 + HEARTBEAT * 2 + check::LOAD_SLACK
}
/// Clients must all be connected and subscribed again within this.
const CLIENT_SETTLE: Duration = Duration::from_secs(20);
/// Fault windows end this long after every node was seen ready again.
const WINDOW_MARGIN: Duration = Duration::from_millis(1500);
/// With `EXPECT_TARGETED_REPAIR`: how long after a spike longer than the
/// command timeout refusals and losses may go on — two heartbeats (the
/// first after the spike renews the entries that lapsed during it) and
/// half a second.
const SPIKE_AFTERMATH: Duration = Duration::from_millis(HEARTBEAT.as_millis() as u64 * 2 + 500);
/// A window of a fault whose end is not known yet.
const OPEN: Duration = Duration::from_secs(24 * 3600);
/// How late after the drain window a drained node's last close may come.
const DRAIN_SLACK: Duration = Duration::from_millis(1500);
/// Receive buffer of the slow consumer's socket; size of a flood message.
const SLOW_RCVBUF: u32 = 16 * 1024;
const FLOOD_PAD: usize = 32 * 1024;
/// Pause between flood batches (8 messages): about 2.5 MB/s, which a
/// reader keeps up with on a loaded machine while the one that stopped
/// reading overflows all the same.
const FLOOD_PAUSE: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos() {
    let (seed, mode) = plan::from_env();
    let journal: SharedJournal = Arc::new(Mutex::new(Journal {
        seed,
        mode: format!("{mode:?}"),
        t0: Instant::now(),
        faults: Vec::new(),
        logs: Vec::new(),
    }));
    println!("chaos seed {seed:#x} ({mode:?}); replay with FANOUT_CHAOS_SEED={seed:#x}");
    let outcome = std::panic::AssertUnwindSafe(run(seed, mode, journal.clone()))
        .catch_unwind()
        .await;
    if let Err(panic) = outcome {
        // Whatever failed (an invariant, or the harness itself), the seed
        // and the fault log go with it.
        eprintln!("{}", lock(&journal).render());
        std::panic::resume_unwind(panic);
    }
}

/// The whole run. Fails by panicking here, while the nodes' temp dirs
/// still exist (they are kept for a panicking test).
async fn run(seed: u64, mode: Mode, journal: SharedJournal) {
    let mut rig = Rig::start().await;
    lock(&journal).logs = rig.logs();
    let live = rig.live.clone();
    let mut clients: Vec<ClientHandle> = load::clients()
        .into_iter()
        .map(|spec| ClientHandle::start(spec, &live))
        .collect();
    if let Err(e) = settle_clients(&clients).await {
        panic!("the load did not connect: {e}\n{}", rig.log_tails());
    }
    let max_run = match mode {
        Mode::Round { cap, .. } | Mode::Chosen { cap, .. } => cap + Duration::from_secs(120),
        Mode::Soak { duration } => duration + Duration::from_secs(300),
    };
    let mut publishers = Publishers::start(&live, max_run);
    let mut checker = Checker::new(journal.clone(), load::streams(), clients.len());
    sleep(Duration::from_secs(1)).await;
    if let Err(report) = checker
        .checkpoint(
            &rig,
            &clients,
            &publishers,
            Instant::now(),
            Instant::now(),
            false,
        )
        .await
    {
        panic!("before any fault: {report}");
    }

    let started = Instant::now();
    let soak = matches!(mode, Mode::Soak { .. });
    let mut scheduler = Scheduler::new(seed, mode, command_timeout());
    println!(
        "{} faults planned",
        if soak {
            "soak: random".to_owned()
        } else {
            scheduler.planned().to_string()
        }
    );
    let mut slow_users = 0usize;
    let mut seen_sweeps = std::collections::BTreeSet::new();
    loop {
        match mode {
            Mode::Round { cap, .. } | Mode::Chosen { cap, .. } if started.elapsed() > cap => {
                // A round that skips fault kinds would pass without checking them.
                panic!(
                    "time cap {cap:?} reached with {} faults left unrun (seed {seed:#x})",
                    scheduler.planned()
                );
            }
            Mode::Soak { duration } if started.elapsed() > duration => break,
            _ => {}
        }
        let Some(fault) = scheduler.next(soak) else {
            break;
        };
        churn(&clients, &live, &mut scheduler).await;
        if let Err(e) = settle_clients(&clients).await {
            checker.add("clients reconnect", None, format!("after the churn: {e}"));
        }
        let n = {
            let mut j = lock(&journal);
            j.faults.push(FaultRecord {
                what: fault.to_string(),
                injected: Instant::now(),
                healed: None,
                settled: None,
                notes: Vec::new(),
            });
            j.faults.len() - 1
        };
        println!("fault #{}: {fault}", n + 1);
        let windows_from = checker.windows.len();
        let losses_from = checker.redis_loss.len();
        inject(
            &fault,
            n,
            &mut rig,
            &clients,
            &mut checker,
            &journal,
            &mut slow_users,
        )
        .await;
        lock(&journal).faults[n].healed = Some(Instant::now());
        lock(&journal).logs = rig.logs();
        // Settle: every node ready, every client back.
        sleep(Duration::from_millis(300)).await;
        let ready_at = match rig.wait_ready(READY_WAIT).await {
            Ok(t) => t,
            Err(unready) => {
                checker.add(
                    "readiness",
                    None,
                    format!("not ready {READY_WAIT:?} after the fault: {unready:?}"),
                );
                Instant::now()
            }
        };
        let injected = lock(&journal).faults[n].injected;
        let end = ready_at.max(injected + Duration::from_secs(2)) + WINDOW_MARGIN;
        for w in &mut checker.windows[windows_from..] {
            if w.to > Instant::now() + OPEN / 2 {
                w.to = end;
            }
        }
        if let Err(e) = settle_clients(&clients).await {
            checker.add("clients reconnect", None, e);
        }
        let settled = Instant::now();
        lock(&journal).faults[n].settled = Some(settled);
        for w in &mut checker.redis_loss[losses_from..] {
            w.to = settled + WINDOW_MARGIN;
        }
        // Fixed in 746239d (the first node back after a Redis outage swept
        // the others): a finding, not a note.
        for line in swept_alive(&rig, &checker, &mut seen_sweeps) {
            checker.add(
                "dead nodes leave nothing",
                None,
                format!("a live node was swept: {line}"),
            );
        }
        if let Err(report) = checker
            .checkpoint(&rig, &clients, &publishers, settled, injected, false)
            .await
        {
            panic!("{report}");
        }
    }

    publishers.stop().await;
    sleep(Duration::from_secs(1)).await;
    if let Err(report) = checker
        .checkpoint(
            &rig,
            &clients,
            &publishers,
            Instant::now(),
            Instant::now(),
            true,
        )
        .await
    {
        panic!("at the end: {report}");
    }
    let accepted: usize = publishers
        .list
        .iter()
        .map(|p| {
            lock(&p.log)
                .iter()
                .filter(|r| matches!(r.outcome, load::Outcome::Accepted { .. }))
                .count()
        })
        .sum();
    let received: usize = clients.iter().map(|c| lock(&c.log).msgs.len()).sum();
    let lives: usize = clients.iter().map(|c| lock(&c.log).lives.len()).sum();
    println!(
        "chaos done in {:.0?}: {} faults, {accepted} publishes accepted, {received} messages received over {lives} connections",
        started.elapsed(),
        lock(&journal).faults.len()
    );
    println!("{}{}", checker.render_notes(), lock(&journal).render());
    if !checker.failures.is_empty() {
        panic!(
            "{} invariant violation(s) (keep-going mode):\n  {}",
            checker.failures.len(),
            checker.failures.join("\n  ")
        );
    }
    for c in &mut clients {
        c.stop().await;
    }
}

/// Lines of the nodes' logs where a node swept the entries of a node the
/// test knows to be alive (not killed, not drained): evidence for the
/// fault log, not a check (the line's wording is the node's business).
fn swept_alive(
    rig: &Rig,
    checker: &Checker,
    seen: &mut std::collections::BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, path) in rig.logs() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("dead_node=")) {
            let Some(swept) = line
                .split("dead_node=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
            else {
                continue;
            };
            let swept = swept.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
            let dead = checker.dead.iter().any(|d| d.id == swept);
            let key = format!("{id} swept {swept}");
            if !dead && seen.insert(key.clone()) {
                let when = line.split_whitespace().next().unwrap_or_default();
                out.push(format!("{key} ({when}; see {})", path.display()));
            }
        }
    }
    out
}

/// Waits until no client is between connections and nothing changed for a
/// moment; `Err` naming the stragglers after [`CLIENT_SETTLE`].
async fn settle_clients(clients: &[ClientHandle]) -> Result<(), String> {
    let deadline = Instant::now() + CLIENT_SETTLE;
    loop {
        let unsettled = check::unsettled(clients);
        let quiet = check::quiet_since(clients).elapsed() >= Duration::from_millis(300);
        if unsettled.is_empty() && quiet {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "clients not connected {CLIENT_SETTLE:?} after the fault: {unsettled:?}"
            ));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Between faults: transient users come back, a few clients move back to
/// their preferred node, one transient user leaves (a normal `leave`).
async fn churn(clients: &[ClientHandle], live: &load::Live, scheduler: &mut Scheduler) {
    for c in clients {
        if c.state() == State::Away {
            c.send(Cmd::Return);
        }
    }
    let misplaced: Vec<&ClientHandle> = clients
        .iter()
        .filter(|c| {
            let log = lock(&c.log);
            let here = log.ready_life().map(|l| l.slot);
            here.is_some() && here != Some(c.spec.slot) && live.get(c.spec.slot).is_some()
        })
        .collect();
    for c in misplaced.iter().take(6) {
        c.send(Cmd::Move);
    }
    let transients: Vec<&ClientHandle> = clients
        .iter()
        .filter(|c| c.spec.transient && c.state() == State::Ready)
        .collect();
    if !transients.is_empty() {
        let i = scheduler.rng().below(transients.len());
        transients[i].send(Cmd::Leave);
    }
    sleep(Duration::from_millis(200)).await;
}

fn note(journal: &SharedJournal, n: usize, text: String) {
    lock(journal).faults[n].notes.push(text);
}

/// Injects one fault and heals it (restarts what it stopped); records its
/// fault windows and dead nodes, and whatever it broke that is visible at once.
async fn inject(
    fault: &Fault,
    n: usize,
    rig: &mut Rig,
    clients: &[ClientHandle],
    checker: &mut Checker,
    journal: &SharedJournal,
    slow_users: &mut usize,
) {
    let open = || Instant::now() + OPEN;
    let injected = Instant::now();
    let strict_repair = Flag::TargetedRepair.enabled();
    match *fault {
        Fault::KillNode { slot, down } => {
            let (id, at) = rig.kill(slot).await;
            checker.windows.push(Window {
                scope: Scope::Node(id.clone()),
                from: injected,
                to: open(),
            });
            checker.dead.push(Dead {
                id: id.clone(),
                killed: true,
                fault: n,
                at,
                sweep_due: at + sweep_bound(),
            });
            sleep(down).await;
            let fresh = rig.spawn(slot).await;
            note(journal, n, format!("killed {id}; {fresh} took its slot"));
        }
        Fault::DrainNode { slot, down } => {
            let (id, status, took) = rig.drain(slot).await;
            checker.windows.push(Window {
                scope: Scope::Node(id.clone()),
                from: injected,
                to: open(),
            });
            checker.dead.push(Dead {
                id: id.clone(),
                killed: false,
                fault: n,
                at: Instant::now(),
                sweep_due: Instant::now() + sweep_bound(),
            });
            judge_drain(
                checker,
                clients,
                journal,
                n,
                &id,
                status,
                took,
                None,
                Vec::new(),
            )
            .await;
            sleep(down).await;
            let fresh = rig.spawn(slot).await;
            note(journal, n, format!("{fresh} took the slot"));
        }
        Fault::DrainNodeWithoutRedis { slot, frozen } => {
            let bulk = match rig.live.get(slot) {
                Some(node) => match open_bulk(&node).await {
                    Ok(readers) => readers,
                    Err(e) => {
                        checker.add("drain", None, format!("opening the bulk connections: {e}"));
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            checker.redis_loss.push(Window {
                scope: Scope::All,
                from: injected,
                to: open(),
            });
            checker.windows.push(Window {
                scope: Scope::All,
                from: injected,
                to: open(),
            });
            let pid = rig.redis.pid().expect("redis runs");
            if frozen {
                redis_support::signal(pid, "STOP");
            } else {
                rig.redis.kill().await;
            }
            sleep(Duration::from_millis(300)).await;
            let (id, status, took) = rig.drain(slot).await;
            judge_drain(
                checker,
                clients,
                journal,
                n,
                &id,
                status,
                took,
                Some(Flag::DrainWithoutRedis),
                bulk,
            )
            .await;
            if frozen {
                redis_support::signal(pid, "CONT");
            } else {
                rig.redis.restart().await;
            }
            checker.dead.push(Dead {
                id: id.clone(),
                killed: false,
                fault: n,
                at: Instant::now(),
                sweep_due: Instant::now() + sweep_bound(),
            });
            let fresh = rig.spawn(slot).await;
            note(
                journal,
                n,
                format!("redis back with its data; {fresh} took the slot"),
            );
        }
        Fault::KillRedis { persist, down } => {
            checker.redis_loss.push(Window {
                scope: Scope::All,
                from: injected,
                to: open(),
            });
            checker.windows.push(Window {
                scope: Scope::All,
                from: injected,
                to: open(),
            });
            rig.redis.kill().await;
            if !persist {
                rig.redis.wipe_data();
            }
            sleep(down).await;
            rig.redis.restart().await;
            if persist {
                // Clients leave and come back while the nodes reconnect and
                // Redis has its data but no scripts: releases and leaves
                // meet NOSCRIPT or a connection not yet back (issue 14 item 1).
                for c in clients.iter().filter(|c| !c.spec.transient).take(8) {
                    c.send(Cmd::Move);
                }
            }
        }
        Fault::PauseRedis { how, pause } => {
            let short = fault.is_short_spike(command_timeout());
            if !short {
                checker.windows.push(Window {
                    scope: Scope::All,
                    from: injected,
                    to: if strict_repair {
                        injected + pause + SPIKE_AFTERMATH
                    } else {
                        open()
                    },
                });
            }
            rig.pause_redis(how == PauseHow::Sigstop, pause).await;
        }
        Fault::StallProxy { reach, stall } => {
            let short = fault.is_short_spike(command_timeout());
            if !short {
                for scope in scopes(rig, reach) {
                    checker.windows.push(Window {
                        scope,
                        from: injected,
                        to: if strict_repair {
                            injected + stall + SPIKE_AFTERMATH
                        } else {
                            open()
                        },
                    });
                }
            }
            for slot in slots(reach) {
                rig.proxies[slot].stall(stall);
            }
            sleep(stall).await;
        }
        Fault::CutProxy { reach } => {
            for scope in scopes(rig, reach) {
                checker.windows.push(Window {
                    scope,
                    from: injected,
                    to: open(),
                });
            }
            for slot in slots(reach) {
                rig.proxies[slot].cut();
            }
        }
        Fault::SlowConsumer { slot } => {
            *slow_users += 1;
            let user = format!("slow{}", *slow_users % 40);
            slow_consumer(checker, rig, slot, &user, journal, n).await;
        }
    }
}

fn slots(reach: Reach) -> Vec<usize> {
    match reach {
        Reach::All => vec![0, 1, 2],
        Reach::Node(slot) => vec![slot],
    }
}

fn scopes(rig: &Rig, reach: Reach) -> Vec<Scope> {
    match reach {
        Reach::All => vec![Scope::All],
        Reach::Node(slot) => rig.id(slot).map(Scope::Node).into_iter().collect(),
    }
}

/// Connections opened on the node about to be drained (each in one of 10
/// rooms), to give its drain work at a scale the load alone does not;
/// one in [`BULK_ACTIVE_EVERY`] keeps switching rooms, so that a request
/// is in flight when the drain comes.
const BULK: usize = 600;
const BULK_ACTIVE_EVERY: usize = 8;

/// How a bulk connection ended, as its reader saw it.
struct BulkEnd {
    user: String,
    active: bool,
    /// The close frame (or none), and when it came.
    close: Option<(Ended, Instant)>,
    /// When the connection ended (the TCP close after the handshake).
    ended: Instant,
}

/// Opens [`BULK`] connections on `node`, each subscribed to a room, each
/// read by a task until the connection ends (at most 30 s).
async fn open_bulk(node: &LiveNode) -> Result<Vec<tokio::task::JoinHandle<BulkEnd>>, String> {
    let mut readers = Vec::new();
    for chunk in (0..BULK).collect::<Vec<_>>().chunks(50) {
        let opened = futures_util::future::join_all(chunk.iter().map(|&i| async move {
            let user = format!("bulk{i}");
            let mut ws =
                load::connect(node.addr, "acme", &user, fanout_protocol::Codec::Json).await?;
            load::subscribe_plain(&mut ws, &format!("bulk{}", i % 10)).await?;
            Ok::<_, String>((i, user, ws))
        }))
        .await;
        for r in opened {
            let (i, user, ws) = r?;
            let active = i.is_multiple_of(BULK_ACTIVE_EVERY);
            readers.push(tokio::spawn(async move {
                let (close, ended) = load::bulk_reader(ws, active, Duration::from_secs(30)).await;
                BulkEnd {
                    user,
                    active,
                    close,
                    ended,
                }
            }));
        }
    }
    Ok(readers)
}

/// A drain: exit 0 within the grace; every client of the node (and the
/// bulk connections, if any) closed with 1012 within the drain window.
#[allow(clippy::too_many_arguments)]
async fn judge_drain(
    checker: &mut Checker,
    clients: &[ClientHandle],
    journal: &SharedJournal,
    n: usize,
    id: &str,
    status: std::process::ExitStatus,
    took: Duration,
    flag: Option<Flag>,
    bulk: Vec<tokio::task::JoinHandle<BulkEnd>>,
) {
    let drain_started = Instant::now() - took - Duration::from_millis(50);
    // The clients read their close frames meanwhile.
    sleep(Duration::from_millis(300)).await;
    let (total, mut bad, mut last) = check::drain_closes(clients, id, drain_started);
    let bulk_total = bulk.len();
    let mut last_end = None;
    let mut late_ends = 0;
    for reader in bulk {
        match reader.await {
            Ok(b) => {
                last_end = last_end.max(Some(b.ended));
                // The node must end the connection, not only send its close
                // (plus its 1 s close linger).
                if b.ended.saturating_duration_since(drain_started)
                    > DRAIN_WINDOW + DRAIN_SLACK + Duration::from_secs(1)
                {
                    late_ends += 1;
                }
                match b.close {
                    Some((Ended::Code(1012, _), at)) => last = last.max(Some(at)),
                    Some((end, at)) => {
                        last = last.max(Some(at));
                        bad.push(format!("{} (bulk, active {}): {end:?}", b.user, b.active));
                    }
                    None => bad.push(format!(
                        "{} (bulk, active {}): no close frame, ended after {:?}",
                        b.user,
                        b.active,
                        b.ended.saturating_duration_since(drain_started)
                    )),
                }
            }
            Err(e) => bad.push(format!("a bulk reader failed: {e}")),
        }
    }
    if late_ends > 0 {
        checker.add(
            "drain",
            flag,
            format!(
                "{late_ends} of {bulk_total} bulk connections of {id} were still open {:?} after SIGTERM (the last ended after {:?})",
                DRAIN_WINDOW + DRAIN_SLACK + Duration::from_secs(1),
                last_end.map(|t: Instant| t.saturating_duration_since(drain_started))
            ),
        );
    }
    let closing = last.map(|t| t.saturating_duration_since(drain_started));
    note(
        journal,
        n,
        format!(
            "drained {id} in {took:.1?} ({status}); {total} client and {bulk_total} bulk connection(s) on it, the last closed after {closing:.1?}"
        ),
    );
    if !status.success() {
        checker.add(
            "drain",
            flag,
            format!("{id} exited with {status} after its drain"),
        );
    }
    if took > GRACE + Duration::from_secs(1) {
        checker.add(
            "drain",
            flag,
            format!("{id} took {took:?} to drain (grace {GRACE:?})"),
        );
    }
    // Closes are spread over the drain window; a close after it waited on
    // something (Redis) it must not wait on.
    if let Some(closing) = closing
        && closing > DRAIN_WINDOW + DRAIN_SLACK
    {
        checker.add(
            "drain",
            flag,
            format!(
                "the last of {id}'s connections closed {closing:?} after SIGTERM (drain window {DRAIN_WINDOW:?})"
            ),
        );
    }
    if !bad.is_empty() {
        checker.add(
            "drain",
            flag,
            format!(
                "{} of {} connections of {id} did not end with 1012: {:?}",
                bad.len(),
                total + bulk_total,
                bad.iter().take(10).collect::<Vec<_>>()
            ),
        );
    }
}

/// A client on `slot` stops reading while `flood` is flooded: it must be
/// closed with 4009 while a reader on another node gets every message.
async fn slow_consumer(
    checker: &mut Checker,
    rig: &Rig,
    slot: usize,
    user: &str,
    journal: &SharedJournal,
    n: usize,
) {
    let Some(node) = rig.live.get(slot) else {
        checker.add(
            "slow consumer",
            None,
            format!("node slot {slot} is not live"),
        );
        return;
    };
    let ctl_node: LiveNode = rig.live.pick(slot + 1, 0).expect("a live node");
    let mut ctl =
        match load::connect(ctl_node.addr, "acme", "ctl", fanout_protocol::Codec::Json).await {
            Ok(ws) => ws,
            Err(e) => {
                checker.add("slow consumer", None, format!("control reader: {e}"));
                return;
            }
        };
    let prepared = async {
        // The welcome is skipped on the way to the ack.
        load::subscribe_plain(&mut ctl, "flood").await?;
        load::stalled_reader(&node, user, "flood", SLOW_RCVBUF).await
    };
    let mut slow = match prepared.await {
        Ok(ws) => ws,
        Err(e) => {
            checker.add("slow consumer", None, format!("setting up: {e}"));
            return;
        }
    };
    let count = flood_count();
    let reader = tokio::spawn(async move {
        let got =
            load::read_flood(&mut ctl, "flood", count as usize, Duration::from_secs(60)).await;
        load::close(&mut ctl).await;
        got
    });
    if let Err(e) = load::flood(&node, "flood", count, FLOOD_PAD, 8, FLOOD_PAUSE).await {
        checker.add("slow consumer", None, e);
    }
    let (read, end) = load::read_until_close(&mut slow, "flood", Duration::from_secs(30)).await;
    note(
        journal,
        n,
        format!(
            "{count} messages of {FLOOD_PAD} B; {user} on {} read {} then {end:?}",
            node.id,
            read.len()
        ),
    );
    if !matches!(end, Some(Ended::Code(4009, _))) {
        checker.add(
            "slow consumer",
            None,
            format!("{user} on {} ended {end:?} instead of 4009", node.id),
        );
    }
    match reader.await {
        Ok((got, end)) => {
            if !check::seqs_in_order(&got, count) {
                checker.add(
                    "slow consumer",
                    None,
                    format!(
                        "the control reader on {} got {} of {count} flood messages (in order: {}; end {end:?})",
                        ctl_node.id,
                        got.len(),
                        got.windows(2).all(|w| w[0] < w[1])
                    ),
                );
            }
        }
        Err(e) => checker.add("slow consumer", None, format!("control reader: {e}")),
    }
}

/// Enough flood to overflow the slow client: what the kernel may buffer
/// on both ends plus the node's queue, with a margin.
fn flood_count() -> u64 {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let bytes = wmem_max + 4 * SLOW_RCVBUF as usize + rig::QUEUE_BYTES + (256 << 10);
    (bytes / FLOOD_PAD * 5 / 4) as u64
}
