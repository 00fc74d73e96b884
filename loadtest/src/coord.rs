//! Coordination between the processes of one run.
//!
//! A scenario is written once, as if it ran alone, and calls
//! [`Coord::exchange`] at the points where processes must agree: "everyone
//! is subscribed", "this many messages were published", "this ramp step
//! measured that". Alone, an exchange returns just its own data. As a
//! `--procs` child, it writes `{"sync":{"tag":..,"data":..}}` on stdout and
//! reads the parent's `{"tag":..,"all":[..]}` (everyone's data, in process
//! order) from stdin; the parent answers once every child has asked. That
//! one primitive is both the barrier and the data exchange.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, Stdin, Stdout};
use tokio::time::Instant;

use crate::cli::Command;
use crate::report::Report;

/// How long past the run's deadline an exchange may wait for slower processes.
const EXCHANGE_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// The first line a child reads: what to run and which share is its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildSpec {
    /// This child's index, 0-based; child 0 is the leader.
    pub(crate) index: usize,
    /// Processes in the run.
    pub(crate) count: usize,
    /// Run id shared by every process (names rooms and users).
    pub(crate) run_id: String,
    /// The scenario, with `--bind` already narrowed to this child's share.
    pub(crate) command: Command,
}

/// A line from a child to the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ToParent {
    /// Asks for an exchange.
    Sync {
        /// Which exchange (for checking that every child is at the same one).
        tag: String,
        /// This child's contribution.
        data: Value,
    },
    /// The child's final report.
    Result(Box<Report>),
}

/// The parent's answer to an exchange.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SyncReply {
    /// The exchange answered.
    pub(crate) tag: String,
    /// Every child's contribution, by child index.
    pub(crate) all: Vec<Value>,
}

struct Link {
    lines: Lines<BufReader<Stdin>>,
    out: Stdout,
}

/// This process's place in the run.
pub(crate) struct Coord {
    /// Index of this process (0 when alone).
    pub(crate) index: usize,
    /// Processes in the run (1 when alone).
    pub(crate) count: usize,
    link: Option<Link>,
}

impl Coord {
    /// A process running the whole scenario by itself.
    pub(crate) fn solo() -> Coord {
        Coord {
            index: 0,
            count: 1,
            link: None,
        }
    }

    /// A child: reads its spec from stdin.
    pub(crate) async fn child() -> anyhow::Result<(Coord, ChildSpec)> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let first = lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no child spec on stdin (this mode is internal)"))?;
        let spec: ChildSpec = serde_json::from_str(&first)?;
        let coord = Coord {
            index: spec.index,
            count: spec.count,
            link: Some(Link {
                lines,
                out: tokio::io::stdout(),
            }),
        };
        Ok((coord, spec))
    }

    /// Whether this process takes the measures that must be taken once
    /// (server RSS and CPU).
    pub(crate) fn is_leader(&self) -> bool {
        self.index == 0
    }

    /// Shares `data` with every process of the run and returns everyone's,
    /// in process order; waits for all of them (bounded by `deadline`
    /// plus a grace).
    pub(crate) async fn exchange<T: Serialize + DeserializeOwned>(
        &mut self,
        tag: &str,
        data: &T,
        deadline: Instant,
    ) -> anyhow::Result<Vec<T>> {
        let Some(link) = &mut self.link else {
            return Ok(vec![serde_json::from_value(serde_json::to_value(data)?)?]);
        };
        let line = serde_json::to_string(&ToParent::Sync {
            tag: tag.to_owned(),
            data: serde_json::to_value(data)?,
        })?;
        link.out.write_all(format!("{line}\n").as_bytes()).await?;
        link.out.flush().await?;
        let reply = tokio::time::timeout_at(deadline + EXCHANGE_GRACE, link.lines.next_line())
            .await
            .map_err(|_| {
                anyhow::anyhow!("exchange {tag:?}: the other processes did not answer in time")
            })??
            .ok_or_else(|| anyhow::anyhow!("exchange {tag:?}: the parent went away"))?;
        let reply: SyncReply = serde_json::from_str(&reply)?;
        anyhow::ensure!(
            reply.tag == tag,
            "exchange {tag:?}: the parent answered {:?}",
            reply.tag
        );
        reply
            .all
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(Into::into))
            .collect()
    }

    /// Hands the final report to the parent (children); alone, does nothing
    /// and the caller prints it.
    pub(crate) async fn deliver(&mut self, report: Report) -> anyhow::Result<()> {
        if let Some(link) = &mut self.link {
            let line = serde_json::to_string(&ToParent::Result(Box::new(report)))?;
            link.out.write_all(format!("{line}\n").as_bytes()).await?;
            link.out.flush().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn alone_an_exchange_returns_its_own_data() {
        let mut c = Coord::solo();
        let all = c
            .exchange(
                "x",
                &42u64,
                Instant::now() + std::time::Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!(all, vec![42]);
        assert!(c.is_leader());
    }

    #[test]
    fn child_lines_have_the_documented_shape() {
        let line = serde_json::to_string(&ToParent::Sync {
            tag: "ready".into(),
            data: serde_json::json!(3),
        })
        .unwrap();
        assert_eq!(line, r#"{"sync":{"tag":"ready","data":3}}"#);
    }
}
