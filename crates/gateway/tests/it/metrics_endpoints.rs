//! Operational endpoints: `/metrics` only on `metrics_listen` when it is
//! set, and a per-tenant connection gauge of bounded cardinality whose
//! series leave with their tenants.

use std::net::SocketAddr;
use std::time::Duration;

use fanout_gateway::Server;

use crate::cluster_support::{ClusterNode, ProcessNode};
use crate::redis_support::eventually;
use crate::support::{TestServer, TokenSpec, WAIT, test_config};

async fn get(url: &str) -> (u16, String) {
    let resp = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .expect("answer in time")
        .expect("http request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The `fanout_connections` series: (tenant, value), in the order listed.
fn tenant_series(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("fanout_connections{tenant=\""))
        .map(|rest| {
            let (tenant, value) = rest.split_once("\"} ").expect("a tenant series");
            (tenant.to_owned(), value.parse().expect("a count"))
        })
        .collect()
}

#[tokio::test]
async fn with_metrics_listen_metrics_are_served_there_only() {
    let mut config = test_config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(config).await.expect("node starts");
    let main = server.local_addr();
    let ops: SocketAddr = server.metrics_addr().expect("metrics listener");
    let shutdown = server.shutdown_token();
    let task = tokio::spawn(server.run());

    let (status, body) = get(&format!("http://{main}/metrics")).await;
    assert_eq!(status, 404, "/metrics on the public listener: {body}");
    let (status, body) = get(&format!("http://{ops}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("fanout_connections{tenant=\"(other)\"}"),
        "{body}"
    );
    // Health checks stay on both: load balancers probe the public port.
    for addr in [main, ops] {
        assert_eq!(get(&format!("http://{addr}/healthz")).await.0, 200);
        assert_eq!(get(&format!("http://{addr}/readyz")).await.0, 200);
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("run task")
        .expect("run result");
}

#[tokio::test]
async fn without_metrics_listen_metrics_are_served_on_the_main_listener() {
    let server = TestServer::spawn().await;
    let (status, body) = get(&server.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE fanout_connections gauge"), "{body}");
    server.stop().await;
}

/// A node of its own (a process: the gauge is process-wide), so that the
/// series it lists are exactly those of this test's clients.
#[tokio::test]
async fn tenant_series_are_the_top_tenants_plus_other_and_leave_with_their_tenants() {
    let node = ProcessNode::spawn("").await; // metrics.top_tenants = 20 (default)
    // 25 tenants: "big" with 3 connections, "mid" with 2, t00..t22 with one.
    let mut clients = Vec::new();
    let mut tenants: Vec<(String, u64)> = vec![("big".into(), 3), ("mid".into(), 2)];
    tenants.extend((0..23).map(|i| (format!("t{i:02}"), 1)));
    for (tenant, n) in &tenants {
        for i in 0..*n {
            let spec = TokenSpec::new(&format!("u{i}"), tenant, &["lobby"]);
            clients.push(node.connect(&spec).await);
        }
    }
    // Ties are broken by name: big, mid, t00..t17, and the five others summed.
    let mut expected: Vec<(String, u64)> = tenants[..20].to_vec();
    expected.push(("(other)".into(), 5));
    let mut last = Vec::new();
    let listed = eventually(WAIT, async || {
        last = tenant_series(&get(&node.http_url("/metrics")).await.1);
        last == expected
    })
    .await;
    assert!(
        listed,
        "expected the top 20 and (other), 21 series:\n{expected:?}\ngot {} series:\n{last:?}",
        last.len()
    );

    // Every client leaves: no tenant series is left behind, only the total.
    drop(clients);
    let gone = eventually(WAIT, async || {
        last = tenant_series(&get(&node.http_url("/metrics")).await.1);
        last == [("(other)".to_owned(), 0)]
    })
    .await;
    assert!(gone, "series of gone tenants are still listed: {last:?}");
}

#[tokio::test]
async fn metrics_top_tenants_sets_how_many_tenants_have_a_series() {
    let node = ProcessNode::spawn("[metrics]\ntop_tenants = 1\n").await;
    let mut clients = Vec::new();
    for (sub, tenant) in [("u1", "acme"), ("u2", "acme"), ("u1", "globex")] {
        clients.push(node.connect(&TokenSpec::new(sub, tenant, &["lobby"])).await);
    }
    let mut last = Vec::new();
    let listed = eventually(WAIT, async || {
        last = tenant_series(&get(&node.http_url("/metrics")).await.1);
        last == [("acme".to_owned(), 2), ("(other)".to_owned(), 1)]
    })
    .await;
    assert!(listed, "{last:?}");
    drop(clients);
}
