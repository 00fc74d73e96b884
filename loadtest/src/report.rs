//! The result of a run: the one JSON line on stdout, its merge over
//! `--procs` children, and the human summary on stderr.
//!
//! Raw counts and the serialised histogram are the source of truth; rates,
//! loss and percentiles are derived from them by [`Report::finish`]. A
//! child's report is therefore mergeable (sum the counts, add the
//! histograms, take min/max of the time windows) and the parent finishes the
//! merged report the same way a single process finishes its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::latency::{self, LatencySummary};

/// Most error strings kept in a report.
const MAX_ERRORS: usize = 20;

/// Error kinds kept per report; past this, errors are counted under "other".
const MAX_ERROR_KINDS: usize = 16;

/// One run's result. Field meanings are documented in loadtest/README.md.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    /// `idle`, `fanout`, `rooms`, `users`, `churn` or `history`.
    pub(crate) scenario: String,
    /// False when the run hit `--duration` (or a child failed) before finishing.
    pub(crate) complete: bool,
    /// Processes the run was spread over.
    pub(crate) procs: usize,
    /// The node URLs targeted.
    pub(crate) nodes: Vec<String>,
    /// `json`, `msgpack` or `mixed`.
    pub(crate) codec: String,
    /// Wall time of the run, seconds.
    pub(crate) elapsed_secs: f64,
    /// Opening and holding the measured connections.
    pub(crate) connections: ConnectReport,
    /// Publishing, for the message scenarios.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) publish: Option<PublishReport>,
    /// What the measured connections received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delivery: Option<DeliveryReport>,
    /// Publish-to-delivery latency percentiles, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) latency_ms: Option<LatencySummary>,
    /// The latency histogram (µs): base64 of its HdrHistogram V2 serialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) histogram: Option<String>,
    /// Node-process measures (`idle` with `--node-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<ServerReport>,
    /// Ramp steps (`fanout --ramp`, `rooms --ramp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ramp: Option<RampReport>,
    /// Churn connections (`churn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) churn: Option<ChurnReport>,
    /// Reconnecting clients (`churn --reconnect` / `--recover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) recovery: Option<RecoveryReport>,
    /// Node CPU while a message scenario published (with `--node-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node_cpu: Option<NodeCpuReport>,
    /// What room history cost the node (`history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) history: Option<HistoryReport>,
    /// Problems worth reading (first few).
    pub(crate) errors: Vec<String>,
}

/// Opening and holding connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConnectReport {
    /// Connections asked for.
    pub(crate) target: u64,
    /// Opened, authenticated and subscribed.
    pub(crate) connected: u64,
    /// Could not be opened (or not before the deadline).
    pub(crate) failed: u64,
    /// Time the opening took, seconds (slowest process).
    pub(crate) secs: f64,
    /// `connected / secs`.
    pub(crate) rate: f64,
    /// Open failures by kind.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Connections the server closed before the run ended, by close code.
    pub(crate) closed_by_server: BTreeMap<String, u64>,
    /// Connections that broke before the run ended.
    pub(crate) broken: u64,
    /// Rise of the machine's `ListenOverflows` counter while opening: SYNs
    /// a full accept queue dropped (each costs its client a 1 s retransmit).
    /// System-wide, so other traffic on the machine counts too.
    pub(crate) listen_overflows: u64,
}

impl ConnectReport {
    /// Accounts one open attempt.
    pub(crate) fn account(&mut self, r: Result<(), String>) {
        match r {
            Ok(()) => self.connected += 1,
            Err(e) => {
                self.failed += 1;
                count_error(&mut self.errors, e);
            }
        }
    }

    /// Connections lost after opening (server closes plus broken sockets).
    pub(crate) fn dropped(&self) -> u64 {
        self.closed_by_server.values().sum::<u64>() + self.broken
    }

    fn merge(&mut self, o: &ConnectReport) {
        self.target += o.target;
        self.connected += o.connected;
        self.failed += o.failed;
        self.secs = self.secs.max(o.secs);
        sum_maps(&mut self.errors, &o.errors);
        sum_maps(&mut self.closed_by_server, &o.closed_by_server);
        self.broken += o.broken;
        self.listen_overflows = self.listen_overflows.max(o.listen_overflows);
    }
}

/// Publishing through the HTTP API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PublishReport {
    /// Publishes per second asked for.
    pub(crate) target_rate: f64,
    /// Requests sent.
    pub(crate) attempted: u64,
    /// Answered 202.
    pub(crate) accepted: u64,
    /// Answered otherwise or failed.
    pub(crate) failed: u64,
    /// First request's due time, µs since the epoch.
    pub(crate) first_us: u64,
    /// Last answer, µs since the epoch.
    pub(crate) last_us: u64,
    /// `accepted` per second between `first_us` and `last_us`.
    pub(crate) achieved_rate: f64,
    /// Furthest a publisher fell behind its schedule, ms.
    pub(crate) max_lag_ms: f64,
    /// Failures by kind (`HTTP 503`, `timeout`, ...).
    pub(crate) errors: BTreeMap<String, u64>,
}

impl PublishReport {
    /// Adds another publisher's or process's counts.
    pub(crate) fn merge(&mut self, o: &PublishReport) {
        self.target_rate += o.target_rate;
        self.attempted += o.attempted;
        self.accepted += o.accepted;
        self.failed += o.failed;
        self.first_us = min_nonzero(self.first_us, o.first_us);
        self.last_us = self.last_us.max(o.last_us);
        self.max_lag_ms = self.max_lag_ms.max(o.max_lag_ms);
        sum_maps(&mut self.errors, &o.errors);
    }
}

/// What the measured connections received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DeliveryReport {
    /// Deliveries owed: each accepted publish × the measured connections it addresses.
    pub(crate) expected: u64,
    /// Distinct messages received (first copies).
    pub(crate) received: u64,
    /// `expected − received` (never negative).
    pub(crate) loss: u64,
    /// Second and later copies of a message on one connection.
    pub(crate) duplicates: u64,
    /// First copies that arrived after a later message of the same publisher.
    pub(crate) order_violations: u64,
    /// Messages a connection should not have received (another room or
    /// user, or undecodable frames).
    pub(crate) unexpected: u64,
    /// Start of the delivery window (first publish due), µs since the epoch.
    pub(crate) first_us: u64,
    /// Last delivery, µs since the epoch.
    pub(crate) last_us: u64,
    /// `received` per second over the delivery window.
    pub(crate) deliveries_per_sec: f64,
}

impl DeliveryReport {
    fn merge(&mut self, o: &DeliveryReport) {
        self.expected += o.expected;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.order_violations += o.order_violations;
        self.unexpected += o.unexpected;
        self.first_us = min_nonzero(self.first_us, o.first_us);
        self.last_us = self.last_us.max(o.last_us);
    }

    fn finish(&mut self) {
        self.loss = self.expected.saturating_sub(self.received);
        let secs = self.last_us.saturating_sub(self.first_us) as f64 / 1e6;
        self.deliveries_per_sec = if secs > 0.0 {
            round2(self.received as f64 / secs)
        } else {
            0.0
        };
    }
}

/// Measures of the node processes (`--node-pid`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ServerReport {
    /// The pids measured.
    pub(crate) pids: Vec<u32>,
    /// Sum of VmRSS before any connection was opened, KiB.
    pub(crate) rss_before_kib: u64,
    /// Sum of VmRSS with every connection open and settled, KiB.
    pub(crate) rss_after_kib: u64,
    /// Connections open when `rss_after_kib` was read (all processes).
    pub(crate) connections: u64,
    /// `(after − before) × 1024 / connections`.
    pub(crate) rss_per_connection_bytes: f64,
    /// Seconds over which CPU was measured with the connections idle.
    pub(crate) hold_secs: f64,
    /// CPU used by the node processes during the hold, percent of one core.
    pub(crate) cpu_percent: f64,
}

/// A ramp of publish rates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RampReport {
    /// The p99 bound a step had to meet, ms.
    pub(crate) p99_bound_ms: f64,
    /// Highest rate whose step passed (null when none did).
    pub(crate) best_rate: Option<f64>,
    /// The knee: publishes per second achieved at that step (null when no
    /// step passed).
    pub(crate) best_achieved_rate: Option<f64>,
    /// Every step, in order.
    pub(crate) steps: Vec<RampStep>,
}

/// One step of a ramp (over all processes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RampStep {
    /// Publishes per second asked for.
    pub(crate) rate: f64,
    /// Publishes accepted.
    pub(crate) accepted: u64,
    /// Accepted per second.
    pub(crate) achieved_rate: f64,
    /// Deliveries owed.
    pub(crate) expected: u64,
    /// Distinct deliveries.
    pub(crate) received: u64,
    /// `expected − received`.
    pub(crate) loss: u64,
    /// Duplicate deliveries.
    pub(crate) duplicates: u64,
    /// Out-of-order deliveries.
    pub(crate) order_violations: u64,
    /// Deliveries per second during the step.
    pub(crate) deliveries_per_sec: f64,
    /// Latency percentiles of the step, ms.
    pub(crate) latency_ms: LatencySummary,
    /// CPU of the `--node-pid` processes during the step (publishing and
    /// drain), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node_cpu_secs: Option<f64>,
    /// `node_cpu_secs` per accepted publish, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node_cpu_per_publish_us: Option<f64>,
    /// CPU of the `--redis-pid` processes during the step, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redis_cpu_secs: Option<f64>,
    /// `redis_cpu_secs` per accepted publish, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redis_cpu_per_publish_us: Option<f64>,
    /// Whether the step met every condition.
    pub(crate) pass: bool,
    /// Why it did not (empty when it passed).
    pub(crate) reason: String,
}

/// Connections opened and closed during a `churn` run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ChurnReport {
    /// Churn connections asked per second.
    pub(crate) rate: f64,
    /// Opened and subscribed.
    pub(crate) opened: u64,
    /// Could not be opened.
    pub(crate) failed: u64,
    /// Closed by us after their hold.
    pub(crate) closed: u64,
    /// Closed by the server or broken before their hold ended.
    pub(crate) dropped: u64,
    /// Messages they received (not part of the loss accounting).
    pub(crate) received: u64,
    /// Open failures by kind.
    pub(crate) errors: BTreeMap<String, u64>,
}

impl ChurnReport {
    fn merge(&mut self, o: &ChurnReport) {
        self.rate += o.rate;
        self.opened += o.opened;
        self.failed += o.failed;
        self.closed += o.closed;
        self.dropped += o.dropped;
        self.received += o.received;
        sum_maps(&mut self.errors, &o.errors);
    }
}

/// Clients of `churn --reconnect` / `--recover`, over all their connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RecoveryReport {
    /// Whether returning clients subscribed with `since` (`--recover`).
    pub(crate) since: bool,
    /// Reconnecting clients asked for.
    pub(crate) clients: u64,
    /// Clients whose first subscribe succeeded: each is owed every message.
    pub(crate) opened: u64,
    /// Times a client came back (opened and subscribed again).
    pub(crate) reconnects: u64,
    /// Attempts to come back that failed (the client tried again).
    pub(crate) reconnect_failed: u64,
    /// Resubscribes with `since` answered `"recovered":true`.
    pub(crate) recovered: u64,
    /// Resubscribes with `since` answered `"recovered":false` (or without
    /// the flag).
    pub(crate) not_recovered: u64,
    /// `--recover` resubscribes that had no position to send: the room's
    /// acks and messages carried none (it keeps no history).
    pub(crate) no_position: u64,
    /// Messages that arrived as replay (after a recovered `ack`, up to the
    /// offset it named).
    pub(crate) replayed: u64,
    /// What the clients received, accounted across their connections:
    /// `expected` is every accepted publish × `opened`.
    pub(crate) delivery: DeliveryReport,
}

impl RecoveryReport {
    fn merge(&mut self, o: &RecoveryReport) {
        self.since |= o.since;
        self.clients += o.clients;
        self.opened += o.opened;
        self.reconnects += o.reconnects;
        self.reconnect_failed += o.reconnect_failed;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.no_position += o.no_position;
        self.replayed += o.replayed;
        self.delivery.merge(&o.delivery);
    }
}

/// CPU of the `--node-pid` processes while a message scenario published
/// and drained (read by the leader).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct NodeCpuReport {
    /// The pids measured.
    pub(crate) pids: Vec<u32>,
    /// Length of the window, seconds: from the "ready" exchange (every
    /// connection subscribed) to the end of the drain.
    pub(crate) secs: f64,
    /// CPU the node processes used in it, seconds (utime + stime).
    pub(crate) cpu_secs: f64,
    /// `cpu_secs / secs`, percent of one core.
    pub(crate) cpu_percent: f64,
    /// `cpu_secs` per accepted publish (all processes), µs.
    pub(crate) per_publish_us: f64,
}

/// What `history` measured: N rooms filled with M messages each.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HistoryReport {
    /// Rooms filled.
    pub(crate) rooms: u64,
    /// Messages published into each room.
    pub(crate) messages_per_room: u64,
    /// Padding of each payload (`--payload-bytes`).
    pub(crate) payload_bytes: u64,
    /// Rooms whose history was read back to check what is kept.
    pub(crate) sampled_rooms: u64,
    /// Fewest messages a sampled room's history held (`null`: the rooms
    /// keep no history, 404).
    pub(crate) kept_per_room: Option<u64>,
    /// `fanout_history_bytes` of the first node before publishing (`null`
    /// when its `/metrics` has no such gauge).
    pub(crate) history_bytes_before: Option<f64>,
    /// The same gauge after the last publish.
    pub(crate) history_bytes_after: Option<f64>,
    /// `(after − before) / rooms`.
    pub(crate) history_bytes_per_room: Option<f64>,
    /// Rise of `fanout_history_evicted_total`: rooms whose history the
    /// node dropped to stay within its memory budget.
    pub(crate) evicted_rooms: Option<f64>,
    /// The `--node-pid`s whose RSS was read.
    pub(crate) pids: Vec<u32>,
    /// Summed VmRSS before the first publish, KiB.
    pub(crate) rss_before_kib: u64,
    /// Summed VmRSS after the last publish and `--settle`, KiB.
    pub(crate) rss_after_kib: u64,
    /// `(after − before) × 1024 / rooms` (`null` without `--node-pid`).
    pub(crate) rss_per_room_bytes: Option<f64>,
}

/// Adds one error to a bounded map of error kinds.
pub(crate) fn count_error(map: &mut BTreeMap<String, u64>, err: String) {
    if map.len() >= MAX_ERROR_KINDS && !map.contains_key(&err) {
        *map.entry("other".into()).or_default() += 1;
    } else {
        *map.entry(err).or_default() += 1;
    }
}

fn sum_maps(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// Rounds to two decimals, for readable JSON.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Report {
    /// Adds a child's report into this one (raw fields only; call
    /// [`Report::finish`] afterwards).
    pub(crate) fn merge(&mut self, o: &Report) {
        self.complete &= o.complete;
        self.elapsed_secs = self.elapsed_secs.max(o.elapsed_secs);
        self.connections.merge(&o.connections);
        merge_opt(&mut self.publish, &o.publish, PublishReport::merge);
        merge_opt(&mut self.delivery, &o.delivery, DeliveryReport::merge);
        merge_opt(&mut self.churn, &o.churn, ChurnReport::merge);
        merge_opt(&mut self.recovery, &o.recovery, RecoveryReport::merge);
        // Measured by the leader only, and identical in every child.
        if self.server.is_none() {
            self.server.clone_from(&o.server);
        }
        if self.node_cpu.is_none() {
            self.node_cpu.clone_from(&o.node_cpu);
        }
        if self.history.is_none() {
            self.history.clone_from(&o.history);
        }
        if self.ramp.is_none() {
            self.ramp.clone_from(&o.ramp);
        }
        self.histogram = match (self.histogram.take(), &o.histogram) {
            (Some(a), Some(b)) => match merge_b64(&a, b) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.errors.push(e);
                    Some(a)
                }
            },
            (a, b) => a.or_else(|| b.clone()),
        };
        for e in &o.errors {
            if self.errors.len() < MAX_ERRORS {
                self.errors.push(e.clone());
            }
        }
    }

    /// Computes the derived fields from the raw ones.
    pub(crate) fn finish(&mut self) {
        let c = &mut self.connections;
        c.rate = if c.secs > 0.0 {
            round2(c.connected as f64 / c.secs)
        } else {
            0.0
        };
        c.secs = (c.secs * 1000.0).round() / 1000.0;
        if let Some(p) = &mut self.publish {
            p.max_lag_ms = round2(p.max_lag_ms);
            p.target_rate = round2(p.target_rate);
            let secs = p.last_us.saturating_sub(p.first_us) as f64 / 1e6;
            p.achieved_rate = if secs > 0.0 {
                round2(p.accepted as f64 / secs)
            } else {
                0.0
            };
        }
        if let Some(d) = &mut self.delivery {
            d.finish();
        }
        if let Some(r) = &mut self.recovery {
            r.delivery.finish();
        }
        if let Some(n) = &mut self.node_cpu {
            let accepted = self.publish.as_ref().map_or(0, |p| p.accepted);
            n.per_publish_us = if accepted > 0 {
                round2(n.cpu_secs * 1e6 / accepted as f64)
            } else {
                0.0
            };
        }
        if let Some(h) = &self.histogram {
            match latency::from_base64(h) {
                Ok(h) => self.latency_ms = Some(LatencySummary::of(&h)),
                Err(e) => self.errors.push(e.to_string()),
            }
        }
        self.elapsed_secs = round2(self.elapsed_secs);
        self.errors.truncate(MAX_ERRORS);
    }

    /// Records a problem (bounded).
    pub(crate) fn error(&mut self, e: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e.into());
        }
    }

    /// The human summary printed on stderr.
    pub(crate) fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        let _ = writeln!(
            s,
            "{} — {} in {:.1}s over {} process(es), {} node(s), codec {}",
            self.scenario,
            if self.complete {
                "complete"
            } else {
                "INCOMPLETE"
            },
            self.elapsed_secs,
            self.procs,
            self.nodes.len(),
            self.codec
        );
        if c.target > 0 {
            let _ = writeln!(
                s,
                "  connections: {}/{} in {:.2}s ({:.0}/s), {} failed, {} dropped",
                c.connected,
                c.target,
                c.secs,
                c.rate,
                c.failed,
                c.dropped()
            );
        }
        if c.listen_overflows > 0 {
            let _ = writeln!(
                s,
                "    {} SYNs dropped by a full accept queue while connecting (1 s retransmit each): \
                 lower --connect-concurrency or raise the node's listen backlog",
                c.listen_overflows
            );
        }
        for (e, n) in c.errors.iter().chain(&c.closed_by_server) {
            let _ = writeln!(s, "    {n} × {e}");
        }
        if let Some(p) = &self.publish {
            let _ = writeln!(
                s,
                "  publish: {}/{} accepted at {:.1}/s (target {:.1}/s), {} failed, max lag {:.1} ms",
                p.accepted, p.attempted, p.achieved_rate, p.target_rate, p.failed, p.max_lag_ms
            );
        }
        if let Some(d) = &self.delivery {
            let _ = writeln!(
                s,
                "  delivery: {}/{} received, loss {}, duplicates {}, order violations {}, unexpected {}, {:.0} deliveries/s",
                d.received,
                d.expected,
                d.loss,
                d.duplicates,
                d.order_violations,
                d.unexpected,
                d.deliveries_per_sec
            );
        }
        if let Some(l) = &self.latency_ms {
            let _ = writeln!(
                s,
                "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
                l.p50, l.p90, l.p99, l.max, l.count
            );
        }
        if let Some(v) = &self.server {
            let _ = writeln!(
                s,
                "  server: RSS {} → {} KiB = {:.0} B/connection over {} connections; CPU at rest {:.2}% over {:.1}s",
                v.rss_before_kib,
                v.rss_after_kib,
                v.rss_per_connection_bytes,
                v.connections,
                v.cpu_percent,
                v.hold_secs
            );
        }
        if let Some(r) = &self.ramp {
            for st in &r.steps {
                let mut cpu = String::new();
                for (who, per) in [
                    ("node", st.node_cpu_per_publish_us),
                    ("Redis", st.redis_cpu_per_publish_us),
                ] {
                    if let Some(us) = per {
                        let _ = write!(cpu, ", {who} CPU {us:.1} µs/publish");
                    }
                }
                let _ = writeln!(
                    s,
                    "  ramp {:>10.1}/s: {} achieved {:.1}/s, p99 {:.2} ms, loss {}, {:.0} deliveries/s{cpu} {}",
                    st.rate,
                    if st.pass { "pass" } else { "FAIL" },
                    st.achieved_rate,
                    st.latency_ms.p99,
                    st.loss,
                    st.deliveries_per_sec,
                    st.reason
                );
            }
            match (r.best_rate, r.best_achieved_rate) {
                (Some(b), Some(k)) => {
                    let _ = writeln!(
                        s,
                        "  ramp: best rate {b:.1}/s (knee: {k:.1} publishes/s achieved)"
                    );
                }
                (Some(b), None) => {
                    let _ = writeln!(s, "  ramp: best rate {b:.1}/s");
                }
                (None, _) => {
                    let _ = writeln!(s, "  ramp: no step passed");
                }
            }
        }
        if let Some(ch) = &self.churn {
            let _ = writeln!(
                s,
                "  churn: {} opened, {} failed, {} closed, {} dropped",
                ch.opened, ch.failed, ch.closed, ch.dropped
            );
        }
        if let Some(r) = &self.recovery {
            recovery_summary(&mut s, r);
        }
        if let Some(n) = &self.node_cpu {
            let _ = writeln!(
                s,
                "  node CPU while publishing: {:.2} s over {:.1} s ({:.1}% of one core), {:.1} µs per publish",
                n.cpu_secs, n.secs, n.cpu_percent, n.per_publish_us
            );
        }
        if let Some(h) = &self.history {
            history_summary(&mut s, h);
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }
}

fn recovery_summary(s: &mut String, r: &RecoveryReport) {
    let d = &r.delivery;
    let _ = writeln!(
        s,
        "  recovery: {}/{} clients, {} reconnects {} ({} failed): {} recovered, {} not recovered, {} replayed",
        r.opened,
        r.clients,
        r.reconnects,
        if r.since {
            "with since"
        } else {
            "without since"
        },
        r.reconnect_failed,
        r.recovered,
        r.not_recovered,
        r.replayed
    );
    let _ = writeln!(
        s,
        "    across reconnects: {}/{} received, loss {}, duplicates {}, order violations {}, unexpected {}",
        d.received, d.expected, d.loss, d.duplicates, d.order_violations, d.unexpected
    );
    if r.no_position > 0 {
        let _ = writeln!(
            s,
            "    {} comebacks had no position to resume from: the room keeps no history (no [[history]] rule matches it)",
            r.no_position
        );
    }
}

fn history_summary(s: &mut String, h: &HistoryReport) {
    let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    let _ = writeln!(
        s,
        "  history: {} rooms × {} messages of {} B padding; kept per sampled room: {}",
        h.rooms,
        h.messages_per_room,
        h.payload_bytes,
        h.kept_per_room
            .map_or("none (no history)".to_string(), |k| k.to_string())
    );
    let _ = writeln!(
        s,
        "    fanout_history_bytes {} → {} = {} B/room; rooms evicted {}; RSS {} → {} KiB = {} B/room",
        opt(h.history_bytes_before),
        opt(h.history_bytes_after),
        opt(h.history_bytes_per_room),
        opt(h.evicted_rooms),
        h.rss_before_kib,
        h.rss_after_kib,
        opt(h.rss_per_room_bytes)
    );
}

fn merge_opt<T: Clone>(into: &mut Option<T>, from: &Option<T>, f: fn(&mut T, &T)) {
    match (into.as_mut(), from) {
        (Some(a), Some(b)) => f(a, b),
        (None, Some(b)) => *into = Some(b.clone()),
        _ => {}
    }
}

fn merge_b64(a: &str, b: &str) -> Result<String, String> {
    let mut ha = latency::from_base64(a).map_err(|e| e.to_string())?;
    let hb = latency::from_base64(b).map_err(|e| e.to_string())?;
    latency::merge(&mut ha, &hb);
    latency::to_base64(&ha).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(received: u64, lat_us: u64) -> Report {
        let mut h = latency::new_histogram();
        for _ in 0..received {
            latency::record(&mut h, lat_us);
        }
        Report {
            scenario: "fanout".into(),
            complete: true,
            connections: ConnectReport {
                target: 10,
                connected: 10,
                secs: 1.0,
                ..Default::default()
            },
            publish: Some(PublishReport {
                accepted: 50,
                attempted: 50,
                first_us: 1_000_000,
                last_us: 2_000_000,
                ..Default::default()
            }),
            delivery: Some(DeliveryReport {
                expected: 100,
                received,
                first_us: 1_000_000,
                last_us: 3_000_000,
                ..Default::default()
            }),
            histogram: Some(latency::to_base64(&h).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn merged_reports_add_counts_and_histograms() {
        let mut a = child(100, 1_000);
        a.merge(&child(99, 9_000));
        a.finish();
        let d = a.delivery.as_ref().unwrap();
        assert_eq!((d.expected, d.received, d.loss), (200, 199, 1));
        assert_eq!(d.deliveries_per_sec, 99.5);
        assert_eq!(a.connections.connected, 20);
        assert_eq!(a.connections.rate, 20.0);
        assert_eq!(a.publish.as_ref().unwrap().achieved_rate, 100.0);
        let l = a.latency_ms.as_ref().unwrap();
        assert_eq!(l.count, 199);
        assert!(
            (l.p50 - 1.0).abs() < 0.01 && (l.p99 - 9.0).abs() < 0.01,
            "{l:?}"
        );
        assert!(a.summary().contains("latency ms"), "{}", a.summary());
    }

    #[test]
    fn recovery_counts_merge_and_loss_is_derived_across_processes() {
        let part = |received, recovered| {
            let mut r = child(10, 1_000);
            r.recovery = Some(RecoveryReport {
                since: true,
                clients: 3,
                opened: 3,
                reconnects: 5,
                recovered,
                not_recovered: 5 - recovered,
                delivery: DeliveryReport {
                    expected: 300,
                    received,
                    ..DeliveryReport::default()
                },
                ..RecoveryReport::default()
            });
            r
        };
        let mut a = part(300, 5);
        a.merge(&part(290, 4));
        a.finish();
        let r = a.recovery.as_ref().unwrap();
        assert_eq!((r.clients, r.reconnects), (6, 10));
        assert_eq!((r.recovered, r.not_recovered), (9, 1));
        assert_eq!((r.delivery.expected, r.delivery.loss), (600, 10));
        let text = a.summary();
        assert!(text.contains("9 recovered, 1 not recovered"), "{text}");
        assert!(text.contains("590/600 received, loss 10"), "{text}");
    }
}
