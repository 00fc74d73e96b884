//! Opening many connections, keeping them running, and closing them.
//!
//! Each connection is one task from connect to close ([`crate::conn`]); the
//! pool only paces the opening (at most `--connect-concurrency` handshakes
//! in flight, optionally `--connect-rate` per second, so that a burst of
//! SYNs does not overflow the node's accept backlog and get measured as
//! failures) and gathers how each one went.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, ConnEnd, ConnSpec, RunCtx};
use crate::report::{ConnectReport, count_error};

/// How fast and how wide to open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// Opens per second; 0 = unpaced.
    pub(crate) rate: f64,
}

/// Running connections.
pub(crate) struct Pool {
    tasks: Vec<JoinHandle<ConnEnd>>,
    stop: CancellationToken,
    /// How the opening went.
    pub(crate) connect: ConnectReport,
    /// Per spec (in the order given): whether it opened. Loss is owed only
    /// by connections that opened.
    pub(crate) opened: Vec<bool>,
}

impl Pool {
    /// Opens every spec, paced, and returns once each has either
    /// subscribed or failed, or `deadline` passed (those still opening are
    /// counted as failed and abandoned).
    pub(crate) async fn open(
        specs: Vec<ConnSpec>,
        ctx: RunCtx,
        pace: Pace,
        deadline: Instant,
    ) -> Pool {
        let started = Instant::now();
        let overflows_before = crate::procstat::listen_overflows();
        let total = specs.len();
        let gate = Arc::new(Semaphore::new(pace.concurrency.max(1)));
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
        let mut opened = vec![false; total];
        let mut tasks = Vec::with_capacity(total);
        let period = (pace.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / pace.rate));
        let mut connect = ConnectReport {
            target: total as u64,
            ..ConnectReport::default()
        };
        for (i, spec) in specs.into_iter().enumerate() {
            if let Some(period) = period {
                tokio::time::sleep_until(started + period.mul_f64(i as f64)).await;
            }
            let permit = tokio::select! {
                p = gate.clone().acquire_owned() => p,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let Ok(permit) = permit else { break };
            let ready = ready_tx.clone();
            let run = ctx.clone();
            tasks.push(tokio::spawn(async move {
                match Conn::open(&spec).await {
                    Ok(conn) => {
                        drop(permit);
                        let _ = ready.send((i, Ok(())));
                        conn.run(run).await
                    }
                    Err(e) => {
                        drop(permit);
                        let _ = ready.send((i, Err(e.to_string())));
                        ConnEnd::NeverOpened
                    }
                }
            }));
            while let Ok((i, r)) = ready_rx.try_recv() {
                opened[i] = r.is_ok();
                connect.account(r);
            }
        }
        drop(ready_tx);
        while ((connect.connected + connect.failed) as usize) < total {
            tokio::select! {
                r = ready_rx.recv() => match r {
                    Some((i, r)) => {
                        opened[i] = r.is_ok();
                        connect.account(r);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let missing = (total as u64).saturating_sub(connect.connected + connect.failed);
        if missing > 0 {
            connect.failed += missing;
            count_error(
                &mut connect.errors,
                "not opened before the run's deadline".into(),
            );
        }
        connect.secs = started.elapsed().as_secs_f64();
        if let (Some(before), Some(after)) = (overflows_before, crate::procstat::listen_overflows())
        {
            connect.listen_overflows = after.saturating_sub(before);
        }
        Pool {
            tasks,
            stop: ctx.stop,
            connect,
            opened,
        }
    }

    /// Closes every connection and reports how they ended: closes by the
    /// server by code, broken sockets. Failed opens are not counted again.
    pub(crate) async fn close(self, wait: Duration) -> Ends {
        self.stop.cancel();
        let mut ends = Ends::default();
        let deadline = Instant::now() + wait;
        for task in self.tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(ConnEnd::ClosedByServer(code))) => {
                    *ends.closed_by_server.entry(code.to_string()).or_default() += 1;
                }
                Ok(Ok(ConnEnd::Broken)) => ends.broken += 1,
                Ok(_) => {}
                Err(_) => abort.abort(),
            }
        }
        ends
    }
}

/// How the connections of a pool ended.
#[derive(Debug, Default)]
pub(crate) struct Ends {
    /// Closes initiated by the server, by close code.
    pub(crate) closed_by_server: BTreeMap<String, u64>,
    /// Connections that broke (reset, EOF without close) before we stopped them.
    pub(crate) broken: u64,
}
