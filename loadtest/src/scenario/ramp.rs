//! `fanout --ramp`: the same room and subscribers as `fanout`, published to
//! in steps of rising rate, to find the highest rate at which a step loses
//! nothing, duplicates nothing, keeps order and keeps p99 under the bound.
//!
//! Every step uses fresh stream ids and ends with a drain, so its counts
//! stand alone. After each step every process shares its raw step counts
//! and histogram, and each computes the same merged verdict — so all
//! processes stop at the same step without a coordinator deciding.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::fanout::{check_load, subscribe};
use super::{CLOSE_WAIT, Ctx, fill_delivery, fill_ends};
use crate::cli::FanoutArgs;
use crate::latency::{self, LatencySummary};
use crate::pool::Pool;
use crate::publish::{Address, Outcome, Route};
use crate::report::{RampReport, RampStep, Report, round2};
use crate::tally::Tally;

/// A step's raw measures in one process.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StepPart {
    accepted: u64,
    publish_first_us: u64,
    publish_last_us: u64,
    expected: u64,
    received: u64,
    duplicates: u64,
    order_violations: u64,
    last_delivery_us: u64,
    histogram: String,
}

/// Smallest share of the target rate a step must achieve to count: below
/// it, the generator (not the node) was the limit.
const MIN_ACHIEVED: f64 = 0.9;

pub(super) async fn run(ctx: &mut Ctx, a: &FanoutArgs, report: &mut Report) -> anyhow::Result<()> {
    anyhow::ensure!(a.subscribers > 0, "--subscribers must be at least 1");
    anyhow::ensure!(a.ramp_factor > 1.0, "--ramp-factor must be above 1");
    anyhow::ensure!(!a.step.is_zero(), "--step must be above 0");
    check_load(&a.load)?;
    let room = ctx.name("room", 0);
    let (pool, tally) = subscribe(ctx, &room, a.subscribers, "sub").await?;
    report.connections = pool.connect.clone();
    let result = steps(ctx, a, &room, &pool, &tally, report).await;
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}

async fn steps(
    ctx: &mut Ctx,
    a: &FanoutArgs,
    room: &str,
    pool: &Pool,
    tally: &Tally,
    report: &mut Report,
) -> anyhow::Result<()> {
    ctx.coord.exchange("ready", &(), ctx.deadline).await?;
    let mut ramp = RampReport {
        p99_bound_ms: a.p99_bound_ms,
        ..RampReport::default()
    };
    let mut total = Outcome {
        complete: true,
        ..Outcome::default()
    };
    let mut all_latency = latency::new_histogram();
    let mut total_expected = 0;
    let start_counts = tally.counts();
    let mut rate = a.load.rate;
    let mut step_no: u64 = 0;
    while rate <= a.max_rate {
        if Instant::now() + a.step + ctx.common.drain >= ctx.deadline {
            report.complete = false;
            report
                .error("--duration ended the ramp before a step failed or --max-rate was reached");
            break;
        }
        let count = ctx.share_u64((rate * a.step.as_secs_f64()).ceil() as u64);
        let plans = ctx.plans(&a.load, count, rate, a.load.publishers, |k| Route {
            to: Address::Room(room.to_owned()),
            stream: ctx.stream_id((step_no << 16) | k as u64),
        });
        let before = tally.counts();
        let outcome = ctx.api.run_all(plans, ctx.publish_deadline()).await;
        let published: Vec<u64> = ctx
            .coord
            .exchange(
                &format!("published-{step_no}"),
                &outcome.report.accepted,
                ctx.deadline,
            )
            .await?;
        let expected = published.iter().sum::<u64>() * pool.connect.connected;
        ctx.drain(tally, before.received + expected).await;
        let counts = tally.counts().since(&before);
        let h = tally.take_latency();
        latency::merge(&mut all_latency, &h);
        let part = StepPart {
            accepted: outcome.report.accepted,
            publish_first_us: outcome.report.first_us,
            publish_last_us: outcome.report.last_us,
            expected,
            received: counts.received,
            duplicates: counts.duplicates,
            order_violations: counts.order_violations,
            last_delivery_us: counts.last_delivery_us,
            histogram: latency::to_base64(&h)?,
        };
        let parts: Vec<StepPart> = ctx
            .coord
            .exchange(&format!("step-{step_no}"), &part, ctx.deadline)
            .await?;
        let step = verdict(rate, a.p99_bound_ms, &parts)?;
        total_expected += expected;
        total.merge(outcome);
        let pass = step.pass;
        ramp.steps.push(step);
        if !pass {
            break;
        }
        ramp.best_rate = Some(rate);
        rate *= a.ramp_factor;
        step_no += 1;
    }
    let counts = tally.counts().since(&start_counts);
    fill_delivery(report, &total, counts, total_expected, tally)?;
    if let (Some(p), Some(last)) = (&mut report.publish, ramp.steps.last()) {
        // Summed over the steps the target rate means nothing; report the
        // last step's (this process's share, so that the merge adds up).
        p.target_rate = last.rate / ctx.coord.count as f64;
    }
    // The steps took their histograms from the tally; the run's is their sum.
    report.histogram = Some(latency::to_base64(&all_latency)?);
    report.ramp = Some(ramp);
    Ok(())
}

/// Merges every process's part of a step and judges it.
fn verdict(rate: f64, p99_bound_ms: f64, parts: &[StepPart]) -> anyhow::Result<RampStep> {
    let mut h: Histogram<u64> = latency::new_histogram();
    let mut step = RampStep {
        rate: round2(rate),
        ..RampStep::default()
    };
    let (mut pub_first, mut pub_last, mut last_delivery) = (u64::MAX, 0, 0);
    for p in parts {
        latency::merge(&mut h, &latency::from_base64(&p.histogram)?);
        step.accepted += p.accepted;
        step.expected += p.expected;
        step.received += p.received;
        step.duplicates += p.duplicates;
        step.order_violations += p.order_violations;
        if p.publish_first_us > 0 {
            pub_first = pub_first.min(p.publish_first_us);
        }
        pub_last = pub_last.max(p.publish_last_us);
        last_delivery = last_delivery.max(p.last_delivery_us);
    }
    step.loss = step.expected.saturating_sub(step.received);
    step.latency_ms = LatencySummary::of(&h);
    let secs = |end: u64| end.saturating_sub(pub_first) as f64 / 1e6;
    if pub_first != u64::MAX {
        if secs(pub_last) > 0.0 {
            step.achieved_rate = round2(step.accepted as f64 / secs(pub_last));
        }
        if secs(last_delivery) > 0.0 {
            step.deliveries_per_sec = round2(step.received as f64 / secs(last_delivery));
        }
    }
    let mut reasons = Vec::new();
    if step.loss > 0 {
        reasons.push(format!("lost {}", step.loss));
    }
    if step.duplicates > 0 || step.order_violations > 0 {
        reasons.push(format!(
            "{} duplicates, {} out of order",
            step.duplicates, step.order_violations
        ));
    }
    if step.latency_ms.p99 > p99_bound_ms {
        reasons.push(format!(
            "p99 {:.2} ms over {p99_bound_ms} ms",
            step.latency_ms.p99
        ));
    }
    if step.achieved_rate < rate * MIN_ACHIEVED {
        reasons.push(format!(
            "publishers reached only {:.1}/s (add --publishers or --procs)",
            step.achieved_rate
        ));
    }
    step.pass = reasons.is_empty();
    step.reason = reasons.join("; ");
    Ok(step)
}
