//! `idle`: C connections, each subscribed to a room, held open with pings
//! running. Measures what a connection costs a node at rest: resident
//! memory (VmRSS before any connection and after all of them, over the
//! `--node-pid` processes) and CPU over `--hold` (utime + stime).
//!
//! The leader (process 0) takes the node measures; the "begin" exchange
//! makes sure nobody connects before the "before" reading, and the
//! "connected" exchange that nobody is still connecting at the "after" one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CLOSE_WAIT, Ctx, fill_ends};
use crate::cli::IdleArgs;
use crate::conn::RunCtx;
use crate::pool::Pool;
use crate::procstat;
use crate::report::{Report, ServerReport, round2};
use crate::tally::{Expect, Tally};

pub(super) async fn run(ctx: &mut Ctx, a: &IdleArgs, report: &mut Report) -> anyhow::Result<()> {
    ensure!(a.connections > 0, "--connections must be at least 1");
    ensure!(a.rooms > 0, "--rooms must be at least 1");
    let pids = ctx.common.node_pids.clone();
    let measure = ctx.coord.is_leader() && !pids.is_empty();
    let rss_before = if measure {
        procstat::rss_kib_sum(&pids).context("--node-pid")?
    } else {
        0
    };
    ctx.coord.exchange("begin", &(), ctx.deadline).await?;

    let mut specs = Vec::new();
    for i in ctx.share(a.connections) {
        let room = ctx.name("room", i % a.rooms);
        specs.push(ctx.spec(i, &ctx.name("idle", i), vec![room], Expect::All)?);
    }
    let run = RunCtx {
        tally: Arc::new(Tally::default()),
        stop: CancellationToken::new(),
        ping_every: (!a.ping_every.is_zero()).then_some(a.ping_every),
    };
    let pool = Pool::open(specs, run, ctx.pace(), ctx.deadline).await;
    report.connections = pool.connect.clone();

    let result: anyhow::Result<()> = async {
        let connected: Vec<u64> = ctx
            .coord
            .exchange("connected", &pool.connect.connected, ctx.deadline)
            .await?;
        let connected: u64 = connected.iter().sum();
        // Settle, then hold; both cut short by the deadline (with room to close).
        let end = ctx.deadline - Duration::from_secs(1).min(ctx.common.duration / 4);
        let settle_until = (Instant::now() + a.settle).min(end);
        tokio::time::sleep_until(settle_until).await;
        if measure {
            let rss_after = procstat::rss_kib_sum(&pids)?;
            let hold_until = (Instant::now() + a.hold).min(end);
            let t0 = Instant::now();
            let ticks0 = procstat::cpu_ticks_sum(&pids)?;
            tokio::time::sleep_until(hold_until).await;
            let ticks1 = procstat::cpu_ticks_sum(&pids)?;
            let hold = t0.elapsed().as_secs_f64();
            let cpu_secs = ticks1.saturating_sub(ticks0) as f64 / procstat::TICKS_PER_SEC;
            report.server = Some(ServerReport {
                pids: pids.clone(),
                rss_before_kib: rss_before,
                rss_after_kib: rss_after,
                connections: connected,
                rss_per_connection_bytes: if connected > 0 {
                    round2(rss_after.saturating_sub(rss_before) as f64 * 1024.0 / connected as f64)
                } else {
                    0.0
                },
                hold_secs: round2(hold),
                cpu_percent: if hold > 0.0 {
                    round2(cpu_secs / hold * 100.0)
                } else {
                    0.0
                },
            });
        } else if ctx.coord.is_leader() {
            tokio::time::sleep_until((Instant::now() + a.hold).min(end)).await;
        }
        // Everyone holds until the leader has measured.
        ctx.coord.exchange("held", &(), ctx.deadline).await?;
        Ok(())
    }
    .await;
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}
