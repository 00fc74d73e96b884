//! `users`: user-addressed sends. U users with K connections each, the K
//! spread round-robin over the nodes (so a cluster has to find a user's
//! connections on several nodes); each publish goes to a random user and
//! must reach every connection of that user.
//!
//! Users are split between processes whole, so each user's stream belongs
//! to one process; each user is its own stream.

use anyhow::ensure;

use super::Ctx;
use super::addressed::{self, Addressed};
use crate::cli::UsersArgs;
use crate::publish::{Address, Route};
use crate::report::Report;
use crate::tally::Expect;

pub(super) async fn run(ctx: &mut Ctx, a: &UsersArgs, report: &mut Report) -> anyhow::Result<()> {
    ensure!(a.users > 0, "--users must be at least 1");
    ensure!(a.conns_per_user > 0, "--conns-per-user must be at least 1");
    super::fanout::check_load(&a.load)?;
    ensure!(
        a.users >= ctx.coord.count,
        "--procs {} is more than the users to split between them",
        ctx.coord.count
    );
    let my_users = ctx.share(a.users);
    let mut specs = Vec::new();
    let mut streams = Vec::new();
    for u in my_users.clone() {
        let user = ctx.name("user", u);
        for j in 0..a.conns_per_user {
            // Consecutive indexes go to consecutive nodes, so a user's
            // connections land on different nodes.
            let index = u * a.conns_per_user + j;
            specs.push(ctx.spec(index, &user, Vec::new(), Expect::One(u as u64))?);
            streams.push(u as u64);
        }
    }
    let first = my_users.start;
    let names: Vec<String> = my_users.clone().map(|u| ctx.name("user", u)).collect();
    let setup = Addressed {
        specs,
        streams,
        routes: my_users.len(),
        route: |j: usize| Route {
            to: Address::User(names[j].clone()),
            stream: (first + j) as u64,
        },
    };
    addressed::run(ctx, &a.load, None, setup, report).await
}
