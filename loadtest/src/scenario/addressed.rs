//! The part `rooms` and `users` share: connections that each expect the
//! streams of one destination (their room's or their user's), publishers
//! that pick a random destination among those this process owns, and loss
//! computed per connection from what was accepted for its streams. With a
//! ramp (`rooms --ramp`) the publishing is [`ramp::steps`], each step on
//! streams of its own ([`step_stream`]).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::ramp::{self, StepLoad};
use super::{CLOSE_WAIT, Ctx, fill_delivery, fill_ends};
use crate::cli::{Load, RampArgs};
use crate::conn::{ConnSpec, RunCtx};
use crate::pool::Pool;
use crate::publish::{Outcome, Route};
use crate::report::Report;
use crate::tally::{Tally, step_stream};

/// Connections and destinations of one process.
pub(super) struct Addressed<F: Fn(usize) -> Route> {
    /// The connections, each expecting one destination's streams.
    pub(super) specs: Vec<ConnSpec>,
    /// The destination (its stream at step 0) each spec expects (same order
    /// as `specs`).
    pub(super) streams: Vec<u64>,
    /// Destinations this process publishes to.
    pub(super) routes: usize,
    /// Destination j (of `routes`).
    pub(super) route: F,
}

/// Opens the connections, publishes `load` once or, with `ramp`, in steps
/// of rising rate, and accounts what arrived.
pub(super) async fn run<F: Fn(usize) -> Route>(
    ctx: &mut Ctx,
    load: &Load,
    ramp: Option<&RampArgs>,
    setup: Addressed<F>,
    report: &mut Report,
) -> anyhow::Result<()> {
    if let Some(r) = ramp {
        ramp::check(r)?;
    }
    let Addressed {
        specs,
        streams,
        routes,
        route,
    } = setup;
    let tally = Arc::new(Tally::default());
    let run = RunCtx {
        tally: tally.clone(),
        stop: CancellationToken::new(),
        ping_every: None,
    };
    let pool = Pool::open(specs, run, ctx.pace(), ctx.deadline).await;
    report.connections = pool.connect.clone();
    let dests = Dests {
        load,
        streams: &streams,
        opened: &pool.opened,
        routes,
        route: &route,
    };
    let result = match ramp {
        Some(r) => ramp::steps(ctx, r, load.rate, &tally, &dests, report).await,
        None => once(ctx, &dests, &tally, report).await,
    };
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}

/// `--publishes` at `--rate`, then the drain.
async fn once<F: Fn(usize) -> Route>(
    ctx: &mut Ctx,
    dests: &Dests<'_, F>,
    tally: &Tally,
    report: &mut Report,
) -> anyhow::Result<()> {
    ctx.coord.exchange("ready", &(), ctx.deadline).await?;
    let cpu = ctx.cpu_window(report);
    let count = ctx.share_u64(dests.load.publishes);
    let (outcome, expected) = dests.publish(ctx, 0, dests.load.rate, count).await?;
    ctx.drain(tally, expected).await;
    if let Some(cpu) = cpu {
        cpu.finish(report);
    }
    fill_delivery(report, &outcome, tally.counts(), expected, tally)
}

/// The destinations of this process and who expects them.
struct Dests<'a, F> {
    load: &'a Load,
    streams: &'a [u64],
    opened: &'a [bool],
    routes: usize,
    route: &'a F,
}

impl<F: Fn(usize) -> Route> StepLoad for Dests<'_, F> {
    async fn publish(
        &self,
        ctx: &mut Ctx,
        step: u64,
        rate: f64,
        count: u64,
    ) -> anyhow::Result<(Outcome, u64)> {
        let plans = ctx.plans(self.load, count, rate, self.routes, |j| {
            let r = (self.route)(j);
            Route {
                stream: step_stream(r.stream, step),
                ..r
            }
        });
        let outcome = ctx.api.run_all(plans, ctx.publish_deadline()).await;
        // Each connection that opened is owed what was accepted for its
        // destination in this step.
        let expected = self
            .streams
            .iter()
            .zip(self.opened)
            .filter(|(_, opened)| **opened)
            .map(|(s, _)| {
                outcome
                    .accepted
                    .get(&step_stream(*s, step))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        Ok((outcome, expected))
    }
}
