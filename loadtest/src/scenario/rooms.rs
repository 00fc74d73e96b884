//! `rooms`: many small rooms (e.g. 10,000 connections in 2,500 rooms of
//! 4), each publish to a random room. Measures the per-publish routing cost
//! rather than the per-member cost `fanout` measures. With `--ramp` the
//! rate rises step by step (`ramp.rs`) to the highest rate the nodes (and,
//! across nodes, Redis) keep up with: the Redis-bound workload of
//! `run.sh --only redis_cluster`.
//!
//! Rooms, not connections, are split between processes, so every room and
//! every stream into it belongs to one process and no exchange of counts
//! is needed; each room is its own stream (one per step with `--ramp`).

use anyhow::ensure;

use super::Ctx;
use super::addressed::{self, Addressed};
use crate::cli::RoomsArgs;
use crate::publish::{Address, Route};
use crate::report::Report;
use crate::tally::Expect;

pub(super) async fn run(ctx: &mut Ctx, a: &RoomsArgs, report: &mut Report) -> anyhow::Result<()> {
    ensure!(a.connections > 0, "--connections must be at least 1");
    ensure!(a.room_size > 0, "--room-size must be at least 1");
    super::fanout::check_load(&a.load)?;
    ensure!(
        a.connections.div_ceil(a.room_size) >= ctx.coord.count,
        "--procs {} is more than the rooms to split between them",
        ctx.coord.count
    );
    let my_rooms = ctx.share(a.connections.div_ceil(a.room_size));
    let mut specs = Vec::new();
    let mut streams = Vec::new();
    for r in my_rooms.clone() {
        let room = ctx.name("room", r);
        for i in r * a.room_size..((r + 1) * a.room_size).min(a.connections) {
            let user = ctx.name("sub", i);
            specs.push(ctx.spec(i, &user, vec![room.clone()], Expect::One(r as u64))?);
            streams.push(r as u64);
        }
    }
    let first = my_rooms.start;
    let names: Vec<String> = my_rooms.clone().map(|r| ctx.name("room", r)).collect();
    let setup = Addressed {
        specs,
        streams,
        routes: my_rooms.len(),
        route: |j: usize| Route {
            to: Address::Room(names[j].clone()),
            stream: (first + j) as u64,
        },
    };
    let ramp = a.ramp.on.then_some(&a.ramp);
    addressed::run(ctx, &a.load, ramp, setup, report).await
}
