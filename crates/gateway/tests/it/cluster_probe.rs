//! A subscriber connection that silently stops delivering is found by the
//! node's self-probe and replaced. The stall is real: a TCP proxy between
//! the node and Redis keeps the subscriber's socket open but stops passing
//! Redis's bytes to it, which is what a half-dead NAT entry or a wedged
//! middlebox does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster_support::{
    ClusterNode, PREFIX, ProcessNode, redis_toml, spawn_node, wait_for_cluster,
};
use crate::redis_support::{RedisServer, eventually};

/// Forwards loopback TCP to Redis; `stall()` silences the subscriber
/// connections open at that moment (later connections are not affected).
struct StallingProxy {
    port: u16,
    /// Connections accepted so far; a connection's number is its generation.
    accepted: Arc<AtomicU64>,
    /// Subscriber connections numbered at most this receive nothing.
    stalled_through: Arc<AtomicU64>,
}

impl StallingProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let stalled_through = Arc::new(AtomicU64::new(0));
        let (acc, stall) = (accepted.clone(), stalled_through.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let generation = acc.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, generation, stall.clone()));
            }
        });
        Self {
            port,
            accepted,
            stalled_through,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stall(&self) {
        self.stalled_through
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    generation: u64,
    stalled_through: Arc<AtomicU64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let is_subscriber = Arc::new(AtomicBool::new(false));
    let seen = is_subscriber.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if buf[..n]
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
            {
                seen.store(true, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let silenced = is_subscriber.load(Ordering::SeqCst)
            && generation <= stalled_through.load(Ordering::SeqCst);
        if silenced {
            continue; // swallowed: the socket stays open, nothing arrives
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}

use crate::support::metric_sum as counter;

#[tokio::test]
async fn a_silently_stalled_subscriber_is_detected_by_the_probe_and_replaced() {
    let redis = RedisServer::start().await;
    let proxy = StallingProxy::start(redis.port()).await;
    // A process of its own, so that its /metrics are its own.
    let behind_proxy = ProcessNode::spawn(&redis_toml(&proxy.url(), PREFIX)).await;
    let direct = spawn_node(&redis.url(), PREFIX, "direct", |_| {}).await;
    wait_for_cluster(&behind_proxy, 2).await;
    wait_for_cluster(&direct, 2).await;

    let mut member = behind_proxy.member("u1", "acme", "lobby").await;
    let room = |n: u64| json!({"tenant": "acme", "room": "lobby", "event": "e", "data": n});
    direct.publish_ok(room(1)).await;
    assert_eq!(member.recv_type("message").await["data"], 1);

    let metrics = || async {
        reqwest::get(behind_proxy.http_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = counter(&metrics().await, "fanout_probe_failures_total");

    proxy.stall();
    // Messages sent while the subscriber is silent may be lost; the node must
    // notice by itself and come back without any outside help.
    let recovered = eventually(Duration::from_secs(10), async || {
        counter(&metrics().await, "fanout_probe_failures_total") > before
    })
    .await;
    assert!(recovered, "the probe never noticed the stalled subscriber");

    // After the replacement (a new connection, not stalled) messages flow again.
    let flowing = eventually(Duration::from_secs(10), async || {
        if behind_proxy.readyz().await.0 != 200 {
            return false;
        }
        direct.publish(room(2)).await;
        matches!(member.next_event(Duration::from_millis(300)).await,
            Some(crate::support::Event::Frame(m)) if m["data"] == 2)
    })
    .await;
    assert!(
        flowing,
        "messages did not flow again after the subscriber was replaced"
    );
    assert!(counter(&metrics().await, "fanout_resubscribes_total") >= 2.0);
    assert!(
        behind_proxy.log().contains("probe lost"),
        "{}",
        behind_proxy.log()
    );
}
