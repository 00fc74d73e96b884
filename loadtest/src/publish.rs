//! Publishing through the backend HTTP API at a set rate.
//!
//! A publisher is sequential — one request in flight, the next sent only
//! after the answer — because the contract orders messages per publisher:
//! with several requests in flight their acceptance order (and so their
//! delivery order) would be the HTTP stack's choice, and the run would
//! report order violations the node did not cause. More throughput comes
//! from more publishers (`--publishers`), each owning its own streams.
//!
//! Requests are paced on a fixed schedule (request i is due at start + i/R)
//! and each payload carries its *due* time, so a publisher that falls behind
//! shows up as latency and as `max_lag_ms` rather than quietly lowering the
//! rate it measures at.
//!
//! The same client fills rooms in bulk (`/v1/publish/batch`, for `history`)
//! and reads what a node reports about them: a room's history, a metric of
//! `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use fanout_protocol::api::{
    BatchRequest, BatchResponse, ErrorResponse, HistoryResponse, PublishRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cli::Common;
use crate::report::PublishReport;
use crate::wire::{Probe, now_micros};

/// Longest wait for one publish answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Event name of every generated message.
pub(crate) const EVENT: &str = "lt";

/// Who a publish goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    /// Everyone in a room.
    Room(String),
    /// Every connection of a user.
    User(String),
}

/// One destination of a publisher, with the stream its messages form.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The destination.
    pub(crate) to: Address,
    /// The stream id carried in the payloads.
    pub(crate) stream: u64,
}

/// What one publisher does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// `http://host:port` of the node it publishes through.
    pub(crate) base: String,
    /// Messages to publish.
    pub(crate) count: u64,
    /// Messages per second.
    pub(crate) rate: f64,
    /// Destinations; each publish picks one at random (seeded).
    pub(crate) routes: Vec<Route>,
    /// Seed of the picks.
    pub(crate) seed: u64,
}

/// What publishing produced.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Counts and timings (raw; the report derives the rates).
    pub(crate) report: PublishReport,
    /// Accepted publishes per stream: what subscribers are owed.
    pub(crate) accepted: BTreeMap<u64, u64>,
    /// False when the deadline stopped it early.
    pub(crate) complete: bool,
}

impl Outcome {
    /// Adds another publisher's outcome.
    pub(crate) fn merge(&mut self, o: Outcome) {
        self.report.merge(&o.report);
        for (s, n) in o.accepted {
            *self.accepted.entry(s).or_default() += n;
        }
        self.complete &= o.complete;
    }
}

/// An HTTP API client for one run.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    api_key: String,
    tenant: String,
    pad: String,
}

impl Api {
    /// A client that never goes through a proxy (the targets are loopback,
    /// and an `HTTP_PROXY` in the environment must not send them elsewhere).
    pub(crate) fn new(common: &Common) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Api {
            http,
            api_key: common.api_key.clone(),
            tenant: common.tenant.clone(),
            pad: "x".repeat(common.payload_bytes),
        })
    }

    /// Runs the plans concurrently (one task each) and adds up their outcomes.
    pub(crate) async fn run_all(&self, plans: Vec<Plan>, deadline: Instant) -> Outcome {
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                let api = self.clone();
                tokio::spawn(async move { api.run(plan, deadline).await })
            })
            .collect();
        let mut total = Outcome {
            complete: true,
            ..Outcome::default()
        };
        for t in tasks {
            match t.await {
                Ok(o) => total.merge(o),
                Err(e) => {
                    total.complete = false;
                    *total
                        .report
                        .errors
                        .entry(format!("publisher task: {e}"))
                        .or_default() += 1;
                }
            }
        }
        total
    }

    /// Publishes `plan.count` messages at `plan.rate`, stopping at `deadline`.
    pub(crate) async fn run(&self, plan: Plan, deadline: Instant) -> Outcome {
        let mut out = Outcome {
            complete: true,
            ..Outcome::default()
        };
        out.report.target_rate = plan.rate;
        if plan.routes.is_empty() || plan.count == 0 || plan.rate <= 0.0 {
            return out;
        }
        let url = format!("{}/v1/publish", plan.base);
        let mut rng = StdRng::seed_from_u64(plan.seed);
        let mut seqs = vec![0u64; plan.routes.len()];
        let start = Instant::now();
        let start_wall = now_micros();
        out.report.first_us = start_wall;
        let period = Duration::from_secs_f64(1.0 / plan.rate);
        let mut max_lag = Duration::ZERO;
        for i in 0..plan.count {
            let due = start + period.mul_f64(i as f64);
            if due >= deadline {
                out.complete = false;
                break;
            }
            tokio::time::sleep_until(due).await;
            max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
            let r = if plan.routes.len() == 1 {
                0
            } else {
                rng.random_range(0..plan.routes.len())
            };
            let route = &plan.routes[r];
            let probe = Probe {
                s: route.stream,
                q: seqs[r],
                t: start_wall + (due - start).as_micros() as u64,
            };
            seqs[r] += 1;
            out.report.attempted += 1;
            match self.publish(&url, &route.to, probe).await {
                Ok(()) => {
                    out.report.accepted += 1;
                    *out.accepted.entry(route.stream).or_default() += 1;
                }
                Err(kind) => {
                    out.report.failed += 1;
                    *out.report.errors.entry(kind).or_default() += 1;
                }
            }
            out.report.last_us = now_micros();
        }
        out.report.max_lag_ms = max_lag.as_secs_f64() * 1000.0;
        out
    }

    /// One `POST /v1/publish/batch` of room messages, published in order:
    /// how many were accepted (all of them, or those before a failure) and
    /// the failure's short kind.
    pub(crate) async fn publish_batch(
        &self,
        base: &str,
        messages: &[(String, Probe)],
    ) -> (u64, Option<String>) {
        let body = BatchRequest {
            messages: messages
                .iter()
                .map(|(room, probe)| PublishRequest {
                    tenant: self.tenant.clone(),
                    room: Some(room.clone()),
                    user: None,
                    event: EVENT.into(),
                    data: probe.to_data(&self.pad),
                    idempotency_key: None,
                })
                .collect(),
        };
        let resp = match self
            .http
            .post(format!("{base}/v1/publish/batch"))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return (0, Some(request_error(&e))),
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        if status == 202 {
            let ids = serde_json::from_slice::<BatchResponse>(&bytes).map_or(0, |b| b.ids.len());
            (ids as u64, None)
        } else {
            let ids = serde_json::from_slice::<ErrorResponse>(&bytes)
                .ok()
                .and_then(|e| e.ids)
                .map_or(0, |ids| ids.len());
            (ids as u64, Some(format!("HTTP {status}")))
        }
    }

    /// How many messages `GET /v1/tenants/{t}/rooms/{room}/history` returns
    /// (at most the rule's size); `None` when the room keeps no history (404).
    pub(crate) async fn history_len(&self, base: &str, room: &str) -> Result<Option<u64>, String> {
        let url = format!("{base}/v1/tenants/{}/rooms/{room}/history", self.tenant);
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|e| request_error(&e))?;
        match resp.status().as_u16() {
            200 => resp
                .json::<HistoryResponse>()
                .await
                .map(|h| Some(h.messages.len() as u64))
                .map_err(|e| format!("history answer: {e}")),
            404 => Ok(None),
            other => Err(format!("history: HTTP {other}")),
        }
    }

    /// The values of un-labelled metrics in the node's `GET /metrics`, in
    /// the order of `names` (`None` for one it does not export).
    pub(crate) async fn metrics(
        &self,
        base: &str,
        names: &[&str],
    ) -> Result<Vec<Option<f64>>, String> {
        let resp = self
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| request_error(&e))?;
        if !resp.status().is_success() {
            return Err(format!("metrics: HTTP {}", resp.status().as_u16()));
        }
        let text = resp.text().await.map_err(|e| request_error(&e))?;
        Ok(names.iter().map(|n| metric_value(&text, n)).collect())
    }

    /// One `POST /v1/publish`; `Err` carries a short failure kind.
    async fn publish(&self, url: &str, to: &Address, probe: Probe) -> Result<(), String> {
        let (room, user) = match to {
            Address::Room(r) => (Some(r.clone()), None),
            Address::User(u) => (None, Some(u.clone())),
        };
        let body = PublishRequest {
            tenant: self.tenant.clone(),
            room,
            user,
            event: EVENT.into(),
            data: probe.to_data(&self.pad),
            idempotency_key: None,
        };
        let resp = self
            .http
            .post(url)
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .map_err(|e| request_error(&e))?;
        let status = resp.status();
        // Read the body so the connection goes back to the pool.
        let _ = resp.bytes().await;
        if status.as_u16() == 202 {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }
}

/// A failed request's short kind, for counting.
fn request_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_connect() {
        "connect".to_string()
    } else {
        "request failed".to_string()
    }
}

/// The value of the sample `name value` (no labels) in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next()? == name).then(|| parts.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_from_prometheus_text() {
        let text = "# TYPE fanout_history_bytes gauge\nfanout_history_bytes 1234\n\
                    fanout_history_bytes_other 9\nfanout_recoveries_total{outcome=\"recovered\"} 3\n";
        assert_eq!(metric_value(text, "fanout_history_bytes"), Some(1234.0));
        assert_eq!(metric_value(text, "fanout_recoveries_total"), None);
        assert_eq!(metric_value(text, "absent"), None);
    }
}
