//! Cluster test harness, part 2: several nodes against one Redis (or one
//! Redis Cluster: see `backend_support.rs`).
//!
//! In-process nodes are plain [`TestServer`]s with a `[redis]` section;
//! out-of-process nodes ([`ProcessNode`]) run the real `fanout` binary so a
//! test can SIGKILL one and watch the others forget it. [`ClusterNode`] gives
//! both (and a bare address) the same client and HTTP helpers.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use fanout_gateway::Config;
use fanout_gateway::config::RedisConfig;
use fanout_protocol::Codec;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use crate::redis_support::{
    POLL, TempDir, eventually, eventually_eq, free_port, log_tail, signal, wait_exit,
};
use crate::support::{ACME_KEY, API_KEY, Client, Event, SECRET, TestServer, TokenSpec, WAIT};

/// Heartbeat of test nodes: registry entries live for three of them.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// Heartbeat of test nodes on a Redis Cluster, where the command timeout
/// must stay below two beats (a dying primary may hold a registry command
/// that long, and the next beat must still land within the entry TTL).
pub const CLUSTER_HEARTBEAT: Duration = Duration::from_millis(600);
/// Redis command timeout of test nodes (a publish Redis cannot take answers 503 after it).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1000);
/// Prefix used by tests that run a single cluster.
pub const PREFIX: &str = "fanout-test";
/// Longest time a node may take to become ready or to reconnect to Redis.
pub const READY_WAIT: Duration = Duration::from_secs(15);
/// How long "nothing else arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

/// A token allowing every room.
pub fn any_room(sub: &str, tenant: &str) -> TokenSpec {
    TokenSpec::new(sub, tenant, &["*"])
}

/// The heartbeat of test nodes on the Redis (Cluster) at `url`.
pub fn heartbeat_for(url: &str) -> Duration {
    if url.starts_with("redis-cluster://") {
        CLUSTER_HEARTBEAT
    } else {
        HEARTBEAT
    }
}

/// The `[redis]` section of test nodes.
pub fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        prefix: prefix.into(),
        heartbeat: heartbeat_for(url),
        command_timeout: COMMAND_TIMEOUT,
        probe_interval: Duration::from_secs(1),
        channel_linger: Duration::from_secs(1),
        ..RedisConfig::default()
    }
}

/// The same section as TOML, for [`ProcessNode`]s.
pub fn redis_toml(url: &str, prefix: &str) -> String {
    let c = redis_config(url, prefix);
    format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{}\"\nheartbeat = \"{}ms\"\ncommand_timeout = \"{}ms\"\n\
         probe_interval = \"{}ms\"\nchannel_linger = \"{}ms\"\n",
        c.url,
        c.prefix,
        c.heartbeat.as_millis(),
        c.command_timeout.as_millis(),
        c.probe_interval.as_millis(),
        c.channel_linger.as_millis(),
    )
}

/// Starts an in-process node on `redis_url` (it does not wait for readiness).
pub async fn spawn_node(
    redis_url: &str,
    prefix: &str,
    id: &str,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    TestServer::spawn_with(|c| {
        c.node_id = Some(id.into());
        c.redis = Some(redis_config(redis_url, prefix));
        tweak(c);
    })
    .await
}

/// Starts `n` in-process nodes (`node-0`, …) on the Redis (or Redis
/// Cluster) at `redis_url` with [`PREFIX`], each changed by `tweak`, and
/// waits until every one is ready and sees all `n`.
pub async fn spawn_cluster(
    redis_url: &str,
    n: usize,
    tweak: impl Fn(&mut Config),
) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(spawn_node(redis_url, PREFIX, &format!("node-{i}"), &tweak).await);
    }
    for node in &nodes {
        wait_for_cluster(node, n as u64).await;
    }
    nodes
}

/// Waits until `node` is ready and its `/v1/stats` counts `n` live nodes.
pub async fn wait_for_cluster(node: &impl ClusterNode, n: u64) {
    let ready = eventually(READY_WAIT, async || node.readyz().await.0 == 200).await;
    assert!(
        ready,
        "{} not ready: {:?}",
        node.addr(),
        node.readyz().await
    );
    eventually_eq(WAIT, "cluster.nodes", &json!(n), async || {
        node.api_get("/v1/stats").await.1["cluster"]["nodes"].clone()
    })
    .await;
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client")
}

/// Anything serving fanout on an address: client and HTTP API helpers.
pub trait ClusterNode {
    fn addr(&self) -> SocketAddr;

    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    /// Connects with a header token and returns the client and its first event.
    async fn try_connect(&self, codec: Codec, spec: &TokenSpec) -> (Client, Event) {
        let mut c = Client::connect(&self.ws(), Some(codec), Some(&spec.mint())).await;
        let first = c.next_event(WAIT).await.expect("a first event in time");
        if let Event::Frame(w) = &first {
            c.conn_id = w["conn"].as_str().unwrap_or_default().to_owned();
        }
        (c, first)
    }

    /// A welcomed JSON client.
    async fn connect(&self, spec: &TokenSpec) -> Client {
        self.connect_with(Codec::Json, spec).await
    }

    /// A welcomed client with `codec`.
    async fn connect_with(&self, codec: Codec, spec: &TokenSpec) -> Client {
        let (c, first) = self.try_connect(codec, spec).await;
        match first {
            Event::Frame(w) if w["type"] == "welcome" => c,
            other => panic!("expected welcome from {}, got {other:?}", self.addr()),
        }
    }

    /// A JSON client of `sub` (token allowing every room) subscribed to `room`.
    async fn member(&self, sub: &str, tenant: &str, room: &str) -> Client {
        let mut c = self.connect(&any_room(sub, tenant)).await;
        c.subscribe(room).await;
        c
    }

    async fn api_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = http()
            .post(self.http_url(path))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("http request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn api_get(&self, path: &str) -> (u16, Value) {
        let resp = http()
            .get(self.http_url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("http request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/publish`.
    async fn publish(&self, body: Value) -> (u16, Value) {
        self.api_post("/v1/publish", &body).await
    }

    /// `POST /v1/publish`, asserting 202; returns the message id.
    async fn publish_ok(&self, body: Value) -> String {
        let (status, reply) = self.publish(body.clone()).await;
        assert_eq!(status, 202, "publish {body} via {}: {reply}", self.addr());
        reply["id"].as_str().expect("message id").to_owned()
    }

    /// `GET /readyz` status and body; status 0 when nothing answers.
    async fn readyz(&self) -> (u16, String) {
        match http().get(self.http_url("/readyz")).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// `GET /v1/stats`, asserting 200.
    async fn stats(&self) -> Value {
        let (status, body) = self.api_get("/v1/stats").await;
        assert_eq!(status, 200, "stats of {}: {body}", self.addr());
        body
    }

    /// The `members` of `GET /v1/tenants/{tenant}/rooms/{room}/presence`, asserting 200.
    async fn presence(&self, tenant: &str, room: &str) -> Value {
        let path = format!("/v1/tenants/{tenant}/rooms/{room}/presence");
        let (status, body) = self.api_get(&path).await;
        assert_eq!(status, 200, "presence via {}: {body}", self.addr());
        body["members"].clone()
    }
}

impl ClusterNode for TestServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl ClusterNode for SocketAddr {
    fn addr(&self) -> SocketAddr {
        *self
    }
}

/// A node running the real `fanout` binary with its own TOML config; killed on drop.
pub struct ProcessNode {
    pub addr: SocketAddr,
    pub id: String,
    dir: TempDir,
    child: Option<Child>,
}

impl ClusterNode for ProcessNode {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl ProcessNode {
    /// Starts the binary with the test auth and API keys plus `extra_toml`
    /// (tables such as `[redis]` or `[limits]`), and waits for `/readyz` 200.
    pub async fn spawn(extra_toml: &str) -> Self {
        Self::launch(None, extra_toml).await.until_ready().await
    }

    /// Like [`ProcessNode::spawn`], with node id `id` (instead of
    /// `proc-<port>`), e.g. one chosen for the slot its keys land in.
    pub async fn spawn_as(id: &str, extra_toml: &str) -> Self {
        Self::launch(Some(id), extra_toml).await.until_ready().await
    }

    /// Waits for `/readyz` 200; panics with the log if it does not come.
    async fn until_ready(self) -> Self {
        let ready = eventually(READY_WAIT, async || self.readyz().await.0 == 200).await;
        assert!(
            ready,
            "node {} not ready: {:?}\n{}",
            self.id,
            self.readyz().await,
            self.log()
        );
        self
    }

    /// Like [`ProcessNode::spawn`] but only waits until it serves `/healthz`.
    pub async fn spawn_unready(extra_toml: &str) -> Self {
        Self::launch(None, extra_toml).await
    }

    async fn launch(id: Option<&str>, extra_toml: &str) -> Self {
        let dir = TempDir::new("node");
        let port = free_port();
        let id = id.map_or_else(|| format!("proc-{port}"), str::to_owned);
        // A test that brings its own `[shutdown]` table replaces the default one.
        let shutdown = if extra_toml.contains("[shutdown]") {
            ""
        } else {
            "[shutdown]\ngrace = \"3s\"\nreadiness_delay = \"0s\"\ndrain_window = \"0s\"\n\n"
        };
        let config = format!(
            "node_id = \"{id}\"\nlisten = \"127.0.0.1:{port}\"\n\n[auth]\nsecret = \"{SECRET}\"\n\n\
             [[api_keys]]\nkey = \"{API_KEY}\"\n\n[[api_keys]]\nkey = \"{ACME_KEY}\"\ntenant = \"acme\"\n\n\
             {shutdown}{extra_toml}"
        );
        let config_path = dir.path().join("fanout.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = File::create(dir.path().join("node.log")).expect("create node.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fanout"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FANOUT_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn fanout");
        let mut node = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            id,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Ok(resp) = http().get(node.http_url("/healthz")).send().await
                && resp.status().as_u16() == 200
            {
                return node;
            }
            let child = node.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "node {} exited ({status}) at start\n{}",
                    node.id,
                    node.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not serve /healthz within {READY_WAIT:?}\n{}",
                node.id,
                node.log()
            );
            sleep(POLL).await;
        }
    }

    /// The tail of the node's log.
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("node.log"), 40)
    }

    /// Where the node's whole log is (kept when the test fails).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("node.log")
    }

    /// SIGKILL: the node dies without any cleanup (no deregistration, no closes).
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("node is running");
        child.kill().expect("SIGKILL node");
        wait_exit(&mut child, "fanout (SIGKILL)").await;
    }

    /// SIGTERM: the node drains and exits; returns its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        signal(child.id(), "TERM");
        wait_exit(&mut child, "fanout (SIGTERM)").await
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- client-side helpers ----

/// Receives frames until `n` messages arrived or `wait` passed; other frame
/// types are skipped; a close panics (cluster clients must stay connected).
pub async fn recv_messages(c: &mut Client, n: usize, wait: Duration) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(left).await {
            None => break,
            Some(Event::Frame(v)) if v["type"] == "message" => got.push(v),
            Some(Event::Frame(_)) => {}
            Some(Event::Closed(cf)) => panic!("conn {} closed: {cf:?}", c.conn_id),
        }
    }
    got
}

/// Sends a request and returns its reply; messages arriving before it are
/// appended to `kept` instead of being dropped.
pub async fn request_keeping(
    c: &mut Client,
    mut frame: Value,
    id: i64,
    kept: &mut Vec<Value>,
) -> Value {
    frame["id"] = id.into();
    c.send(frame).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(left).await {
            Some(Event::Frame(v)) if v["type"] == "message" => kept.push(v),
            Some(Event::Frame(v)) if v["id"] == id => return v,
            Some(Event::Frame(_)) => {}
            other => panic!("conn {}: no reply to request {id}: {other:?}", c.conn_id),
        }
    }
}

/// Asserts that none of `clients` receives anything within `wait` (checked concurrently).
pub async fn expect_all_silent(clients: &mut [&mut Client], wait: Duration) {
    futures_util::future::join_all(clients.iter_mut().map(|c| c.expect_silence(wait))).await;
}

/// The `data.seq` of a message frame.
pub fn seq_of(m: &Value) -> u64 {
    m["data"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data.seq in {m}"))
}

/// `{"user":…, "conns":…}` entries, as presence answers them.
pub fn members(list: &[(&str, u64)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(u, n)| json!({"user": u, "conns": n}))
            .collect(),
    )
}
