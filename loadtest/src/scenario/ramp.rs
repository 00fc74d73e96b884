//! The ramp: publishes in steps of rising rate, to find the highest rate at
//! which a step loses nothing, duplicates nothing, keeps order, keeps p99
//! under the bound and gets at least 90 % of its rate accepted (below that
//! the node, or the generator, could not keep up with the offered rate).
//!
//! The step loop ([`steps`]) is shared; what one step publishes is the
//! scenario's ([`StepLoad`]): `fanout --ramp` publishes into its one room
//! ([`run`]), `rooms --ramp` into its many small rooms
//! (`addressed::run`).
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
use crate::cli::{FanoutArgs, Load, RampArgs};
use crate::latency::{self, LatencySummary};
use crate::procstat;
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
    /// CPU ticks the `--node-pid` processes used in the step (leader only).
    #[serde(default)]
    node_cpu_ticks: Option<u64>,
    /// CPU ticks the `--redis-pid` processes used in the step (leader only).
    #[serde(default)]
    redis_cpu_ticks: Option<u64>,
}

/// Smallest share of the target rate a step must achieve to count: below
/// it, the generator (not the node) was the limit.
const MIN_ACHIEVED: f64 = 0.9;

/// What one ramp step publishes.
pub(super) trait StepLoad {
    /// Publishes step `step`: `count` publishes (this process's share) at
    /// `rate` per second over all processes, on streams of their own (a
    /// step's sequence numbers start afresh). Returns what publishing
    /// produced and the deliveries this process's connections are owed.
    async fn publish(
        &self,
        ctx: &mut Ctx,
        step: u64,
        rate: f64,
        count: u64,
    ) -> anyhow::Result<(Outcome, u64)>;
}

/// Refuses ramp flags that could not end (checked before connecting).
pub(super) fn check(r: &RampArgs) -> anyhow::Result<()> {
    anyhow::ensure!(r.ramp_factor > 1.0, "--ramp-factor must be above 1");
    anyhow::ensure!(!r.step.is_zero(), "--step must be above 0");
    Ok(())
}

/// `fanout --ramp`: one room of `--subscribers`.
pub(super) async fn run(ctx: &mut Ctx, a: &FanoutArgs, report: &mut Report) -> anyhow::Result<()> {
    anyhow::ensure!(a.subscribers > 0, "--subscribers must be at least 1");
    check(&a.ramp)?;
    check_load(&a.load)?;
    let room = ctx.name("room", 0);
    let (pool, tally) = subscribe(ctx, &room, a.subscribers, "sub").await?;
    report.connections = pool.connect.clone();
    let load = OneRoom {
        room: &room,
        load: &a.load,
        connected: pool.connect.connected,
    };
    let result = steps(ctx, &a.ramp, a.load.rate, &tally, &load, report).await;
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}

/// `fanout --ramp`'s step: every publisher into the one room, each on its
/// own stream; every subscriber of every process is owed every publish.
struct OneRoom<'a> {
    room: &'a str,
    load: &'a Load,
    /// This process's subscribers.
    connected: u64,
}

impl StepLoad for OneRoom<'_> {
    async fn publish(
        &self,
        ctx: &mut Ctx,
        step: u64,
        rate: f64,
        count: u64,
    ) -> anyhow::Result<(Outcome, u64)> {
        let plans = ctx.plans(self.load, count, rate, self.load.publishers, |k| Route {
            to: Address::Room(self.room.to_owned()),
            stream: ctx.stream_id((step << 16) | k as u64),
        });
        let outcome = ctx.api.run_all(plans, ctx.publish_deadline()).await;
        let published: Vec<u64> = ctx
            .coord
            .exchange(
                &format!("published-{step}"),
                &outcome.report.accepted,
                ctx.deadline,
            )
            .await?;
        Ok((outcome, published.iter().sum::<u64>() * self.connected))
    }
}

/// Runs the steps from `start_rate` until one fails, `--max-rate` is
/// passed or `--duration` would be; fills `report` (`ramp`, and the whole
/// run's `publish`, `delivery` and `node_cpu`). The connections are open
/// and counted by `tally`.
pub(super) async fn steps(
    ctx: &mut Ctx,
    r: &RampArgs,
    start_rate: f64,
    tally: &Tally,
    load: &impl StepLoad,
    report: &mut Report,
) -> anyhow::Result<()> {
    ctx.coord.exchange("ready", &(), ctx.deadline).await?;
    let cpu = ctx.cpu_window(report);
    let mut ramp = RampReport {
        p99_bound_ms: r.p99_bound_ms,
        ..RampReport::default()
    };
    let mut total = Outcome {
        complete: true,
        ..Outcome::default()
    };
    let mut all_latency = latency::new_histogram();
    let mut total_expected = 0;
    let start_counts = tally.counts();
    let mut rate = start_rate;
    let mut step_no: u64 = 0;
    while rate <= r.max_rate {
        if Instant::now() + r.step + ctx.common.drain >= ctx.deadline {
            report.complete = false;
            report
                .error("--duration ended the ramp before a step failed or --max-rate was reached");
            break;
        }
        let count = ctx.share_u64((rate * r.step.as_secs_f64()).ceil() as u64);
        let before = tally.counts();
        let cpu_before = cpu_now(ctx, r, report);
        let (outcome, expected) = load.publish(ctx, step_no, rate, count).await?;
        ctx.drain(tally, before.received + expected).await;
        let cpu_after = cpu_now(ctx, r, report);
        let [node_cpu_ticks, redis_cpu_ticks] =
            [0, 1].map(|i| Some(cpu_after[i]?.saturating_sub(cpu_before[i]?)));
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
            node_cpu_ticks,
            redis_cpu_ticks,
        };
        let parts: Vec<StepPart> = ctx
            .coord
            .exchange(&format!("step-{step_no}"), &part, ctx.deadline)
            .await?;
        let step = verdict(rate, r.p99_bound_ms, &parts)?;
        total_expected += expected;
        total.merge(outcome);
        let (pass, achieved) = (step.pass, step.achieved_rate);
        ramp.steps.push(step);
        if !pass {
            break;
        }
        ramp.best_rate = Some(rate);
        ramp.best_achieved_rate = Some(achieved);
        rate *= r.ramp_factor;
        step_no += 1;
    }
    if let Some(cpu) = cpu {
        cpu.finish(report);
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

/// CPU ticks now of the `--node-pid` and of the `--redis-pid` processes
/// (`None` for a group not given, unreadable, or outside the leader, which
/// alone measures).
fn cpu_now(ctx: &Ctx, r: &RampArgs, report: &mut Report) -> [Option<u64>; 2] {
    if !ctx.coord.is_leader() {
        return [None, None];
    }
    [
        ("--node-pid", &ctx.common.node_pids),
        ("--redis-pid", &r.redis_pids),
    ]
    .map(|(flag, pids)| {
        if pids.is_empty() {
            return None;
        }
        match procstat::cpu_ticks_sum(pids) {
            Ok(ticks) => Some(ticks),
            Err(e) => {
                let e = format!("{flag}: {e}");
                if !report.errors.contains(&e) {
                    report.error(e);
                }
                None
            }
        }
    })
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
    let cpu = |ticks: Option<u64>| {
        let secs = ticks? as f64 / procstat::TICKS_PER_SEC;
        let per_publish = (step.accepted > 0).then(|| round2(secs * 1e6 / step.accepted as f64));
        Some((round2(secs), per_publish))
    };
    if let Some((secs, per)) = cpu(parts.iter().find_map(|p| p.node_cpu_ticks)) {
        step.node_cpu_secs = Some(secs);
        step.node_cpu_per_publish_us = per;
    }
    if let Some((secs, per)) = cpu(parts.iter().find_map(|p| p.redis_cpu_ticks)) {
        step.redis_cpu_secs = Some(secs);
        step.redis_cpu_per_publish_us = per;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(accepted: u64, received: u64, lat_us: u64) -> StepPart {
        let mut h = latency::new_histogram();
        for _ in 0..received {
            latency::record(&mut h, lat_us);
        }
        StepPart {
            accepted,
            publish_first_us: 1_000_000,
            publish_last_us: 2_000_000,
            expected: accepted * 4,
            received,
            last_delivery_us: 2_000_000,
            histogram: latency::to_base64(&h).unwrap(),
            ..StepPart::default()
        }
    }

    #[test]
    fn a_step_passes_only_whole_fast_and_at_its_rate() {
        let ok = verdict(100.0, 50.0, &[part(50, 200, 1_000), part(50, 200, 2_000)]).unwrap();
        assert!(ok.pass, "{ok:?}");
        assert_eq!((ok.accepted, ok.expected, ok.loss), (100, 400, 0));
        assert_eq!(ok.achieved_rate, 100.0);
        assert_eq!(ok.node_cpu_secs, None);

        let lossy = verdict(100.0, 50.0, &[part(50, 200, 1_000), part(50, 199, 1_000)]).unwrap();
        assert!(!lossy.pass && lossy.reason.contains("lost 1"), "{lossy:?}");

        let slow = verdict(100.0, 50.0, &[part(100, 400, 80_000)]).unwrap();
        assert!(!slow.pass && slow.reason.contains("p99"), "{slow:?}");

        // 80 of the 100 asked for in the second: under 90 % of the rate.
        let short = verdict(100.0, 50.0, &[part(80, 320, 1_000)]).unwrap();
        assert!(
            !short.pass && short.reason.contains("publishers reached only 80.0/s"),
            "{short:?}"
        );
    }

    #[test]
    fn step_cpu_is_the_leaders_reading_per_accepted_publish() {
        let mut leader = part(100, 400, 1_000);
        leader.node_cpu_ticks = Some(50);
        leader.redis_cpu_ticks = Some(20);
        let step = verdict(100.0, 50.0, &[leader, part(100, 400, 1_000)]).unwrap();
        assert_eq!(step.node_cpu_secs, Some(0.5));
        // 0.5 s over 200 publishes.
        assert_eq!(step.node_cpu_per_publish_us, Some(2_500.0));
        assert_eq!(step.redis_cpu_secs, Some(0.2));
        assert_eq!(step.redis_cpu_per_publish_us, Some(1_000.0));
    }
}
