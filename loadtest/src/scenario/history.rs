//! `history`: what room history costs a node in memory.
//!
//! Publishes `--messages` messages into each of `--rooms` rooms through
//! `POST /v1/publish/batch`, round-robin over the rooms so that each ends
//! with exactly `--messages`, with no subscriber anywhere. The rooms are
//! named as `rooms` names its rooms, so one `[[history]]` rule covers both.
//! Before the first publish and after the last one plus `--settle` it reads
//! the `--node-pid` processes' RSS and the first node's
//! `fanout_history_bytes` and `fanout_history_evicted_total`; then it reads
//! back the history of a few rooms to check what each keeps. Run against a
//! node with a history rule and against one without, the difference of the
//! two RSS rises is what the history holds.
//!
//! One process only: there are no connections to spread.

use std::collections::BTreeSet;

use anyhow::{Context, ensure};
use tokio::time::Instant;

use super::Ctx;
use crate::cli::HistoryArgs;
use crate::procstat;
use crate::report::{HistoryReport, PublishReport, Report, count_error, round2};
use crate::wire::{Probe, now_micros};

/// The gauge of stored history bytes (embedded bus).
const HISTORY_BYTES: &str = "fanout_history_bytes";
/// The counter of rooms whose history was dropped for the memory budget.
const HISTORY_EVICTED: &str = "fanout_history_evicted_total";
/// Largest batch body aimed at, below the node's default
/// `limits.max_http_body_bytes` (1 MiB).
const BATCH_BODY_BYTES: usize = 768 * 1024;
/// JSON of one batch entry besides its padding (tenant, room, event, probe).
const ENTRY_BYTES: usize = 200;

/// Runs `history`: fills the rooms and reports what their history cost.
pub(super) async fn run(ctx: &mut Ctx, a: &HistoryArgs, report: &mut Report) -> anyhow::Result<()> {
    ensure!(
        ctx.coord.count == 1,
        "history runs in one process (--procs 1)"
    );
    ensure!(a.rooms > 0, "--rooms must be at least 1");
    ensure!(a.messages > 0, "--messages must be at least 1");
    ensure!(a.batch > 0, "--batch must be at least 1");
    let base = ctx.http_base(0).to_owned();
    let pids = ctx.common.node_pids.clone();
    let rss_before = if pids.is_empty() {
        0
    } else {
        procstat::rss_kib_sum(&pids).context("--node-pid")?
    };
    let before = gauges(ctx, &base, report).await;

    let names: Vec<String> = (0..a.rooms).map(|r| ctx.name("room", r)).collect();
    let batch = a
        .batch
        .min(BATCH_BODY_BYTES / (ENTRY_BYTES + ctx.common.payload_bytes))
        .max(1);
    let total = a.rooms * a.messages;
    let mut publish = PublishReport {
        first_us: now_micros(),
        ..PublishReport::default()
    };
    let stop_at = ctx.publish_deadline();
    let mut next = 0;
    while next < total {
        if Instant::now() >= stop_at {
            report.complete = false;
            report.error("--duration stopped the publishing before every room was filled");
            break;
        }
        let end = (next + batch).min(total);
        let messages: Vec<(String, Probe)> = (next..end)
            .map(|k| {
                let r = k % a.rooms;
                let probe = Probe {
                    s: r as u64,
                    q: (k / a.rooms) as u64,
                    t: now_micros(),
                };
                (names[r].clone(), probe)
            })
            .collect();
        let (accepted, failure) = ctx.api.publish_batch(&base, &messages).await;
        publish.attempted += messages.len() as u64;
        publish.accepted += accepted;
        publish.failed += messages.len() as u64 - accepted.min(messages.len() as u64);
        publish.last_us = now_micros();
        if let Some(kind) = failure {
            count_error(&mut publish.errors, kind.clone());
            report.complete = false;
            report.error(format!("a batch publish failed ({kind}); stopped filling"));
            break;
        }
        next = end;
    }
    report.publish = Some(publish);

    let end = ctx.deadline - std::time::Duration::from_secs(1).min(ctx.common.duration / 4);
    tokio::time::sleep_until((Instant::now() + a.settle).min(end)).await;
    let rss_after = if pids.is_empty() {
        0
    } else {
        procstat::rss_kib_sum(&pids).context("--node-pid")?
    };
    let after = gauges(ctx, &base, report).await;

    let samples: BTreeSet<usize> = [0, a.rooms / 2, a.rooms - 1].into_iter().collect();
    let mut kept: Option<u64> = None;
    let mut keeps_none = false;
    for &r in &samples {
        match ctx.api.history_len(&base, &names[r]).await {
            Ok(Some(n)) => kept = Some(kept.map_or(n, |k| k.min(n))),
            Ok(None) => keeps_none = true,
            Err(e) => report.error(format!("reading room {r}'s history: {e}")),
        }
    }
    let rooms = a.rooms as f64;
    let [bytes_before, evicted_before] = before.unwrap_or_default();
    let [bytes_after, evicted_after] = after.unwrap_or_default();
    // A counter never incremented is not exported: zero, when /metrics answered.
    let evicted = (before.is_some() && after.is_some())
        .then(|| evicted_after.unwrap_or(0.0) - evicted_before.unwrap_or(0.0));
    report.history = Some(HistoryReport {
        rooms: a.rooms as u64,
        messages_per_room: a.messages as u64,
        payload_bytes: ctx.common.payload_bytes as u64,
        sampled_rooms: samples.len() as u64,
        kept_per_room: if keeps_none { None } else { kept },
        history_bytes_before: bytes_before,
        history_bytes_after: bytes_after,
        history_bytes_per_room: bytes_after
            .map(|a| round2((a - bytes_before.unwrap_or(0.0)) / rooms)),
        evicted_rooms: evicted,
        rss_per_room_bytes: (!pids.is_empty())
            .then(|| round2((rss_after as f64 - rss_before as f64) * 1024.0 / rooms)),
        pids,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
    });
    Ok(())
}

/// `fanout_history_bytes` and `fanout_history_evicted_total` of the node
/// (`None` each when not exported); `None` and an error when `/metrics`
/// cannot be read.
async fn gauges(ctx: &Ctx, base: &str, report: &mut Report) -> Option<[Option<f64>; 2]> {
    match ctx
        .api
        .metrics(base, &[HISTORY_BYTES, HISTORY_EVICTED])
        .await
    {
        Ok(values) => Some([values[0], values[1]]),
        Err(e) => {
            report.error(format!("reading {base}/metrics: {e}"));
            None
        }
    }
}
