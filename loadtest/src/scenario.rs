//! What every scenario shares: the run context ([`Ctx`]) — targets, source
//! addresses, tokens, the HTTP API client, this process's share, the run's
//! deadline and names — and the steps the message scenarios have in common.
//!
//! Scenarios live in one file each under `scenario/` and are written as if
//! they ran alone; [`crate::coord::Coord`] makes the same code correct as
//! one of N processes.

mod addressed;
mod churn;
mod fanout;
mod history;
mod idle;
mod ramp;
mod rejoin;
mod rooms;
mod users;

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use anyhow::Context;
use fanout_protocol::Codec;
use tokio::time::Instant;

use crate::bind;
use crate::cli::{CodecChoice, Command, Common, Load};
use crate::conn::ConnSpec;
use crate::coord::Coord;
use crate::latency;
use crate::pool::{Ends, Pace};
use crate::procstat;
use crate::publish::{Api, Outcome, Plan, Route};
use crate::report::{DeliveryReport, NodeCpuReport, Report, round2};
use crate::tally::{Counts, Expect, Tally};
use crate::target::{self, Target};
use crate::token::Minter;

/// Runs `command` as process `coord.index` of `coord.count` and hands the
/// coordinator back (a child still has to deliver its report through it).
/// `Err` only for setup errors (bad flags); errors after setup are reported
/// inside the result (`complete: false`) so a child always has a report.
pub(crate) async fn run(
    command: Command,
    coord: Coord,
    run_id: String,
) -> (anyhow::Result<Report>, Coord) {
    let Some(common) = command.common().cloned() else {
        return (Err(anyhow::anyhow!("not a scenario")), coord);
    };
    let parts = match Parts::check(&common) {
        Ok(parts) => parts,
        Err(e) => return (Err(e), coord),
    };
    let mut ctx = Ctx::new(common, parts, coord, run_id);
    let mut report = ctx.report(command.name());
    let result = match &command {
        Command::Idle(a) => idle::run(&mut ctx, a, &mut report).await,
        Command::Fanout(a) if a.ramp.on => ramp::run(&mut ctx, a, &mut report).await,
        Command::Fanout(a) => fanout::run(&mut ctx, a, &mut report).await,
        Command::Rooms(a) => rooms::run(&mut ctx, a, &mut report).await,
        Command::Users(a) => users::run(&mut ctx, a, &mut report).await,
        Command::Churn(a) => churn::run(&mut ctx, a, &mut report).await,
        Command::History(a) => history::run(&mut ctx, a, &mut report).await,
        Command::Child => Ok(()),
    };
    if let Err(e) = result {
        report.complete = false;
        report.error(format!("{e:#}"));
    }
    if Instant::now() >= ctx.deadline && report.complete {
        report.complete = false;
        report.error("the run reached --duration before it finished");
    }
    report.elapsed_secs = ctx.started.elapsed().as_secs_f64();
    (Ok(report), ctx.coord)
}

/// Longest wait for the measured connections to close at the end of a run:
/// a run ends within `--duration` plus this.
pub(crate) const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the flags turn into once checked (loopback only, one address family).
struct Parts {
    targets: Vec<Arc<Target>>,
    binds: Vec<IpAddr>,
    api: Api,
}

impl Parts {
    fn check(common: &Common) -> anyhow::Result<Parts> {
        let targets: Vec<Arc<Target>> = target::parse_targets(&common.nodes)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let binds = bind::parse_binds(&common.bind)?;
        check_families(&targets, &binds)?;
        Ok(Parts {
            targets,
            binds,
            api: Api::new(common)?,
        })
    }
}

/// The run as seen by one process.
pub(crate) struct Ctx {
    /// The shared flags.
    pub(crate) common: Common,
    targets: Vec<Arc<Target>>,
    binds: Vec<IpAddr>,
    minter: Minter,
    /// This process's place in the run.
    pub(crate) coord: Coord,
    /// The HTTP API client.
    pub(crate) api: Api,
    /// Short random id naming this run's rooms and users, so that runs
    /// against a long-lived node never see each other's messages.
    run_id: String,
    /// When this process started the scenario.
    pub(crate) started: Instant,
    /// `started + --duration`: nothing runs past it.
    pub(crate) deadline: Instant,
}

impl Ctx {
    /// The context of a run whose flags [`Parts::check`] accepted.
    fn new(common: Common, parts: Parts, coord: Coord, run_id: String) -> Ctx {
        let Parts {
            targets,
            binds,
            api,
        } = parts;
        let minter = Minter::new(&common.secret, &common.tenant, common.duration);
        let started = Instant::now();
        Ctx {
            deadline: started + common.duration,
            common,
            targets,
            binds,
            minter,
            coord,
            api,
            run_id,
            started,
        }
    }

    /// The report skeleton every scenario fills in.
    pub(crate) fn report(&self, scenario: &str) -> Report {
        Report {
            scenario: scenario.into(),
            complete: true,
            procs: self.coord.count,
            nodes: self.targets.iter().map(|t| t.ws_url.clone()).collect(),
            codec: format!("{:?}", self.common.codec).to_lowercase(),
            ..Report::default()
        }
    }

    /// This process's slice of `total` items (connections, rooms, users).
    pub(crate) fn share(&self, total: usize) -> Range<usize> {
        share_of(total, self.coord.index, self.coord.count)
    }

    /// This process's slice of `total` publishes.
    pub(crate) fn share_u64(&self, total: u64) -> u64 {
        let n = self.coord.count as u64;
        total / n + u64::from((self.coord.index as u64) < total % n)
    }

    /// A name shared by every process of the run, e.g. `lt-3f9a1c-room7`.
    pub(crate) fn name(&self, kind: &str, i: usize) -> String {
        format!("lt-{}-{kind}{i}", self.run_id)
    }

    /// A stream id unique in the run: the process index above bit 40.
    pub(crate) fn stream_id(&self, local: u64) -> u64 {
        ((self.coord.index as u64) << 40) | local
    }

    /// The spec of connection `index` (run-wide), for user `sub` in `rooms`.
    pub(crate) fn spec(
        &self,
        index: usize,
        sub: &str,
        rooms: Vec<String>,
        expect: Expect,
    ) -> anyhow::Result<ConnSpec> {
        let token = self
            .minter
            .mint(sub, &rooms)
            .context("cannot sign a token")?;
        let codec = match self.common.codec {
            CodecChoice::Json => Codec::Json,
            CodecChoice::Msgpack => Codec::MsgPack,
            CodecChoice::Mixed if index.is_multiple_of(2) => Codec::Json,
            CodecChoice::Mixed => Codec::MsgPack,
        };
        Ok(ConnSpec {
            index,
            target: self.targets[index % self.targets.len()].clone(),
            bind: self.binds[index % self.binds.len()],
            codec,
            auth: self.common.auth,
            token,
            rooms,
            since: None,
            expect,
            timeout: self.common.connect_timeout,
        })
    }

    /// `http://host:port` of node `i` (round-robin over the `--node`s).
    pub(crate) fn http_base(&self, i: usize) -> &str {
        &self.targets[i % self.targets.len()].http_base
    }

    /// How connections are opened.
    pub(crate) fn pace(&self) -> Pace {
        Pace {
            concurrency: self.common.connect_concurrency,
            rate: self.common.connect_rate,
        }
    }

    /// This process's publishers for `load`, publisher k owning the routes
    /// `route(j)` for which `j % publishers == k`, j in `0..routes`.
    pub(crate) fn plans(
        &self,
        load: &Load,
        count: u64,
        rate: f64,
        routes: usize,
        route: impl Fn(usize) -> Route,
    ) -> Vec<Plan> {
        // Never more publishers than destinations: a publisher with no
        // route would silently drop its share of the count.
        let k_total = load.publishers.max(1).min(routes.max(1));
        let mut plans = Vec::with_capacity(k_total);
        for k in 0..k_total {
            let owned: Vec<Route> = (0..routes)
                .filter(|j| j % k_total == k)
                .map(&route)
                .collect();
            let global_k = self.coord.index * k_total + k;
            plans.push(Plan {
                base: self.targets[global_k % self.targets.len()]
                    .http_base
                    .clone(),
                count: count / k_total as u64 + u64::from((k as u64) < count % k_total as u64),
                rate: rate / (self.coord.count * k_total) as f64,
                routes: owned,
                seed: self.common.seed ^ ((global_k as u64) << 20),
            });
        }
        plans
    }

    /// When publishing must stop so that the drain still fits in `--duration`.
    pub(crate) fn publish_deadline(&self) -> Instant {
        let reserve = self.common.drain.min(self.common.duration / 4);
        self.deadline - reserve
    }

    /// Waits until `tally` has received `expected` first copies, for at
    /// most `--drain` (and never past the deadline).
    pub(crate) async fn drain(&self, tally: &Tally, expected: u64) {
        self.drain_all(&[(tally, expected)]).await;
    }

    /// [`Ctx::drain`] for several groups of connections at once.
    pub(crate) async fn drain_all(&self, groups: &[(&Tally, u64)]) {
        let until = (Instant::now() + self.common.drain).min(self.deadline);
        while groups.iter().any(|(t, e)| t.received() < *e) && Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Starts reading the nodes' CPU (`--node-pid`, leader only) for a
    /// message scenario's publishing window; a pid that cannot be read is
    /// reported as an error.
    pub(crate) fn cpu_window(&self, report: &mut Report) -> Option<CpuWindow> {
        let pids = &self.common.node_pids;
        if !self.coord.is_leader() || pids.is_empty() {
            return None;
        }
        match procstat::cpu_ticks_sum(pids) {
            Ok(ticks) => Some(CpuWindow {
                pids: pids.clone(),
                started: Instant::now(),
                ticks,
            }),
            Err(e) => {
                report.error(format!("--node-pid: {e}"));
                None
            }
        }
    }
}

/// The nodes' CPU time at the start of a window.
pub(crate) struct CpuWindow {
    pids: Vec<u32>,
    started: Instant,
    ticks: u64,
}

impl CpuWindow {
    /// Ends the window and records the CPU used in it (`node_cpu`; the
    /// per-publish figure is derived when the report is finished).
    pub(crate) fn finish(self, report: &mut Report) {
        match procstat::cpu_ticks_sum(&self.pids) {
            Ok(ticks) => {
                let secs = self.started.elapsed().as_secs_f64();
                let cpu_secs = ticks.saturating_sub(self.ticks) as f64 / procstat::TICKS_PER_SEC;
                report.node_cpu = Some(NodeCpuReport {
                    pids: self.pids,
                    secs: round2(secs),
                    cpu_secs: round2(cpu_secs),
                    cpu_percent: if secs > 0.0 {
                        round2(cpu_secs / secs * 100.0)
                    } else {
                        0.0
                    },
                    per_publish_us: 0.0,
                });
            }
            Err(e) => report.error(format!("--node-pid: {e}")),
        }
    }
}

/// Items `[start, end)` of process `index` of `count` when `total` are split evenly.
pub(crate) fn share_of(total: usize, index: usize, count: usize) -> Range<usize> {
    let base = total / count;
    let extra = total % count;
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

fn check_families(targets: &[Arc<Target>], binds: &[IpAddr]) -> anyhow::Result<()> {
    for t in targets {
        if binds.iter().any(|b| b.is_ipv4() != t.addr.is_ipv4()) {
            anyhow::bail!(
                "--bind {} and --node {} mix IPv4 and IPv6; use ::1 with [::1] nodes",
                binds
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                t.ws_url
            );
        }
    }
    Ok(())
}

/// Fills the report from the publish outcome and the measured tally.
pub(crate) fn fill_delivery(
    report: &mut Report,
    outcome: &Outcome,
    counts: Counts,
    expected: u64,
    tally: &Tally,
) -> anyhow::Result<()> {
    report.publish = Some(outcome.report.clone());
    if !outcome.complete {
        report.complete = false;
        report.error("--duration stopped the publishers before every publish was sent");
    }
    report.delivery = Some(DeliveryReport {
        expected,
        received: counts.received,
        duplicates: counts.duplicates,
        order_violations: counts.order_violations,
        unexpected: counts.unexpected,
        first_us: outcome.report.first_us,
        last_us: counts.last_delivery_us,
        ..DeliveryReport::default()
    });
    report.histogram = Some(latency::to_base64(&tally.take_latency())?);
    Ok(())
}

/// Records how the measured connections ended.
pub(crate) fn fill_ends(report: &mut Report, ends: Ends) {
    report.connections.closed_by_server = ends.closed_by_server;
    report.connections.broken = ends.broken;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for (total, n) in [(10, 3), (2, 4), (0, 2), (19_999, 6)] {
            let mut next = 0;
            for i in 0..n {
                let r = share_of(total, i, n);
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, total);
        }
    }
}
