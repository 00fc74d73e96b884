//! Metric names and the helpers that record them, in one place so that the
//! names in dashboards and alerts are defined once.
//!
//! Recording goes through the `metrics` facade; [`install`] sets up the
//! Prometheus recorder whose text `/metrics` renders. The facade's recorder
//! is process-global by design (it is what lets every module record without
//! passing a registry around); installation is idempotent so tests that run
//! several nodes in one process share it.

use std::fmt::Write as _;
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use fanout_protocol::{CloseCode, Name};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open connections, by tenant: a series for each of the `metrics.top_tenants`
/// tenants with the most connections, the others summed in
/// `tenant="(other)"` (always present). Rendered at scrape time from
/// [`TenantConnections`], so that a tenant gone leaves no series behind.
pub const CONNECTIONS: &str = "fanout_connections";
/// The `tenant` label value of the tenants beyond the top ones; not a
/// valid tenant name, so it never collides with one.
pub const OTHER_TENANTS: &str = "(other)";
/// Connections opened (authenticated and admitted).
pub const CONNECTIONS_OPENED: &str = "fanout_connections_opened_total";
/// Connections closed, by close code label.
pub const CONNECTIONS_CLOSED: &str = "fanout_connections_closed_total";
/// Frames received from clients, by type.
pub const MESSAGES_IN: &str = "fanout_messages_in_total";
/// Frames written to clients.
pub const MESSAGES_OUT: &str = "fanout_messages_out_total";
/// Messages accepted for publishing, by source (ws, http) and scope.
pub const PUBLISHES: &str = "fanout_publishes_total";
/// Frames queued to local connections by broadcasts.
pub const DELIVERIES: &str = "fanout_deliveries_total";
/// Frames not delivered, by reason.
pub const DROPPED: &str = "fanout_dropped_total";
/// Connections closed with 4009.
pub const SLOW_CONSUMER_CLOSES: &str = "fanout_slow_consumer_closes_total";
/// Refused tokens, by reason.
pub const AUTH_FAILURES: &str = "fanout_auth_failures_total";
/// Error frames sent, by code.
pub const CLIENT_ERRORS: &str = "fanout_client_errors_total";
/// Seconds from a message's acceptance to its last local enqueue.
pub const FANOUT_LATENCY: &str = "fanout_fanout_latency_seconds";
/// Messages sent by route: local, direct (node inboxes), room_channel, tenant_channel.
pub const ROUTED: &str = "fanout_routed_messages_total";
/// Seconds a cross-node publish took in Redis (script or PUBLISH round trip).
pub const REDIS_PUBLISH_LATENCY: &str = "fanout_redis_publish_seconds";
/// Seconds from a message's acceptance on its origin node to its arrival here.
pub const PUBSUB_LAG: &str = "fanout_pubsub_lag_seconds";
/// Cross-node messages lost because the pub/sub receive buffer overflowed.
pub const PUBSUB_LAGGED: &str = "fanout_pubsub_lagged_total";
/// Cross-node messages dropped on receipt, by reason.
pub const PUBSUB_DROPPED: &str = "fanout_pubsub_dropped_total";
/// Full resubscribes and re-registrations (start, reconnects, probe failures).
pub const RESUBSCRIBES: &str = "fanout_resubscribes_total";
/// Subscriber probes that did not come back.
pub const PROBE_FAILURES: &str = "fanout_probe_failures_total";
/// Redis Cluster: resubscribes and re-registrations of one shard's slots
/// (the shard reconnected, was promoted, took slots over, or lost a probe).
pub const SHARD_RESYNCS: &str = "fanout_redis_shard_resyncs_total";
/// Redis Cluster: windows during which some of a shard's subscriptions
/// were not in place (from its reconnect, promotion or slot move to its
/// resync), in seconds: messages published into its slots then were lost
/// for this node's members (rooms with history repair them).
pub const SHARD_GAP_SECONDS: &str = "fanout_redis_shard_gap_seconds";
/// Cross-node sends that reached no subscriber of a live host (a publish
/// returns its receivers), by route (`room`, `user`): that host's members
/// missed the message. Nonzero while a node resubscribes after a Redis
/// (Cluster) failover or slot migration, or while a subscriber connection
/// is down; rooms with history repair it.
pub const UNHEARD: &str = "fanout_redis_unheard_total";
/// Publishes answered 503 because Redis did not answer in time, or the
/// connection broke, after the command may have been sent: the message may
/// still have been delivered (the 503 says so; a retry with the same
/// idempotency key is safe).
pub const PUBLISH_OUTCOME_UNKNOWN: &str = "fanout_publish_outcome_unknown_total";
/// Registry entries this node rewrote from its own view after a registry
/// script failed or its outcome was unknown (a Redis timeout, a lost script
/// cache), by outcome (`ok`, `failed`: retried at the next heartbeat).
pub const REGISTRY_REPAIRS: &str = "fanout_redis_registry_repairs_total";
/// Departures of a draining node's connections that did not fit in the
/// registry actor's queue (its deregistration removes them instead).
pub const REGISTRY_QUEUE_FULL: &str = "fanout_redis_registry_queue_full_total";
/// Registry fields and hosts of nodes gone from the node index that the
/// audit removed (left behind when a node's own index was lost).
pub const AUDIT_REMOVED: &str = "fanout_redis_audit_removed_total";
/// `leave` events announced for users whose connections went without a
/// session to announce it, by cause (`sweep`: their node died; `repair`,
/// `audit`, `drain`).
pub const DEPARTURES: &str = "fanout_departures_total";
/// Redis Cluster: failed reads of the slot map.
pub const TOPOLOGY_REFRESH_FAILURES: &str = "fanout_redis_topology_refresh_failures_total";
/// Live nodes in the cluster as this node sees them.
pub const CLUSTER_NODES: &str = "fanout_cluster_nodes";
/// Failed accepts, by kind (`fd_exhausted`, `other`); each is followed by a backoff.
pub const ACCEPT_ERRORS: &str = "fanout_accept_errors_total";
/// HTTP API requests, by route and status.
pub const HTTP_REQUESTS: &str = "fanout_http_requests_total";
/// Rooms whose history the embedded bus dropped to stay within `limits.history_memory_bytes`.
pub const HISTORY_EVICTED: &str = "fanout_history_evicted_total";
/// Bytes of room history the embedded bus holds (stored frames and overhead).
pub const HISTORY_BYTES: &str = "fanout_history_bytes";
/// Idempotency keys the embedded bus forgot early to stay within `limits.idempotency_keys`.
pub const IDEMPOTENCY_EVICTED: &str = "fanout_idempotency_evicted_total";
/// Publishes not delivered again because their idempotency key was already accepted.
pub const IDEMPOTENT_DUPLICATES: &str = "fanout_idempotent_duplicates_total";
/// Recovering subscribes, by outcome (`recovered`, `not_recovered`).
pub const RECOVERIES: &str = "fanout_recoveries_total";
/// Listener connections in HTTP (accepted, not upgraded to a WebSocket).
pub const HTTP_CONNECTIONS: &str = "fanout_http_connections";
/// HTTP connections closed by a limit (`limit`: `header_timeout`,
/// `idle_timeout`), and requests refused or connections closed beyond
/// `http.max_connections` (`limit="max_connections"`).
pub const HTTP_LIMITED: &str = "fanout_http_limited_total";
/// Room stream anomalies seen by this node, by kind: `duplicate` (dropped),
/// `reordered` (held until the missing offsets came), `filled` (from
/// history), `lost` (could not be filled: members closed with 4010).
pub const STREAM_EVENTS: &str = "fanout_stream_events_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(FANOUT_LATENCY.into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(REDIS_PUBLISH_LATENCY.into()),
                        &[
                            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                            0.5, 1.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PUBSUB_LAG.into()),
                        &[
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            5.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(SHARD_GAP_SECONDS.into()),
                        &[0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding
            // application's); then ours only renders what it records itself.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Open connections per tenant, for [`CONNECTIONS`]. Process-wide like the
/// recorder (one node per process in production); a tenant's entry goes
/// with its last connection.
#[derive(Debug, Default)]
pub struct TenantConnections {
    counts: DashMap<Name, u64>,
}

impl TenantConnections {
    fn opened(&self, tenant: &Name) {
        *self.counts.entry(tenant.clone()).or_insert(0) += 1;
    }

    fn closed(&self, tenant: &Name) {
        if let dashmap::Entry::Occupied(mut e) = self.counts.entry(tenant.clone()) {
            *e.get_mut() = e.get().saturating_sub(1);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// The [`CONNECTIONS`] family in Prometheus text: the `top` tenants with
    /// the most connections (ties by name), then `tenant="(other)"` with
    /// the rest (0 when there is none). At most `top + 1` series.
    pub fn render(&self, top: usize) -> String {
        let mut counts: Vec<(Name, u64)> = self
            .counts
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other: u64 = counts.iter().skip(top).map(|(_, n)| n).sum();
        let mut text = format!("# TYPE {CONNECTIONS} gauge\n");
        for (tenant, n) in counts.iter().take(top) {
            // Tenant names need no escaping: letters, digits and _ . : @ -.
            let _ = writeln!(text, "{CONNECTIONS}{{tenant=\"{tenant}\"}} {n}");
        }
        let _ = writeln!(text, "{CONNECTIONS}{{tenant=\"{OTHER_TENANTS}\"}} {other}");
        text
    }
}

/// The process's [`TenantConnections`].
pub fn tenant_connections() -> &'static TenantConnections {
    static TENANTS: LazyLock<TenantConnections> = LazyLock::new(TenantConnections::default);
    &TENANTS
}

pub(crate) fn connection_opened(tenant: &Name) {
    tenant_connections().opened(tenant);
    counter!(CONNECTIONS_OPENED).increment(1);
}

pub(crate) fn connection_closed(tenant: &Name) {
    tenant_connections().closed(tenant);
}

pub(crate) fn http_connection_opened() {
    gauge!(HTTP_CONNECTIONS).increment(1.0);
}

pub(crate) fn http_connection_closed() {
    gauge!(HTTP_CONNECTIONS).decrement(1.0);
}

pub(crate) fn http_limited(limit: &'static str) {
    counter!(HTTP_LIMITED, "limit" => limit).increment(1);
}

pub(crate) fn close_code(code: CloseCode) {
    counter!(CONNECTIONS_CLOSED, "code" => code.label()).increment(1);
}

/// A connection that ended without a close handshake (the peer vanished).
pub(crate) fn connection_vanished() {
    counter!(CONNECTIONS_CLOSED, "code" => "abnormal").increment(1);
}

pub(crate) fn frame_in(kind: &'static str) {
    counter!(MESSAGES_IN, "type" => kind).increment(1);
}

pub(crate) fn frames_out(n: u64) {
    counter!(MESSAGES_OUT).increment(n);
}

pub(crate) fn published(source: &'static str, scope: &'static str) {
    counter!(PUBLISHES, "source" => source, "scope" => scope).increment(1);
}

pub(crate) fn delivered(queued: u64, accepted_at: Instant) {
    counter!(DELIVERIES).increment(queued);
    histogram!(FANOUT_LATENCY).record(accepted_at.elapsed().as_secs_f64());
}

pub(crate) fn dropped(reason: &'static str) {
    counter!(DROPPED, "reason" => reason).increment(1);
}

pub(crate) fn slow_consumer_closed() {
    counter!(SLOW_CONSUMER_CLOSES).increment(1);
    counter!(DROPPED, "reason" => "slow_consumer").increment(1);
}

pub(crate) fn auth_failed(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

pub(crate) fn client_error(code: u16) {
    counter!(CLIENT_ERRORS, "code" => code.to_string()).increment(1);
}

pub(crate) fn http_request(route: String, status: u16) {
    counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

pub(crate) fn routed(route: &'static str, n: u64) {
    counter!(ROUTED, "route" => route).increment(n);
}

pub(crate) fn redis_publish(elapsed: std::time::Duration) {
    histogram!(REDIS_PUBLISH_LATENCY).record(elapsed.as_secs_f64());
}

pub(crate) fn pubsub_lag(ms: u64) {
    histogram!(PUBSUB_LAG).record(ms as f64 / 1000.0);
}

pub(crate) fn pubsub_lagged(n: u64) {
    counter!(PUBSUB_LAGGED).increment(n);
}

pub(crate) fn pubsub_dropped(reason: &'static str) {
    counter!(PUBSUB_DROPPED, "reason" => reason).increment(1);
}

pub(crate) fn resubscribed() {
    counter!(RESUBSCRIBES).increment(1);
}

pub(crate) fn probe_failed() {
    counter!(PROBE_FAILURES).increment(1);
}

pub(crate) fn shard_resynced() {
    counter!(SHARD_RESYNCS).increment(1);
}

pub(crate) fn unheard(route: &'static str, n: u64) {
    if n > 0 {
        counter!(UNHEARD, "route" => route).increment(n);
    }
}

pub(crate) fn publish_outcome_unknown() {
    counter!(PUBLISH_OUTCOME_UNKNOWN).increment(1);
}

pub(crate) fn shard_gap(d: std::time::Duration) {
    histogram!(SHARD_GAP_SECONDS).record(d.as_secs_f64());
}

pub(crate) fn registry_repairs(ok: u64, failed: u64) {
    if ok > 0 {
        counter!(REGISTRY_REPAIRS, "outcome" => "ok").increment(ok);
    }
    if failed > 0 {
        counter!(REGISTRY_REPAIRS, "outcome" => "failed").increment(failed);
    }
}

pub(crate) fn registry_queue_full() {
    counter!(REGISTRY_QUEUE_FULL).increment(1);
}

pub(crate) fn audit_removed(n: u64) {
    if n > 0 {
        counter!(AUDIT_REMOVED).increment(n);
    }
}

pub(crate) fn departures(cause: &'static str, n: u64) {
    if n > 0 {
        counter!(DEPARTURES, "cause" => cause).increment(n);
    }
}

pub(crate) fn redis_topology_refresh_failed() {
    counter!(TOPOLOGY_REFRESH_FAILURES).increment(1);
}

pub(crate) fn cluster_nodes(n: usize) {
    gauge!(CLUSTER_NODES).set(n as f64);
}

pub(crate) fn accept_error(kind: &'static str) {
    counter!(ACCEPT_ERRORS, "kind" => kind).increment(1);
}

pub(crate) fn history_evicted(rooms: u64) {
    counter!(HISTORY_EVICTED).increment(rooms);
}

pub(crate) fn history_bytes(bytes: usize) {
    gauge!(HISTORY_BYTES).set(bytes as f64);
}

pub(crate) fn idempotency_evicted() {
    counter!(IDEMPOTENCY_EVICTED).increment(1);
}

pub(crate) fn idempotent_duplicate() {
    counter!(IDEMPOTENT_DUPLICATES).increment(1);
}

pub(crate) fn recovery(recovered: bool) {
    let outcome = if recovered {
        "recovered"
    } else {
        "not_recovered"
    };
    counter!(RECOVERIES, "outcome" => outcome).increment(1);
}

pub(crate) fn stream_event(kind: &'static str, n: u64) {
    counter!(STREAM_EVENTS, "kind" => kind).increment(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new("tenant", s).unwrap()
    }

    #[test]
    fn tenant_series_are_the_top_ones_plus_other_and_leave_with_their_tenant() {
        let t = TenantConnections::default();
        assert_eq!(
            t.render(2),
            "# TYPE fanout_connections gauge\nfanout_connections{tenant=\"(other)\"} 0\n"
        );
        for (tenant, n) in [("a", 1), ("b", 3), ("c", 2), ("d", 2), ("other", 1)] {
            for _ in 0..n {
                t.opened(&name(tenant));
            }
        }
        let text = t.render(2);
        let series: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            series,
            [
                "fanout_connections{tenant=\"b\"} 3",
                "fanout_connections{tenant=\"c\"} 2",
                "fanout_connections{tenant=\"(other)\"} 4",
            ]
        );
        for _ in 0..3 {
            t.closed(&name("b"));
        }
        t.closed(&name("zzz"));
        assert!(!t.render(10).contains("\"b\""));
        assert_eq!(t.render(10).lines().count(), 1 + 4 + 1);
        assert!(
            t.render(0)
                .ends_with("fanout_connections{tenant=\"(other)\"} 6\n")
        );
    }
}
