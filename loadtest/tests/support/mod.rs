//! Harness of the smoke tests: real nodes (in-process, on 127.0.0.1:0), a
//! real `redis-server` for the cluster case, the real `fanout-floor` and
//! `fanout-loadtest` binaries. Every address is loopback, every wait bounded.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use fanout_gateway::config::{ApiKeyConfig, RedisConfig};
use fanout_gateway::{Config, Server};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// HS256 secret of test nodes.
pub(crate) const SECRET: &str = "loadtest-secret-0123456789abcdef";
/// API key of test nodes.
pub(crate) const API_KEY: &str = "loadtest-api-key-0123456789";
/// Longest a generator run may take in a test.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A node serving on a free loopback port, stopped on drop.
pub(crate) struct Node {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Node {
    /// A single node (embedded bus) with the test keys, changed by `tweak`.
    pub(crate) async fn spawn(tweak: impl FnOnce(&mut Config)) -> Node {
        let mut c = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_keys: vec![ApiKeyConfig {
                key: API_KEY.into(),
                tenant: None,
            }],
            ..Config::default()
        };
        c.auth.secret = Some(SECRET.into());
        c.shutdown.grace = Duration::from_secs(2);
        c.shutdown.readiness_delay = Duration::ZERO;
        c.shutdown.drain_window = Duration::ZERO;
        tweak(&mut c);
        c.validate().expect("test config is valid");
        let server = Server::bind(c).await.expect("node starts");
        let addr = server.local_addr();
        let shutdown = server.shutdown_token();
        let task = tokio::spawn(server.run());
        Node {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// A node of a cluster on `redis_url`, waited for until ready.
    pub(crate) async fn spawn_clustered(redis_url: &str, id: &str) -> Node {
        let node = Node::spawn(|c| {
            c.node_id = Some(id.into());
            c.redis = Some(RedisConfig {
                url: redis_url.into(),
                prefix: "lt".into(),
                heartbeat: Duration::from_millis(200),
                ..RedisConfig::default()
            });
        })
        .await;
        node.wait_ready().await;
        node
    }

    pub(crate) fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..100 {
            if let Ok(r) = client.get(&url).send().await
                && r.status().as_u16() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {} not ready within 5 s", self.addr);
    }

    /// `/v1/stats` → `cluster.nodes`.
    pub(crate) async fn cluster_nodes(&self) -> u64 {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let v: Value = client
            .get(format!("http://{}/v1/stats", self.addr))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json");
        v["cluster"]["nodes"].as_u64().unwrap_or(0)
    }

    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A free loopback port (free a moment ago).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on a free loopback port, killed on drop.
pub(crate) struct Redis {
    pub(crate) port: u16,
    _child: Child,
    _dir: TempDir,
}

impl Redis {
    pub(crate) async fn start() -> Redis {
        let port = free_port();
        let dir = TempDir::new();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "redis-server is needed for the cluster smoke test: \
                 run scripts/install-test-deps.sh or apt-get install redis-server",
            );
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Redis {
                    port,
                    _child: child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on {port} within 5 s");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "fanout-loadtest-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The `fanout-floor` binary on a free loopback port, killed on drop.
pub(crate) struct Floor {
    pub(crate) addr: SocketAddr,
    _child: Child,
}

impl Floor {
    pub(crate) async fn start() -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout-floor"))
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start fanout-floor");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("floor prints its address in time")
        .expect("read floor stdout")
        .expect("a line");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected floor line {line:?}"))
            .parse()
            .unwrap();
        Floor {
            addr,
            _child: child,
        }
    }

    pub(crate) fn ws(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// What a generator run printed and how it exited.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) result: Value,
    pub(crate) stderr: String,
}

/// Runs `fanout-loadtest` with `args` plus the test secret and key; the
/// result is the last stdout line parsed as JSON (`Null` when there is none).
pub(crate) async fn loadtest(args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        RUN_LIMIT,
        Command::new(env!("CARGO_BIN_EXE_fanout-loadtest"))
            .args(args)
            .args(["--secret", SECRET, "--api-key", API_KEY])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the generator stops by itself")
    .expect("run the generator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let result = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    Run {
        code: out.status.code(),
        result,
        stderr,
    }
}

impl Run {
    /// Asserts a complete run: every connection opened and stayed, and
    /// every message arrived once, in order, nowhere it should not.
    pub(crate) fn assert_clean(&self) -> &Value {
        let r = &self.result;
        assert_eq!(self.code, Some(0), "exit code; stderr:\n{}", self.stderr);
        assert_eq!(r["complete"], true, "{r}");
        let c = &r["connections"];
        assert_eq!(c["connected"], c["target"], "{r}");
        assert_eq!(c["failed"], 0, "{r}");
        assert_eq!(c["broken"], 0, "{r}");
        assert_eq!(c["closed_by_server"], serde_json::json!({}), "{r}");
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
        if let Some(d) = r.get("delivery") {
            assert!(d["expected"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(d["received"], d["expected"], "{r}");
            assert_eq!(d["loss"], 0, "{r}");
            assert_eq!(d["duplicates"], 0, "{r}");
            assert_eq!(d["order_violations"], 0, "{r}");
            assert_eq!(d["unexpected"], 0, "{r}");
            assert!(d["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{r}");
            // Every first copy was timed, and the histogram says so exactly.
            assert_eq!(r["latency_ms"]["count"], d["received"], "{r}");
            let p = &r["publish"];
            assert_eq!(p["failed"], 0, "{r}");
            assert_eq!(p["accepted"], p["attempted"], "{r}");
        }
        r
    }
}
