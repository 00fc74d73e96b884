//! `churn`: a fan-out into one room while other connections join the same
//! room and leave at a set rate. The stable subscribers are measured as in
//! `fanout` (membership changing under a broadcast must not cost them a
//! message, a duplicate or order); the churn connections are counted
//! (opened, failed, dropped) but owed nothing, since they come and go.
//!
//! With `--reconnect` or `--recover` the churn connections are instead a
//! fixed set of clients that leave and come back ([`super::rejoin`]); they
//! are owed every message, accounted across their connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fanout::{check_load, subscribe};
use super::rejoin::Rejoiners;
use super::{CLOSE_WAIT, Ctx, fill_delivery, fill_ends};
use crate::cli::ChurnArgs;
use crate::conn::{Conn, ConnEnd, ConnSpec, RunCtx};
use crate::pool::Pool;
use crate::publish::{Address, Route};
use crate::report::{ChurnReport, Report, count_error};
use crate::tally::{Expect, Tally};

/// Runs `churn`: the stable subscribers' fan-out under fresh churn
/// connections, or under reconnecting clients (`--reconnect`, `--recover`).
pub(super) async fn run(ctx: &mut Ctx, a: &ChurnArgs, report: &mut Report) -> anyhow::Result<()> {
    ensure!(a.subscribers > 0, "--subscribers must be at least 1");
    ensure!(a.churn_rate > 0.0, "--churn-rate must be above 0");
    check_load(&a.load)?;
    ensure!(
        !a.reconnecting() || !a.churn_away.is_zero(),
        "--churn-away must be above 0"
    );
    let room = ctx.name("room", 0);
    let (pool, tally) = subscribe(ctx, &room, a.subscribers, "sub").await?;
    report.connections = pool.connect.clone();

    let mut rejoiners = None;
    let mut published = 0;
    let result = measure(
        ctx,
        a,
        (&room, &pool, &tally),
        &mut rejoiners,
        &mut published,
        report,
    )
    .await;
    if let Some(r) = rejoiners {
        let (churn, mut recovery) = r.finish(CLOSE_WAIT + Duration::from_secs(1)).await;
        // Owed: every publish accepted in the run, to every client that opened.
        recovery.delivery.expected = published * recovery.opened;
        recovery.delivery.first_us = report.publish.as_ref().map_or(0, |p| p.first_us);
        report.churn = Some(churn);
        report.recovery = Some(recovery);
    }
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}

/// Publishes while the churn runs and measures; sets `published` to the
/// publishes accepted in the whole run (all processes).
async fn measure(
    ctx: &mut Ctx,
    a: &ChurnArgs,
    (room, pool, tally): (&str, &Pool, &Tally),
    rejoiners: &mut Option<Rejoiners>,
    published: &mut u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    if a.reconnecting() {
        *rejoiners = Some(Rejoiners::open(ctx, a, room).await?);
    }
    ctx.coord.exchange("ready", &(), ctx.deadline).await?;
    let cpu = ctx.cpu_window(report);
    let churn = match rejoiners {
        Some(r) => {
            r.go();
            None
        }
        None => Some(Churn::start(ctx, a, room)?),
    };
    let count = ctx.share_u64(a.load.publishes);
    let plans = ctx.plans(&a.load, count, a.load.rate, a.load.publishers, |k| Route {
        to: Address::Room(room.to_owned()),
        stream: ctx.stream_id(k as u64),
    });
    let outcome = ctx.api.run_all(plans, ctx.publish_deadline()).await;
    if let Some(churn) = churn {
        report.churn = Some(churn.finish(a.churn_hold + Duration::from_secs(3)).await);
    }
    if let Some(r) = rejoiners {
        r.settle();
    }
    let all: Vec<u64> = ctx
        .coord
        .exchange("published", &outcome.report.accepted, ctx.deadline)
        .await?;
    let total: u64 = all.iter().sum();
    *published = total;
    let expected = total * pool.connect.connected;
    match rejoiners {
        Some(r) => {
            ctx.drain_all(&[(tally, expected), (r.tally(), total * r.opened())])
                .await;
        }
        None => ctx.drain(tally, expected).await,
    }
    if let Some(cpu) = cpu {
        cpu.finish(report);
    }
    fill_delivery(report, &outcome, tally.counts(), expected, tally)
}

/// The churn loop running beside the publishers.
struct Churn {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<JoinSet<()>>,
    stats: Arc<Mutex<ChurnReport>>,
    tally: Arc<Tally>,
}

impl Churn {
    fn start(ctx: &Ctx, a: &ChurnArgs, room: &str) -> anyhow::Result<Churn> {
        let rate = a.churn_rate / ctx.coord.count as f64;
        let stats = Arc::new(Mutex::new(ChurnReport {
            rate,
            ..ChurnReport::default()
        }));
        let tally = Arc::new(Tally::default());
        let stop = CancellationToken::new();
        // Churn connections are numbered after every stable subscriber and
        // interleaved between processes, so their indexes never collide.
        let mut specs = Vec::new();
        // As many as the publishing lasts (the loop stops with it), never
        // more than --duration allows.
        let publishing = a.load.publishes as f64 / a.load.rate + 1.0;
        let span = publishing.min(ctx.common.duration.as_secs_f64());
        let planned = (rate * span).ceil() as usize + 1;
        for n in 0..planned {
            let index = a.subscribers + n * ctx.coord.count + ctx.coord.index;
            specs.push(ctx.spec(
                index,
                &ctx.name("churn", index),
                vec![room.to_owned()],
                Expect::All,
            )?);
        }
        let period = Duration::from_secs_f64(1.0 / rate);
        let hold = a.churn_hold;
        let deadline = ctx.deadline;
        let task = tokio::spawn(churn_loop(ChurnLoop {
            specs,
            period,
            hold,
            deadline,
            stop: stop.clone(),
            stats: stats.clone(),
            tally: tally.clone(),
        }));
        Ok(Churn {
            stop,
            task,
            stats,
            tally,
        })
    }

    /// Stops opening churn connections, lets the open ones finish their hold
    /// (bounded by `wait`), and returns the counts.
    async fn finish(self, wait: Duration) -> ChurnReport {
        self.stop.cancel();
        if let Ok(mut set) = self.task.await {
            let until = Instant::now() + wait;
            while let Ok(Some(_)) = tokio::time::timeout_at(until, set.join_next()).await {}
            set.abort_all();
        }
        let mut out = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.received = self.tally.received();
        out
    }
}

struct ChurnLoop {
    specs: Vec<ConnSpec>,
    period: Duration,
    hold: Duration,
    deadline: Instant,
    stop: CancellationToken,
    stats: Arc<Mutex<ChurnReport>>,
    tally: Arc<Tally>,
}

async fn churn_loop(l: ChurnLoop) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let start = Instant::now();
    for (n, spec) in l.specs.into_iter().enumerate() {
        let due = start + l.period.mul_f64(n as f64);
        if due >= l.deadline {
            break;
        }
        tokio::select! {
            _ = l.stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let stats = l.stats.clone();
        let tally = l.tally.clone();
        let hold = l.hold;
        set.spawn(async move { churn_one(spec, hold, tally, stats).await });
        // Reap finished ones so the set does not grow with the run.
        while set.try_join_next().is_some() {}
    }
    set
}

/// One churn connection: open, stay `hold`, leave.
async fn churn_one(
    spec: ConnSpec,
    hold: Duration,
    tally: Arc<Tally>,
    stats: Arc<Mutex<ChurnReport>>,
) {
    let bump =
        |f: &dyn Fn(&mut ChurnReport)| f(&mut stats.lock().unwrap_or_else(|p| p.into_inner()));
    let conn = match Conn::open(&spec).await {
        Ok(c) => c,
        Err(e) => {
            bump(&|s| {
                s.failed += 1;
                count_error(&mut s.errors, e.to_string());
            });
            return;
        }
    };
    bump(&|s| s.opened += 1);
    let stop = CancellationToken::new();
    let run = conn.run(RunCtx {
        tally,
        stop: stop.clone(),
        ping_every: None,
    });
    tokio::pin!(run);
    let end = tokio::select! {
        end = &mut run => end,
        _ = tokio::time::sleep(hold) => {
            stop.cancel();
            run.await
        }
    };
    match end {
        ConnEnd::Stopped => bump(&|s| s.closed += 1),
        _ => bump(&|s| s.dropped += 1),
    }
}
