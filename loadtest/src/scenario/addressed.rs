//! The part `rooms` and `users` share: connections that each expect one
//! stream (their room's or their user's), publishers that pick a random
//! destination among those this process owns, and loss computed per
//! connection from what was accepted for its stream.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{CLOSE_WAIT, Ctx, fill_delivery, fill_ends};
use crate::cli::Load;
use crate::conn::{ConnSpec, RunCtx};
use crate::pool::Pool;
use crate::publish::Route;
use crate::report::Report;
use crate::tally::Tally;

/// Connections and destinations of one process.
pub(super) struct Addressed<F: Fn(usize) -> Route> {
    /// The connections, each expecting one stream.
    pub(super) specs: Vec<ConnSpec>,
    /// The stream each spec expects (same order as `specs`).
    pub(super) streams: Vec<u64>,
    /// Destinations this process publishes to.
    pub(super) routes: usize,
    /// Destination j (of `routes`).
    pub(super) route: F,
}

pub(super) async fn run<F: Fn(usize) -> Route>(
    ctx: &mut Ctx,
    load: &Load,
    setup: Addressed<F>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tally = Arc::new(Tally::default());
    let run = RunCtx {
        tally: tally.clone(),
        stop: CancellationToken::new(),
        ping_every: None,
    };
    let pool = Pool::open(setup.specs, run, ctx.pace(), ctx.deadline).await;
    report.connections = pool.connect.clone();

    let result: anyhow::Result<()> = async {
        ctx.coord.exchange("ready", &(), ctx.deadline).await?;
        let cpu = ctx.cpu_window(report);
        let count = ctx.share_u64(load.publishes);
        let plans = ctx.plans(load, count, load.rate, setup.routes, &setup.route);
        let outcome = ctx.api.run_all(plans, ctx.publish_deadline()).await;
        let expected: u64 = setup
            .streams
            .iter()
            .zip(&pool.opened)
            .filter(|(_, opened)| **opened)
            .map(|(s, _)| outcome.accepted.get(s).copied().unwrap_or(0))
            .sum();
        ctx.drain(&tally, expected).await;
        if let Some(cpu) = cpu {
            cpu.finish(report);
        }
        fill_delivery(report, &outcome, tally.counts(), expected, &tally)
    }
    .await;
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}
