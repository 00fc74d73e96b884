//! Test harness: a real node on a loopback port, real WebSocket clients, a real HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout_gateway::auth::{DevTokenRequest, mint_hs256};
use fanout_gateway::config::ApiKeyConfig;
use fanout_gateway::{Config, Node, Server};
use fanout_protocol::Codec;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// HS256 secret of test nodes.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// Unscoped API key of test nodes.
pub const API_KEY: &str = "test-api-key-0123456789";
/// API key limited to tenant `acme`.
pub const ACME_KEY: &str = "acme-api-key-0123456789";

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// A node serving on 127.0.0.1:<free port>, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Node,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The configuration test nodes start from.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![
            ApiKeyConfig {
                key: API_KEY.into(),
                tenant: None,
            },
            ApiKeyConfig {
                key: ACME_KEY.into(),
                tenant: Some("acme".into()),
            },
        ],
        ..Config::default()
    };
    c.auth.secret = Some(SECRET.into());
    c.shutdown.grace = Duration::from_secs(3);
    c.shutdown.readiness_delay = Duration::ZERO;
    c.shutdown.drain_window = Duration::ZERO;
    c
}

impl TestServer {
    /// Starts a node with the test config changed by `tweak`.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let server = Server::bind(config).await.expect("node starts");
        let addr = server.local_addr();
        let node = server.node().clone();
        let shutdown = server.shutdown_token();
        let task = tokio::spawn(server.run());
        Self {
            addr,
            node,
            shutdown,
            task: Some(task),
        }
    }

    /// Starts a node with the test config.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Waits (bounded by `WAIT`) until the node holds `n` connections.
    pub async fn wait_for_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.node.connection_count() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} connections, have {}",
                self.node.connection_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the drain and waits for the node to stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("node stops within its grace")
                .expect("run task")
                .expect("run result");
        }
    }

    /// A connected, authenticated client (header token), welcome consumed.
    pub async fn client(&self, sub: &str, tenant: &str, rooms: &[&str]) -> Client {
        self.client_with(Codec::Json, &TokenSpec::new(sub, tenant, rooms))
            .await
    }

    /// A connected, authenticated client with the given codec and token.
    pub async fn client_with(&self, codec: Codec, spec: &TokenSpec) -> Client {
        let mut c = Client::connect(&self.ws_url(), Some(codec), Some(&spec.mint())).await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.conn_id = welcome["conn"].as_str().unwrap_or_default().to_owned();
        c
    }

    /// `POST` a JSON body with the unscoped API key; returns status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with_key(path, body, API_KEY).await
    }

    pub async fn post_with_key(&self, path: &str, body: &Value, key: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("http request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("http request");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Publishes to a room through the HTTP API and returns the message id.
    pub async fn publish_room(&self, tenant: &str, room: &str, event: &str, data: Value) -> String {
        let (status, body) = self
            .post(
                "/v1/publish",
                &serde_json::json!({"tenant": tenant, "room": room, "event": event, "data": data}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Claims of a test token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub sub: String,
    pub tenant: String,
    pub rooms: Vec<String>,
    pub publish: Vec<String>,
    pub ttl_secs: i64,
    pub secret: String,
}

impl TokenSpec {
    /// A token allowing subscribe and publish on `rooms`, valid for an hour.
    pub fn new(sub: &str, tenant: &str, rooms: &[&str]) -> Self {
        let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        Self {
            sub: sub.into(),
            tenant: tenant.into(),
            publish: rooms.clone(),
            rooms,
            ttl_secs: 3600,
            secret: SECRET.into(),
        }
    }

    pub fn mint(&self) -> String {
        let exp = (now_secs() as i64 + self.ttl_secs).max(0) as u64;
        mint_hs256(
            &self.secret,
            &DevTokenRequest {
                sub: self.sub.clone(),
                tenant: self.tenant.clone(),
                rooms: self.rooms.clone(),
                publish: self.publish.clone(),
                exp,
            },
        )
        .expect("mint")
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a client saw instead of a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Frame(Value),
    Closed(Option<(u16, String)>),
}

/// A WebSocket client speaking fanout's JSON or MessagePack frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub codec: Codec,
    pub conn_id: String,
    /// Subprotocol the server echoed, if any.
    pub echoed_protocol: Option<String>,
}

impl Client {
    /// Connects; `codec: None` offers no subprotocol (JSON by default).
    pub async fn connect(url: &str, codec: Option<Codec>, bearer: Option<&str>) -> Client {
        let offer = codec.map(|c| c.subprotocol().to_owned());
        Self::connect_offering(url, offer.as_deref(), bearer).await
    }

    /// Connects offering the raw `Sec-WebSocket-Protocol` value `offer`.
    pub async fn connect_offering(url: &str, offer: Option<&str>, bearer: Option<&str>) -> Client {
        let mut req = url.into_client_request().expect("request");
        if let Some(offer) = offer {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(offer).unwrap(),
            );
        }
        if let Some(token) = bearer {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("handshake");
        let echoed_protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let codec = match echoed_protocol.as_deref() {
            Some("fanout.msgpack") => Codec::MsgPack,
            _ => Codec::Json,
        };
        Client {
            ws,
            codec,
            conn_id: String::new(),
            echoed_protocol,
        }
    }

    /// Sends a frame, encoded in this client's codec.
    pub async fn send(&mut self, frame: Value) {
        let msg = match self.codec {
            Codec::Json => Message::Text(frame.to_string().into()),
            Codec::MsgPack => Message::Binary(rmp_serde::to_vec_named(&frame).unwrap().into()),
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send raw");
    }

    /// The next frame or the close; pings and pongs are skipped.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Event::Closed(None)),
                Ok(Some(Err(_))) => return Some(Event::Closed(None)),
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    return Some(Event::Frame(serde_json::from_str(&t).expect("json frame")));
                }
                Message::Binary(b) => {
                    return Some(Event::Frame(
                        rmp_serde::from_slice(&b).expect("msgpack frame"),
                    ));
                }
                Message::Close(frame) => {
                    return Some(Event::Closed(frame.map(|CloseFrame { code, reason }| {
                        (u16::from(code), reason.to_string())
                    })));
                }
                _ => continue,
            }
        }
    }

    /// The next frame; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_event(WAIT).await {
            Some(Event::Frame(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame whose `type` is `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Waits for the close frame; panics on a frame or timeout. Skips frames when `skip_frames`.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_event(WAIT).await {
                Some(Event::Closed(Some(cf))) => return cf,
                Some(Event::Closed(None)) => panic!("connection dropped without a close frame"),
                Some(Event::Frame(_)) => continue,
                None => panic!("no close within {WAIT:?}"),
            }
        }
    }

    /// Asserts that nothing (frame or close) arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(e) = self.next_event(wait).await {
            panic!("expected silence, got {e:?}");
        }
    }

    /// Sends a request and returns the reply carrying the same `id`.
    pub async fn request(&mut self, mut frame: Value, id: i64) -> Value {
        frame["id"] = id.into();
        self.send(frame).await;
        loop {
            let v = self.recv().await;
            if v["id"] == id && v["type"] != "message" {
                return v;
            }
        }
    }

    /// Subscribes and asserts the ack.
    pub async fn subscribe(&mut self, room: &str) {
        let reply = self
            .request(
                serde_json::json!({"type":"subscribe","room":room}),
                1_000_001,
            )
            .await;
        assert_eq!(reply["type"], "ack", "subscribe {room}: {reply}");
    }
}

// ---- helpers for api.rs, isolation.rs, ops.rs, cli.rs ----

/// Milliseconds since the epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl TestServer {
    /// Sends any request: optional API key, optional `Content-Type`, raw body.
    /// Returns the status and the body parsed as JSON (`Null` when it is not JSON).
    pub async fn send_http(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let resp = req.body(body).send().await.expect("http request");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// `GET` with the given API key.
    pub async fn get_with_key(&self, path: &str, key: &str) -> (u16, Value) {
        self.send_http(reqwest::Method::GET, path, Some(key), None, Vec::new())
            .await
    }
}

impl Client {
    /// Proves the connection is open and served: a `ping` gets its `pong`.
    pub async fn assert_alive(&mut self) {
        let pong = self
            .request(serde_json::json!({"type":"ping"}), 4_242)
            .await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }
}

/// Asserts an API error answer: the status and `{"error":{"code":code,"message":<non-empty>}}`.
pub fn assert_api_error(got: &(u16, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without message: {body}");
}

/// The sum of every sample whose series starts with `series` (a metric name,
/// or a name with its opening labels) in Prometheus text; 0 when absent.
pub fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes the `/metrics` endpoint at `url` and sums `series` in it.
pub async fn scrape(url: &str, series: &str) -> f64 {
    let text = reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    metric_sum(&text, series)
}
