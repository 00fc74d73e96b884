//! Operational endpoints and the drain (docs/protocol.md §4 close 1012, §5 ops).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_gateway::Server;
use serde_json::json;
use tokio_tungstenite::tungstenite;

use crate::support::{API_KEY, Client, TestServer, TokenSpec, WAIT, test_config};

async fn get_text(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("http request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_serving() {
    let server = TestServer::spawn().await;
    let (status, body) = get_text(&server.url("/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_text(&server.url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
}

/// The status of a WebSocket upgrade that the server refused.
async fn refused_upgrade_status(url: &str) -> u16 {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("answer in time")
    {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("upgrade accepted during the drain"),
    }
}

#[tokio::test]
async fn drain_refuses_new_work_closes_clients_with_1012_and_stops_within_grace() {
    let grace = Duration::from_secs(3);
    let mut server = TestServer::spawn_with(|c| c.shutdown.grace = grace).await;
    let mut a = server.client("u1", "acme", &["lobby"]).await;
    let mut b = server.client("u2", "acme", &["lobby"]).await;
    a.subscribe("lobby").await;
    assert_eq!(get_text(&server.url("/readyz")).await.0, 200);

    let started = Instant::now();
    server.shutdown.cancel();
    // The clients are not reading yet, so their sessions wait for the close
    // handshake and the drain is still in progress while we probe.
    let (status, body) = get_text(&server.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "503 names the reason: {body}");
    assert_eq!(refused_upgrade_status(&server.ws_url()).await, 503);
    let (status, body) = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","room":"lobby","event":"chat"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");

    for c in [&mut a, &mut b] {
        let (code, _) = c.expect_close().await;
        assert_eq!(code, 1012);
    }
    let task = server.task.take().expect("run task");
    tokio::time::timeout(grace, task)
        .await
        .expect("node stops within shutdown.grace")
        .expect("run task")
        .expect("run result");
    assert!(started.elapsed() < grace, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn drain_is_bounded_by_grace_even_with_a_client_that_never_answers() {
    let grace = Duration::from_millis(1500);
    let mut server = TestServer::spawn_with(|c| {
        c.shutdown.grace = grace;
        c.session.auth_timeout = Duration::from_secs(30);
    })
    .await;
    // Upgraded but never authenticates, never reads.
    let _silent = Client::connect(&server.ws_url(), None, None).await;
    let _ok = server.client("u1", "acme", &[]).await;
    let started = Instant::now();
    server.shutdown.cancel();
    let task = server.task.take().expect("run task");
    tokio::time::timeout(grace + Duration::from_millis(500), task)
        .await
        .expect("node stops within shutdown.grace")
        .expect("run task")
        .expect("run result");
    assert!(
        started.elapsed() <= grace + Duration::from_millis(250),
        "took {:?}",
        started.elapsed()
    );
}

/// Sum of every sample of `name` (all label sets); 0 when absent.
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn has_sample(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_activity() {
    let server = TestServer::spawn().await;
    let (status, before) = get_text(&server.url("/metrics")).await;
    assert_eq!(status, 200);

    // Activity: connect, subscribe, publish (client and HTTP), a refused token.
    let mut a = server.client("u1", "acme", &["lobby"]).await;
    let mut b = server.client("u2", "acme", &["lobby"]).await;
    a.subscribe("lobby").await;
    b.subscribe("lobby").await;
    let ack = a
        .request(
            json!({"type":"publish","room":"lobby","event":"chat","data":1}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack");
    b.recv_type("message").await;
    server.publish_room("acme", "lobby", "chat", json!(2)).await;
    a.recv_type("message").await;
    let mut bad_spec = TokenSpec::new("u3", "acme", &[]);
    bad_spec.secret = "some-other-secret-0123456789".into();
    let mut bad = Client::connect(&server.ws_url(), None, Some(&bad_spec.mint())).await;
    assert_eq!(bad.expect_close().await.0, 4001);

    let resp = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let after = resp.text().await.unwrap();

    assert!(has_sample(&after, "fanout_connections"), "{after}");
    for name in [
        "fanout_messages_in_total",
        "fanout_messages_out_total",
        "fanout_publishes_total",
        "fanout_deliveries_total",
        "fanout_auth_failures_total",
    ] {
        let (b, a) = (sample_sum(&before, name), sample_sum(&after, name));
        assert!(a > b, "{name} did not increase ({b} -> {a}):\n{after}");
    }
    assert!(
        after.contains("# TYPE fanout_fanout_latency_seconds histogram"),
        "{after}"
    );
    let bucket = "fanout_fanout_latency_seconds_bucket{le=\"+Inf\"}";
    let (b, a) = (sample_sum(&before, bucket), sample_sum(&after, bucket));
    assert!(a >= b + 2.0, "latency histogram grew {b} -> {a}:\n{after}");
    assert!(has_sample(&after, "fanout_fanout_latency_seconds_bucket"));
    assert!(has_sample(&after, "fanout_fanout_latency_seconds_count"));
}

#[tokio::test]
async fn metrics_listen_serves_ops_endpoints_on_a_second_port() {
    let mut config = test_config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(config).await.expect("node starts");
    let addr = server.local_addr();
    let ops: SocketAddr = server.metrics_addr().expect("metrics listener");
    assert_ne!(addr.port(), ops.port());
    let shutdown = server.shutdown_token();
    let task = tokio::spawn(server.run());

    // Something to count, through the main port.
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"tenant":"acme","room":"lobby","event":"chat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    let base = format!("http://{ops}");
    let (status, body) = get_text(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(has_sample(&body, "fanout_publishes_total"), "{body}");
    assert_eq!(get_text(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(get_text(&format!("{base}/readyz")).await.0, 200);
    // The API is not served on the ops port.
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/stats"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("run task")
        .expect("run result");
}

#[tokio::test]
async fn drain_closes_connections_still_authenticating_with_1012() {
    let server = TestServer::spawn_with(|c| {
        c.session.auth_timeout = Duration::from_secs(30);
        c.shutdown.grace = Duration::from_secs(10);
    })
    .await;
    // Connected, but no token yet: not in the hub.
    let mut pending = Client::connect(&server.ws_url(), None, None).await;
    let started = Instant::now();
    server.shutdown.cancel();
    let (code, _) = pending.expect_close().await;
    assert_eq!(code, 1012);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
}

/// SIGTERM in production: readiness turns false at once while clients keep
/// being served for `readiness_delay`; then they are closed with 1012 in
/// batches spread over `drain_window`, not all in one instant.
#[tokio::test]
async fn drain_waits_the_readiness_delay_then_closes_clients_spread_over_the_window() {
    let delay = Duration::from_millis(800);
    let window = Duration::from_millis(1500);
    let mut server = TestServer::spawn_with(|c| {
        c.shutdown.grace = Duration::from_secs(6);
        c.shutdown.readiness_delay = delay;
        c.shutdown.drain_window = window;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(server.client(&format!("u{i}"), "acme", &[]).await);
    }

    let signalled = Instant::now();
    server.shutdown.cancel();
    let (status, body) = get_text(&server.url("/readyz")).await;
    assert_eq!(status, 503, "readiness is false at once: {body}");
    // During the delay every client is still served.
    for c in &mut clients {
        c.assert_alive().await;
    }
    assert!(
        signalled.elapsed() < delay,
        "the liveness checks took {:?}, longer than the delay; the test proves nothing",
        signalled.elapsed()
    );

    let closes = futures_util::future::join_all(clients.iter_mut().map(async |c| {
        let (code, _) = c.expect_close().await;
        (code, signalled.elapsed())
    }))
    .await;
    let first = closes.iter().map(|(_, t)| *t).min().expect("clients");
    let last = closes.iter().map(|(_, t)| *t).max().expect("clients");
    assert!(closes.iter().all(|(code, _)| *code == 1012), "{closes:?}");
    assert!(
        first >= delay,
        "a client was closed {first:?} after the signal, before the delay"
    );
    assert!(
        last - first >= window / 2,
        "closes were not spread over the window: first {first:?}, last {last:?}"
    );
    assert!(
        last <= delay + window + Duration::from_millis(500),
        "the last close came {last:?} after the signal"
    );
    let task = server.task.take().expect("run task");
    tokio::time::timeout(Duration::from_secs(6), task)
        .await
        .expect("node stops within shutdown.grace")
        .expect("run task")
        .expect("run result");
}

/// Through `shutdown.readiness_delay` the node still serves publishes (a
/// load balancer may still route them here: that is what the delay is
/// for), from connected clients and through the API, and delivers them.
/// Once it starts closing clients, a publish is refused as "draining"
/// rather than blamed on the cluster bus: the caller is told to go
/// elsewhere, not that the cluster is broken.
#[tokio::test]
async fn publishes_are_served_through_the_readiness_delay_then_refused_as_draining() {
    let server = TestServer::spawn_with(|c| {
        c.shutdown.grace = Duration::from_secs(8);
        c.shutdown.readiness_delay = Duration::from_secs(2);
        c.shutdown.drain_window = Duration::from_secs(4);
    })
    .await;
    let mut a = server.client("u1", "acme", &["lobby"]).await;
    let mut b = server.client("u2", "acme", &["lobby"]).await;
    a.subscribe("lobby").await;
    b.subscribe("lobby").await;
    server.shutdown.cancel();
    let (status, body) = get_text(&server.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");

    // During the delay: both kinds of publish are accepted and delivered.
    let reply = a
        .request(
            json!({"type":"publish","room":"lobby","event":"chat","data":1}),
            7,
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let got = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","room":"lobby","event":"chat","data":2}),
        )
        .await;
    assert_eq!(got.0, 202, "{got:?}");
    for want in [1, 2] {
        let m = b.recv().await;
        assert_eq!(
            (m["type"].as_str(), &m["data"]),
            (Some("message"), &json!(want)),
            "{m}"
        );
    }

    // After the delay: refused as draining, not as a bus failure.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let got = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","room":"lobby","event":"chat"}),
        )
        .await;
    crate::support::assert_api_error(&got, 503, "draining");
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("bus"), "{got:?}");
    server.stop().await;
}
