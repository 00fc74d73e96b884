//! The HTTP listener is bounded (`[http]`): a request head must arrive
//! within `header_read_timeout` (slowloris), an idle keep-alive connection
//! is closed after `keepalive_timeout`, and beyond `max_connections` plain
//! HTTP is refused quickly while WebSocket upgrades and health checks still
//! get in. Each with and without TLS, over raw sockets so that the test
//! controls every byte and sees every close.

use std::time::Duration;

use fanout_gateway::Config;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{Connector, MaybeTlsStream};

use crate::redis_support::eventually;
use crate::support::{API_KEY, Client, TestServer, TokenSpec, WAIT};
use crate::tls::TestCert;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A node with `[tls]` when `cert` is given, and `tweak` applied.
async fn node(cert: Option<&TestCert>, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let tls = cert.map(TestCert::config);
    TestServer::spawn_with(|c| {
        c.tls = tls;
        tweak(c);
    })
    .await
}

/// One HTTP/1.1 connection, plain or TLS, driven byte by byte.
struct Raw {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

/// A response read from a [`Raw`] connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// The head, header names lower-cased.
    head: String,
    body: String,
}

impl Raw {
    async fn open(server: &TestServer, cert: Option<&TestCert>) -> Raw {
        let tcp = timeout(WAIT, TcpStream::connect(server.addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let io: Box<dyn Io> = match cert {
            None => Box::new(tcp),
            Some(cert) => {
                let name = ServerName::try_from("localhost").expect("server name");
                let tls = timeout(WAIT, TlsConnector::from(cert.client()).connect(name, tcp))
                    .await
                    .expect("TLS handshake in time")
                    .expect("TLS handshake");
                Box::new(tls)
            }
        };
        Raw {
            io,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    async fn get(&mut self, path: &str) {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await;
    }

    async fn publish(&mut self, tenant: &str, room: &str, data: Value) {
        let body = json!({"tenant": tenant, "room": room, "event": "e", "data": data}).to_string();
        let req = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(req.as_bytes()).await;
    }

    /// Reads more bytes; false when the peer closed (EOF or error).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.io.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response; `None` when the connection closed before one came.
    async fn response(&mut self) -> Option<Resp> {
        timeout(WAIT, async {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
                    while self.buf.len() < end + 4 + len {
                        if !self.fill().await {
                            return None;
                        }
                    }
                    let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]).into();
                    self.buf.drain(..end + 4 + len);
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("status");
                    return Some(Resp { status, head, body });
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .expect("a response or a close in time")
    }

    /// Waits up to `wait` for the node to close the connection; returns
    /// when it did, or `None` if it is still open. Bytes read meanwhile
    /// stay in the buffer.
    async fn closed_within(&mut self, wait: Duration) -> Option<Instant> {
        let until = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.fill()).await {
                Err(_) => return None,
                Ok(false) => return Some(Instant::now()),
                Ok(true) => {}
            }
        }
    }
}

/// A welcomed WebSocket client over `ws://` or `wss://`.
async fn ws_client(server: &TestServer, cert: Option<&TestCert>, spec: &TokenSpec) -> Client {
    let Some(cert) = cert else {
        return server.client(&spec.sub, &spec.tenant, &["*"]).await;
    };
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", spec.mint()).parse().expect("header"),
    );
    let (ws, _) = timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            Some(Connector::Rustls(cert.client())),
        ),
    )
    .await
    .expect("wss handshake in time")
    .expect("wss handshake");
    let mut client = Client {
        ws,
        codec: fanout_protocol::Codec::Json,
        conn_id: String::new(),
        echoed_protocol: None,
    };
    assert_eq!(client.recv().await["type"], "welcome");
    client
}

fn is_tls(c: &Client) -> bool {
    matches!(c.ws.get_ref(), MaybeTlsStream::Rustls(_))
}

// ---- header read timeout -------------------------------------------------

/// Sends the head of a request one byte every 100 ms, never finishing it;
/// returns how long after the connect the node closed the connection (and
/// asserts it never answered).
async fn trickle_until_closed(mut conn: Raw, opened: Instant) -> Duration {
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Trickle: ";
    let mut sent = 0;
    let limit = opened + Duration::from_secs(6);
    loop {
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if conn.io.write_all(&[byte]).await.is_err() || conn.io.flush().await.is_err() {
            return opened.elapsed();
        }
        sent += 1;
        if conn
            .closed_within(Duration::from_millis(100))
            .await
            .is_some()
        {
            assert!(conn.buf.is_empty(), "a trickled head was answered");
            return opened.elapsed();
        }
        assert!(
            Instant::now() < limit,
            "a client trickling its request head for 6s is still connected ({sent} bytes sent)"
        );
    }
}

async fn header_timeout_closes_a_trickling_client(cert: Option<&TestCert>) {
    let server = node(cert, |c| {
        c.http.header_read_timeout = Duration::from_secs(1)
    })
    .await;
    let opened = Instant::now();
    let trickler = Raw::open(&server, cert).await;
    let trickled = tokio::spawn(trickle_until_closed(trickler, opened));

    // While it trickles: a request sent in pieces within the timeout is
    // answered, and so are normal requests.
    let mut slow = Raw::open(&server, cert).await;
    slow.send(b"GET /healthz HTTP/1.1\r\n").await;
    sleep(Duration::from_millis(300)).await;
    slow.send(b"Host: localhost\r\n").await;
    sleep(Duration::from_millis(300)).await;
    slow.send(b"\r\n").await;
    assert_eq!(slow.response().await.expect("answered").status, 200);
    for _ in 0..3 {
        let mut normal = Raw::open(&server, cert).await;
        normal.get("/readyz").await;
        assert_eq!(normal.response().await.expect("answered").status, 200);
        sleep(Duration::from_millis(100)).await;
    }

    let closed_after = trickled.await.expect("trickler");
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after <= Duration::from_secs(3),
        "the trickling client was closed {closed_after:?} after connecting (header timeout 1s)"
    );
    // The slow-but-complete client kept its keep-alive connection.
    slow.get("/healthz").await;
    assert_eq!(slow.response().await.expect("answered").status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_client_trickling_its_request_head_is_closed_after_the_header_timeout() {
    header_timeout_closes_a_trickling_client(None).await;
}

#[tokio::test]
async fn a_client_trickling_its_request_head_over_tls_is_closed_after_the_header_timeout() {
    let cert = TestCert::new();
    header_timeout_closes_a_trickling_client(Some(&cert)).await;
}

// ---- keep-alive idle timeout ---------------------------------------------

async fn idle_keep_alive_connections_are_closed(cert: Option<&TestCert>, idle: usize) {
    let server = node(cert, |c| c.http.keepalive_timeout = Duration::from_secs(1)).await;
    let mut ws = ws_client(&server, cert, &TokenSpec::new("u1", "acme", &["*"])).await;
    assert_eq!(is_tls(&ws), cert.is_some());
    ws.subscribe("lobby").await;

    let mut conns = Vec::new();
    for _ in 0..idle {
        let mut conn = Raw::open(&server, cert).await;
        conn.get("/healthz").await;
        assert_eq!(conn.response().await.expect("answered").status, 200);
        conns.push((conn, Instant::now()));
    }
    // An active keep-alive connection: a request every 300 ms for 2.4 s,
    // all on one connection.
    let active = async {
        let mut conn = Raw::open(&server, cert).await;
        for i in 0..8 {
            conn.get("/healthz").await;
            let resp = conn.response().await;
            assert_eq!(
                resp.map(|r| r.status),
                Some(200),
                "request {i} on an active keep-alive connection"
            );
            sleep(Duration::from_millis(300)).await;
        }
    };
    let closes =
        futures_util::future::join_all(conns.iter_mut().map(async |(conn, idle_since)| {
            let closed = conn.closed_within(Duration::from_secs(5)).await;
            closed.map(|at| at - *idle_since)
        }));
    let (closes, ()) = tokio::join!(closes, active);
    for (i, after) in closes.into_iter().enumerate() {
        let after = after.unwrap_or_else(|| panic!("idle connection {i} still open after 5s"));
        assert!(
            after >= Duration::from_millis(800) && after <= Duration::from_secs(3),
            "idle connection {i} closed {after:?} after its response (keep-alive timeout 1s)"
        );
    }

    // The WebSocket, idle at the HTTP level for longer than both timeouts, is
    // a session and still served; so are new HTTP connections.
    let mut api = Raw::open(&server, cert).await;
    api.publish("acme", "lobby", json!("still here")).await;
    let resp = api.response().await.expect("answered");
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(ws.recv_type("message").await["data"], "still here");
    server.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_keepalive_timeout() {
    idle_keep_alive_connections_are_closed(None, 50).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_over_tls_are_closed_after_the_keepalive_timeout() {
    let cert = TestCert::new();
    idle_keep_alive_connections_are_closed(Some(&cert), 20).await;
}

// ---- connection cap ------------------------------------------------------

async fn over_the_cap(cert: Option<&TestCert>) {
    const CAP: usize = 4;
    let server = node(cert, |c| c.http.max_connections = CAP).await;
    // Keep-alive connections holding every place.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut conn = Raw::open(&server, cert).await;
        conn.get("/healthz").await;
        assert_eq!(conn.response().await.expect("answered").status, 200);
        held.push(conn);
    }

    // Plain HTTP beyond the cap: 503 at once, and the connection closes.
    let mut api = Raw::open(&server, cert).await;
    api.publish("acme", "lobby", json!(0)).await;
    let resp = api.response().await.expect("an answer");
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.head.contains("retry-after: 1"), "{resp:?}");
    let body: Value = serde_json::from_str(&resp.body).expect("json body");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        api.closed_within(Duration::from_secs(1)).await.is_some(),
        "a refused connection stays open"
    );

    // A connection beyond the cap that sends nothing is closed quickly.
    let opened = Instant::now();
    let mut silent = Raw::open(&server, cert).await;
    let closed = silent
        .closed_within(Duration::from_secs(5))
        .await
        .expect("a silent connection beyond the cap still open after 5s");
    let after = closed - opened;
    assert!(after <= Duration::from_secs(4), "closed after {after:?}");

    // Health checks still get in (one request per connection).
    let mut health = Raw::open(&server, cert).await;
    health.get("/healthz").await;
    let resp = health.response().await.expect("an answer");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.head.contains("connection: close"), "{resp:?}");
    assert!(health.closed_within(Duration::from_secs(1)).await.is_some());

    // So do WebSockets, and they outlive the deadline of connections beyond
    // the cap: once upgraded they are sessions, not HTTP.
    let mut ws = ws_client(&server, cert, &TokenSpec::new("u1", "acme", &["*"])).await;
    ws.subscribe("lobby").await;
    sleep(Duration::from_millis(2500)).await;
    // The connections within the cap are served as before.
    held[0]
        .publish("acme", "lobby", json!("over the cap"))
        .await;
    let resp = held[0].response().await.expect("answered");
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(ws.recv_type("message").await["data"], "over the cap");

    // Places free up when the connections holding them close.
    drop(held);
    let served = eventually(WAIT, async || {
        let mut conn = Raw::open(&server, cert).await;
        conn.publish("acme", "lobby", json!(1)).await;
        conn.response().await.is_some_and(|r| r.status == 202)
    })
    .await;
    assert!(served, "API requests still refused after the cap freed up");
    server.stop().await;
}

#[tokio::test]
async fn beyond_max_connections_plain_http_is_refused_but_websockets_and_health_checks_get_in() {
    over_the_cap(None).await;
}

#[tokio::test]
async fn beyond_max_connections_over_tls_plain_http_is_refused_but_websockets_get_in() {
    let cert = TestCert::new();
    over_the_cap(Some(&cert)).await;
}

#[test]
fn http_limits_are_validated() {
    for (toml, field) in [
        (
            "[http]\nheader_read_timeout = \"0s\"",
            "http.header_read_timeout",
        ),
        (
            "[http]\nkeepalive_timeout = \"500ms\"",
            "http.keepalive_timeout",
        ),
        ("[http]\nmax_connections = 0", "http.max_connections"),
        ("[metrics]\ntop_tenants = 1001", "metrics.top_tenants"),
    ] {
        let err = Config::from_toml_str(toml).unwrap_err().to_string();
        assert!(err.contains(field), "{toml}: {err}");
    }
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.http.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(c.http.max_connections, 1024);
    assert_eq!(c.metrics.top_tenants, 20);
}
