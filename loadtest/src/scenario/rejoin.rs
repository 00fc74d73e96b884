//! `churn --reconnect` / `--recover`: churn connections that are clients
//! coming back, measured across their connections.
//!
//! C clients (`ChurnArgs::reconnecting_clients`: enough that about
//! `--churn-rate` of them reconnect per second) subscribe before the first
//! publish, like the stable subscribers, and each is owed every message of
//! the run. While the publishers run, a client leaves after `--churn-hold`
//! (the first time at a staggered moment), stays away `--churn-away` and
//! comes back — with `--recover`, subscribing with `since` = the last
//! (epoch, offset) it saw. Once publishing is over every client comes back
//! one last time and stays until the drain ends.
//!
//! A client accounts every arrival of all its connections in one
//! [`Track`], by the stream id and sequence number in the payload: a
//! message published while it was away and replayed counts as received, a
//! message received before leaving and again in the replay is a
//! duplicate, one neither received nor replayed is a loss. The `recovered`
//! flag of every resubscribe with `since` is counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::cli::ChurnArgs;
use crate::conn::{Conn, ConnEnd, ConnSpec, RunCtx, Track};
use crate::report::{ChurnReport, RecoveryReport, count_error};
use crate::tally::{Expect, Tally};

/// Wait between attempts to come back once publishing is over (a failed
/// attempt while publishing waits `--churn-away` instead).
const RETRY_SETTLING: Duration = Duration::from_millis(200);

/// What every client shares.
struct Shared {
    tally: Arc<Tally>,
    counts: Mutex<Counts>,
    /// Cancelled when the publishers start: the clients begin to cycle.
    go: CancellationToken,
    /// Cancelled when publishing is over: come back and stay.
    settle: CancellationToken,
    /// Cancelled at the end: close.
    stop: CancellationToken,
    hold: Duration,
    away: Duration,
    /// Whether a returning client sends `since`.
    recover: bool,
    deadline: Instant,
}

#[derive(Default)]
struct Counts {
    churn: ChurnReport,
    recovery: RecoveryReport,
}

impl Shared {
    fn bump(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The reconnecting clients of one process.
pub(super) struct Rejoiners {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Rejoiners {
    /// Opens this process's share of the clients (first subscribes, no
    /// `since`) and starts them; they cycle only after [`Rejoiners::go`].
    pub(super) async fn open(ctx: &Ctx, a: &ChurnArgs, room: &str) -> anyhow::Result<Rejoiners> {
        let total = a.reconnecting_clients();
        let mut specs = Vec::new();
        for i in ctx.share(total) {
            // Numbered after every stable subscriber, so indexes never collide.
            let index = a.subscribers + i;
            let spec = ctx.spec(
                index,
                &ctx.name("back", i),
                vec![room.to_owned()],
                Expect::All,
            )?;
            // Staggered over one cycle so that about --churn-rate leave
            // (and come back) per second.
            let first_leave = Duration::from_secs_f64((i as f64 + 1.0) / a.churn_rate);
            specs.push((spec, first_leave));
        }
        let shared = Arc::new(Shared {
            tally: Arc::new(Tally::default()),
            counts: Mutex::new(Counts {
                churn: ChurnReport {
                    rate: a.churn_rate / ctx.coord.count as f64,
                    ..ChurnReport::default()
                },
                recovery: RecoveryReport {
                    since: a.recover,
                    clients: specs.len() as u64,
                    ..RecoveryReport::default()
                },
            }),
            go: CancellationToken::new(),
            settle: CancellationToken::new(),
            stop: CancellationToken::new(),
            hold: a.churn_hold,
            away: a.churn_away,
            recover: a.recover,
            deadline: ctx.deadline,
        });
        let gate = Arc::new(Semaphore::new(ctx.common.connect_concurrency.max(1)));
        let mut opening = JoinSet::new();
        for (spec, first_leave) in specs {
            let gate = gate.clone();
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let opened = Conn::open(&spec).await;
                (spec, first_leave, opened)
            });
        }
        let mut tasks = JoinSet::new();
        let until = ctx.deadline;
        while let Ok(Some(joined)) = tokio::time::timeout_at(until, opening.join_next()).await {
            let Ok((spec, first_leave, opened)) = joined else {
                continue;
            };
            match opened {
                Ok(conn) => {
                    shared.bump(|c| {
                        c.churn.opened += 1;
                        c.recovery.opened += 1;
                    });
                    let mut track = Track::new(Expect::All);
                    track.joined(conn.joined());
                    let client = Client {
                        spec,
                        first_leave,
                        track,
                        shared: shared.clone(),
                    };
                    tasks.spawn(client.run(conn));
                }
                Err(e) => shared.bump(|c| {
                    c.churn.failed += 1;
                    count_error(&mut c.churn.errors, e.to_string());
                }),
            }
        }
        let missing = opening.len() as u64;
        if missing > 0 {
            shared.bump(|c| {
                c.churn.failed += missing;
                count_error(
                    &mut c.churn.errors,
                    "not opened before the run's deadline".into(),
                );
            });
        }
        opening.abort_all();
        Ok(Rejoiners { shared, tasks })
    }

    /// The clients that opened: each is owed every accepted publish.
    pub(super) fn opened(&self) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recovery
            .opened
    }

    /// Their deliveries.
    pub(super) fn tally(&self) -> &Tally {
        &self.shared.tally
    }

    /// Publishing starts: the clients begin to leave and come back.
    pub(super) fn go(&self) {
        self.shared.go.cancel();
    }

    /// Publishing is over: every client comes back (if away) and stays.
    pub(super) fn settle(&self) {
        self.shared.settle.cancel();
    }

    /// Closes every client (waiting at most `wait`) and returns the churn
    /// counts and the recovery counts; `recovery.delivery` has the
    /// received side filled in, the caller fills in what was owed.
    pub(super) async fn finish(mut self, wait: Duration) -> (ChurnReport, RecoveryReport) {
        self.shared.settle.cancel();
        self.shared.stop.cancel();
        let until = Instant::now() + wait;
        while let Ok(Some(_)) = tokio::time::timeout_at(until, self.tasks.join_next()).await {}
        self.tasks.abort_all();
        let c = self.shared.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut churn = c.churn.clone();
        let mut recovery = c.recovery.clone();
        let counts = self.shared.tally.counts();
        churn.received = counts.received;
        recovery.delivery.received = counts.received;
        recovery.delivery.duplicates = counts.duplicates;
        recovery.delivery.order_violations = counts.order_violations;
        recovery.delivery.unexpected = counts.unexpected;
        recovery.delivery.last_us = counts.last_delivery_us;
        (churn, recovery)
    }
}

/// One client: its connection spec, its schedule and what it saw.
struct Client {
    spec: ConnSpec,
    /// When it first leaves, after the publishers start.
    first_leave: Duration,
    track: Track,
    shared: Arc<Shared>,
}

impl Client {
    /// Runs the client from its first connection until the end.
    async fn run(mut self, first: Conn) {
        let sh = self.shared.clone();
        let mut conn = Some(first);
        let mut leave_at: Option<Instant> = None;
        loop {
            if let Some(c) = conn.take() {
                let end = self.hold(c, leave_at).await;
                sh.bump(|c| match end {
                    ConnEnd::Stopped => c.churn.closed += 1,
                    _ => c.churn.dropped += 1,
                });
                if sh.stop.is_cancelled() {
                    break;
                }
            }
            // Away (not once publishing is over: then come back at once).
            tokio::select! {
                biased;
                () = sh.stop.cancelled() => break,
                () = sh.settle.cancelled() => {}
                () = tokio::time::sleep(sh.away) => {}
            }
            if Instant::now() >= sh.deadline {
                break;
            }
            match self.come_back().await {
                Back::Open(c) => {
                    leave_at = Some(Instant::now() + sh.hold);
                    conn = Some(*c);
                }
                Back::Failed => {
                    // Try again: after --churn-away while publishing (the
                    // loop's wait), after a short pause once settling.
                    if sh.settle.is_cancelled() {
                        tokio::select! {
                            () = sh.stop.cancelled() => break,
                            () = tokio::time::sleep(RETRY_SETTLING) => {}
                        }
                    }
                }
                Back::Ended => break,
            }
        }
    }

    /// Runs one connection until it is time to leave (never once publishing
    /// is over), the end of the run, or the server ends it.
    async fn hold(&mut self, conn: Conn, leave_at: Option<Instant>) -> ConnEnd {
        let sh = self.shared.clone();
        let stop = sh.stop.child_token();
        let ctx = RunCtx {
            tally: sh.tally.clone(),
            stop: stop.clone(),
            ping_every: None,
        };
        let first_leave = self.first_leave;
        let leave = async {
            let at = match leave_at {
                Some(at) => at,
                None => tokio::select! {
                    biased;
                    () = sh.settle.cancelled() => return false,
                    () = sh.go.cancelled() => Instant::now() + first_leave,
                },
            };
            tokio::select! {
                biased;
                () = sh.settle.cancelled() => false,
                () = tokio::time::sleep_until(at) => true,
            }
        };
        let end = {
            let run = conn.run_tracked(ctx, &mut self.track);
            tokio::pin!(run, leave);
            tokio::select! {
                end = &mut run => end,
                true = &mut leave => {
                    stop.cancel();
                    run.await
                }
            }
        };
        let replayed = std::mem::take(&mut self.track.replayed);
        sh.bump(|c| c.recovery.replayed += replayed);
        end
    }

    /// Opens and subscribes again (with `since` when recovering).
    async fn come_back(&mut self) -> Back {
        let sh = self.shared.clone();
        self.spec.since = if sh.recover {
            self.track.position.clone()
        } else {
            None
        };
        let no_position = sh.recover && self.spec.since.is_none();
        let opened = tokio::select! {
            () = sh.stop.cancelled() => return Back::Ended,
            opened = Conn::open(&self.spec) => opened,
        };
        match opened {
            Ok(conn) => {
                let since = self.spec.since.is_some();
                let recovered = conn.joined().recovered;
                sh.bump(|c| {
                    c.churn.opened += 1;
                    c.recovery.reconnects += 1;
                    if no_position {
                        c.recovery.no_position += 1;
                    }
                    if since {
                        if recovered == Some(true) {
                            c.recovery.recovered += 1;
                        } else {
                            c.recovery.not_recovered += 1;
                        }
                    }
                });
                self.track.joined(conn.joined());
                Back::Open(Box::new(conn))
            }
            Err(e) => {
                sh.bump(|c| {
                    c.churn.failed += 1;
                    c.recovery.reconnect_failed += 1;
                    count_error(&mut c.churn.errors, e.to_string());
                });
                Back::Failed
            }
        }
    }
}

/// How an attempt to come back went.
enum Back {
    /// Connected and subscribed again.
    Open(Box<Conn>),
    /// Could not (counted); the client tries again.
    Failed,
    /// The run ended meanwhile.
    Ended,
}
