//! `fanout`: S subscribers in one room, P publishes at rate R through the
//! HTTP API; every subscriber should get every message, once, in order.
//!
//! The room is shared by every process of a `--procs` run (it is one room
//! on the node); each process publishes its share of P as its own streams,
//! and the "published" exchange tells every process how many messages its
//! subscribers are owed.

use std::sync::Arc;

use anyhow::ensure;
use tokio_util::sync::CancellationToken;

use super::{CLOSE_WAIT, Ctx, fill_delivery, fill_ends};
use crate::cli::FanoutArgs;
use crate::conn::RunCtx;
use crate::pool::Pool;
use crate::publish::{Address, Route};
use crate::report::Report;
use crate::tally::{Expect, Tally};

/// Opens this process's subscribers of `room`; returns the pool and its tally.
pub(super) async fn subscribe(
    ctx: &Ctx,
    room: &str,
    total: usize,
    kind: &str,
) -> anyhow::Result<(Pool, Arc<Tally>)> {
    let mut specs = Vec::new();
    for i in ctx.share(total) {
        let user = ctx.name(kind, i);
        specs.push(ctx.spec(i, &user, vec![room.to_owned()], Expect::All)?);
    }
    let tally = Arc::new(Tally::default());
    let run = RunCtx {
        tally: tally.clone(),
        stop: CancellationToken::new(),
        ping_every: None,
    };
    let pool = Pool::open(specs, run, ctx.pace(), ctx.deadline).await;
    Ok((pool, tally))
}

pub(super) fn check_load(load: &crate::cli::Load) -> anyhow::Result<()> {
    ensure!(load.rate > 0.0, "--rate must be above 0");
    ensure!(load.publishers > 0, "--publishers must be at least 1");
    Ok(())
}

pub(super) async fn run(ctx: &mut Ctx, a: &FanoutArgs, report: &mut Report) -> anyhow::Result<()> {
    ensure!(a.subscribers > 0, "--subscribers must be at least 1");
    check_load(&a.load)?;
    let room = ctx.name("room", 0);
    let (pool, tally) = subscribe(ctx, &room, a.subscribers, "sub").await?;
    report.connections = pool.connect.clone();
    let result = publish_and_measure(ctx, a, &room, &pool, &tally, report).await;
    fill_ends(report, pool.close(CLOSE_WAIT).await);
    result
}

async fn publish_and_measure(
    ctx: &mut Ctx,
    a: &FanoutArgs,
    room: &str,
    pool: &Pool,
    tally: &Tally,
    report: &mut Report,
) -> anyhow::Result<()> {
    ctx.coord.exchange("ready", &(), ctx.deadline).await?;
    let cpu = ctx.cpu_window(report);
    let count = ctx.share_u64(a.load.publishes);
    let plans = ctx.plans(&a.load, count, a.load.rate, a.load.publishers, |k| Route {
        to: Address::Room(room.to_owned()),
        stream: ctx.stream_id(k as u64),
    });
    let outcome = ctx.api.run_all(plans, ctx.publish_deadline()).await;
    let published: Vec<u64> = ctx
        .coord
        .exchange("published", &outcome.report.accepted, ctx.deadline)
        .await?;
    let expected = published.iter().sum::<u64>() * pool.connect.connected;
    ctx.drain(tally, expected).await;
    if let Some(cpu) = cpu {
        cpu.finish(report);
    }
    fill_delivery(report, &outcome, tally.counts(), expected, tally)
}
