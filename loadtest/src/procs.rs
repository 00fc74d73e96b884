//! `--procs N`: spreading one run over N child processes of this binary.
//!
//! One process can hold at most ~19,900 sockets here (the hard open-file
//! limit is 20,000), so a 100k-connection run needs several. The parent
//! starts N children (`fanout-loadtest __child`), gives each its spec on
//! stdin (its share of the `--bind` addresses; connection shares follow
//! from its index), answers their exchanges (see [`crate::coord`]),
//! collects their JSON reports and merges them into one — histograms
//! merged exactly. The parent opens no connection itself.
//!
//! A child that dies without a report fails the run: the parent kills the
//! others (they are its own children, `kill_on_drop`) and says which one.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command as Process};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bind;
use crate::cli::Command;
use crate::coord::{ChildSpec, SyncReply, ToParent};
use crate::report::Report;

/// Time past `--duration` the parent waits for children before giving up.
const PARENT_GRACE: Duration = Duration::from_secs(30);

/// Something a child said, or that it stopped talking.
enum Heard {
    Line(usize, String),
    Eof(usize),
}

/// Runs `command` over `procs` children and returns the merged report.
pub(crate) async fn run_parent(
    command: Command,
    procs: usize,
    run_id: String,
) -> anyhow::Result<Report> {
    let common = command
        .common()
        .context("the child mode cannot be spread")?
        .clone();
    let binds = bind::parse_binds(&common.bind)?;
    if binds.len() < procs {
        eprintln!(
            "note: {} --bind address(es) for {procs} processes; processes share addresses",
            binds.len()
        );
    }
    let exe = std::env::current_exe().context("cannot find this program to start children")?;
    let deadline = Instant::now() + common.duration + PARENT_GRACE;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut children: Vec<Child> = Vec::with_capacity(procs);
    let mut stdins: Vec<ChildStdin> = Vec::with_capacity(procs);
    for index in 0..procs {
        let mut child_cmd = command.clone();
        if let Some(c) = common_mut(&mut child_cmd) {
            c.bind = bind::share(&binds, index, procs)
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",");
            c.procs = 1;
        }
        let mut child = Process::new(&exe)
            .arg("__child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start child {index}"))?;
        let mut stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let spec = ChildSpec {
            index,
            count: procs,
            run_id: run_id.clone(),
            command: child_cmd,
        };
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&spec)?).as_bytes())
            .await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(Heard::Line(index, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Heard::Eof(index));
        });
        children.push(child);
        stdins.push(stdin);
    }
    drop(tx);

    let mut pending: BTreeMap<String, Vec<Option<Value>>> = BTreeMap::new();
    let mut results: Vec<Option<Report>> = vec![None; procs];
    while results.iter().any(Option::is_none) {
        let heard = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("children did not finish within --duration plus {PARENT_GRACE:?}")
            })?;
        match heard {
            None => bail!("every child stopped talking before reporting"),
            Some(Heard::Eof(i)) if results[i].is_none() => {
                bail!("child {i} exited without a result (see its messages above)")
            }
            Some(Heard::Eof(_)) => {}
            Some(Heard::Line(i, line)) => match serde_json::from_str::<ToParent>(&line) {
                Ok(ToParent::Result(report)) => results[i] = Some(*report),
                Ok(ToParent::Sync { tag, data }) => {
                    let slot = pending
                        .entry(tag.clone())
                        .or_insert_with(|| vec![None; procs]);
                    slot[i] = Some(data);
                    if slot.iter().all(Option::is_some) {
                        let all = pending.remove(&tag).unwrap_or_default();
                        let reply = SyncReply {
                            tag,
                            all: all.into_iter().map(Option::unwrap_or_default).collect(),
                        };
                        let line = format!("{}\n", serde_json::to_string(&reply)?);
                        for (j, stdin) in stdins.iter_mut().enumerate() {
                            stdin
                                .write_all(line.as_bytes())
                                .await
                                .with_context(|| format!("child {j} stopped listening"))?;
                        }
                    }
                }
                Err(e) => bail!("child {i} wrote an unreadable line ({e}): {line}"),
            },
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    let mut reports = results.into_iter().flatten();
    let mut merged = reports.next().context("no child reported")?;
    for r in reports {
        merged.merge(&r);
    }
    merged.procs = procs;
    Ok(merged)
}

fn common_mut(command: &mut Command) -> Option<&mut crate::cli::Common> {
    match command {
        Command::Idle(a) => Some(&mut a.common),
        Command::Fanout(a) => Some(&mut a.common),
        Command::Rooms(a) => Some(&mut a.common),
        Command::Users(a) => Some(&mut a.common),
        Command::Churn(a) => Some(&mut a.common),
        Command::History(a) => Some(&mut a.common),
        Command::Child => None,
    }
}
