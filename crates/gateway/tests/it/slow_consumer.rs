//! The slow-consumer policy (docs/protocol.md §6): a client that falls behind its
//! send queue is closed with 4009 while everyone else keeps receiving every
//! message in order, and the node lets go of it.
//!
//! Loopback TCP buffers hold megabytes (the sender's grows up to
//! `net.ipv4.tcp_wmem`'s maximum), so the slow client connects with a small
//! receive buffer and the tests publish more than the sender's buffer, the
//! queue and the receiver's buffer can hold together.

use std::time::Duration;

use fanout_protocol::Codec;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Client, Event, TestServer, TokenSpec, WAIT};

const ROOM: &str = "feed";
/// Payload padding: each message is a little over 1 KiB on the wire.
const PAD: usize = 1000;
/// Messages per `/v1/publish/batch` call: well under the queue bound, so a
/// reader that keeps up never has a full queue.
const BATCH: usize = 32;
const QUEUE_MESSAGES: usize = 256;
const QUEUE_BYTES: usize = 512 * 1024;
/// Receive buffer asked for the slow client's socket.
const SLOW_RCVBUF: u32 = 16 * 1024;

fn small_queues(c: &mut fanout_gateway::Config) {
    c.limits.send_queue_messages = QUEUE_MESSAGES;
    c.limits.send_queue_bytes = QUEUE_BYTES;
}

/// How many ~1 KiB messages surely overflow the slow client: the most the
/// kernel may buffer for it on both ends, plus the queue, with a margin.
fn overflowing_count(rcvbuf: usize) -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let bytes = wmem_max + 2 * rcvbuf + QUEUE_BYTES + (64 << 10);
    let n = bytes / PAD * 5 / 4 + 2 * QUEUE_MESSAGES;
    n.div_ceil(BATCH) * BATCH
}

/// A client whose socket has a small receive buffer; returns it and the
/// buffer size the kernel granted.
async fn slow_client(server: &TestServer, sub: &str) -> (Client, usize) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SLOW_RCVBUF).unwrap();
    let granted = socket.recv_buffer_size().unwrap() as usize;
    let tcp = socket.connect(server.addr).await.unwrap();
    let mut req = server.ws_url().into_client_request().unwrap();
    let token = TokenSpec::new(sub, "acme", &[ROOM]).mint();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let mut c = Client {
        ws,
        codec: Codec::Json,
        conn_id: String::new(),
        echoed_protocol: None,
    };
    assert_eq!(c.recv().await["type"], "welcome");
    c.subscribe(ROOM).await;
    (c, granted)
}

/// Reads `tick` messages until the `end` one; returns their sequence numbers.
fn read_until_end(mut c: Client, max: usize) -> JoinHandle<(Client, Vec<u64>)> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        for _ in 0..=max {
            let m = c.recv_type("message").await;
            if m["event"] == "end" {
                return (c, seqs);
            }
            seqs.push(m["data"]["seq"].as_u64().expect("seq"));
        }
        panic!("no `end` after {max} messages");
    })
}

/// Publishes `n` numbered messages in batches, then an `end` message.
async fn publish_numbered(server: &TestServer, n: usize) {
    let pad = "x".repeat(PAD);
    for start in (0..n).step_by(BATCH) {
        let messages: Vec<Value> = (start..(start + BATCH).min(n))
            .map(|seq| json!({"tenant":"acme","room":ROOM,"event":"tick","data":{"seq":seq,"pad":pad}}))
            .collect();
        let (status, body) = server
            .post("/v1/publish/batch", &json!({ "messages": messages }))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    server.publish_room("acme", ROOM, "end", json!(null)).await;
}

/// The value of an unlabelled counter in Prometheus text, 0 when absent.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

async fn scrape_slow_closes(server: &TestServer) -> f64 {
    let resp = reqwest::get(server.url("/metrics")).await.expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    counter(
        &resp.text().await.unwrap(),
        "fanout_slow_consumer_closes_total",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_is_closed_4009_while_fast_readers_get_everything_in_order() {
    let server = TestServer::spawn_with(|c| {
        small_queues(c);
        // Long enough that the overflow, not a write timeout, closes it.
        c.session.write_timeout = Duration::from_secs(30);
    })
    .await;
    let before = scrape_slow_closes(&server).await;
    let (mut slow, rcvbuf) = slow_client(&server, "slow").await;
    let n = overflowing_count(rcvbuf);
    let mut fast = Vec::new();
    for user in ["fast1", "fast2"] {
        let mut c = server.client(user, "acme", &[ROOM]).await;
        c.subscribe(ROOM).await;
        fast.push(read_until_end(c, n + 1));
    }
    assert_eq!(server.node.connection_count(), 3);

    // `slow` is not polled from here on: it stops reading.
    publish_numbered(&server, n).await;

    let expected: Vec<u64> = (0..n as u64).collect();
    let mut fast_clients = Vec::new();
    for reader in fast {
        let (c, seqs) = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("fast reader done")
            .expect("fast reader task");
        assert_eq!(seqs.len(), n, "a fast reader missed messages");
        assert!(seqs == expected, "a fast reader got messages out of order");
        fast_clients.push(c);
    }
    assert!(
        scrape_slow_closes(&server).await > before,
        "fanout_slow_consumer_closes_total did not increase"
    );

    // The slow reader resumes: what was buffered before the overflow, in
    // order and without gaps, then the close.
    let mut got = 0u64;
    let code = loop {
        match slow.next_event(WAIT).await {
            Some(Event::Frame(m)) => {
                assert_eq!(m["type"], "message", "{m}");
                assert_eq!(m["data"]["seq"], got, "gap or reordering");
                got += 1;
                assert!(got <= n as u64, "the slow reader got everything");
            }
            Some(Event::Closed(Some((code, _)))) => break code,
            other => panic!("after {got} messages: expected the close, got {other:?}"),
        }
    };
    assert_eq!(code, 4009);
    assert!(
        (got as usize) < n,
        "nothing was dropped for the slow reader"
    );

    // The node let go of it; the fast readers are still connected.
    server.wait_for_connections(2).await;
    for c in &mut fast_clients {
        assert_eq!(c.request(json!({"type":"ping"}), 1).await["type"], "pong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_never_resumes_is_let_go_without_reading() {
    let server = TestServer::spawn_with(|c| {
        small_queues(c);
        c.session.write_timeout = Duration::from_millis(500);
    })
    .await;
    let (mut slow, rcvbuf) = slow_client(&server, "stuck").await;
    let n = overflowing_count(rcvbuf);
    let mut fast = server.client("fast", "acme", &[ROOM]).await;
    fast.subscribe(ROOM).await;
    let reader = read_until_end(fast, n + 1);

    publish_numbered(&server, n).await;
    let (_fast, seqs) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("fast reader done")
        .expect("fast reader task");
    assert_eq!(seqs.len(), n);
    // The stuck client has read nothing, yet the node has dropped it.
    server.wait_for_connections(1).await;

    // What it finds when it finally reads: a gapless prefix, then the end.
    let mut got = 0u64;
    for _ in 0..=n {
        match slow.next_event(WAIT).await {
            Some(Event::Frame(m)) => {
                assert_eq!(m["data"]["seq"], got, "gap or reordering");
                got += 1;
            }
            Some(Event::Closed(close)) => {
                if let Some((code, _)) = close {
                    assert_eq!(code, 4009);
                }
                break;
            }
            None => panic!("the socket is still open after {got} messages"),
        }
    }
    assert!((got as usize) < n);
}
