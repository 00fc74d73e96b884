//! fanout's load generator and the floor server it is compared against.
//!
//! ```text
//!  main ─▶ run ─┬─ --procs 1 ─▶ scenario::run ─────────────────────────────┐
//!               └─ --procs N ─▶ procs: N × `fanout-loadtest __child`        │
//!                                 └─ each: scenario::run (its share) ─▶ JSON line ─▶ merge
//!                                                                            ▼
//!  scenario::{idle,fanout,ramp,rooms,users,churn,history}          report: JSON line on stdout,
//!     │  pool ─▶ conn × C (bound source address, upgrade, auth,        summary on stderr
//!     │            subscribe, read loop) ─▶ tally (loss/dup/order, HDR latency)
//!     │  publish ─▶ POST /v1/publish, paced, payload = wire::Probe {stream, seq, due time}
//!     └─ coord: exchanges between processes ("ready", "published", ramp steps)
//! ```
//!
//! Modules, one concern each:
//!
//! - [`cli`]: the command line (also the serde form children receive).
//! - `target`, `bind`: which nodes and source addresses; loopback only.
//! - `token`: HS256 tokens minted from `--secret`.
//! - `wire`: client frames, server-frame decoding, the probe payload.
//! - `conn`: one connection from SYN to close; `pool`: many of them, paced.
//! - `tally`: delivery accounting; `latency`: HDR histograms and their transport.
//! - `publish`: the paced, sequential HTTP publishers.
//! - `scenario`: the run context and one file per scenario (`rejoin`: the
//!   reconnecting clients of `churn --reconnect` / `--recover`).
//! - `coord`, `procs`: `--procs` children and the exchanges between them.
//! - `procstat`: node RSS and CPU from `/proc`; `fdlimit`: the open-file limit.
//! - `report`: the result line, its merge and the human summary.
//! - [`floor`]: the minimal broadcast server (`fanout-floor`).

pub mod cli;
pub mod floor;

mod bind;
mod conn;
mod coord;
mod fdlimit;
mod latency;
mod pool;
mod procs;
mod procstat;
mod publish;
mod report;
mod scenario;
mod tally;
mod target;
mod token;
mod wire;

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};
use crate::coord::Coord;

/// Exit code of a run that hit `--duration` before finishing (its result
/// line is still printed, with `"complete":false`).
pub const EXIT_INCOMPLETE: u8 = 2;

/// Raises this process's open-file limit to its hard limit and returns the
/// limit in force (or a note on why it could not be raised).
pub fn raise_fd_limit() -> Result<u64, String> {
    fdlimit::raise()
}

/// Runs the command line: a scenario (alone or over `--procs` children) or
/// the internal child mode. Prints the JSON result on stdout and the
/// summary on stderr; returns the exit code (0 complete, 2 incomplete).
pub async fn run(cli: Cli, fd_limit: u64) -> anyhow::Result<ExitCode> {
    let command = cli.command;
    if let Command::Child = command {
        let (coord, spec) = Coord::child().await?;
        let (report, mut coord) = scenario::run(spec.command, coord, spec.run_id).await;
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                let mut r = report::Report {
                    complete: false,
                    ..Default::default()
                };
                r.error(format!("{e:#}"));
                r
            }
        };
        coord.deliver(report).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let common = command.common().context("not a scenario")?.clone();
    // Refuse bad targets and addresses before starting anything.
    target::parse_targets(&common.nodes)?;
    bind::parse_binds(&common.bind)?;
    anyhow::ensure!(common.procs >= 1, "--procs must be at least 1");
    anyhow::ensure!(
        common.procs == 1 || !matches!(command, Command::History(_)),
        "history runs in one process (--procs 1)"
    );
    let total = command.total_connections();
    fdlimit::check_share(total.div_ceil(common.procs), total, fd_limit)?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut report = if common.procs > 1 {
        procs::run_parent(command, common.procs, run_id).await?
    } else {
        scenario::run(command, Coord::solo(), run_id).await.0?
    };
    report.finish();
    println!("{}", serde_json::to_string(&report)?);
    eprint!("{}", report.summary());
    Ok(if report.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    })
}
