//! Cluster test harness, part 1: a real `redis-server` on a free loopback
//! port, started and stopped by the test, plus the small waiting helpers the
//! cluster tests share. Nodes that talk to it live in `cluster_support.rs`.
//!
//! The harness speaks raw RESP over TCP (`PING`, `KEYS`, …) so it does not
//! depend on the gateway's own Redis client: a bug there cannot make the
//! harness believe Redis is up.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

use crate::support::WAIT;

/// Interval of every polling loop of the cluster harness.
pub const POLL: Duration = Duration::from_millis(25);
/// Longest time a `redis-server` may take to answer its first PING.
const REDIS_START: Duration = Duration::from_secs(5);
/// Longest time a stopped or killed process may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Polls `cond` every [`POLL`] until it is true or `timeout` has passed;
/// returns whether it became true. Each attempt is bounded by the time left.
pub async fn eventually(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = tokio::time::timeout(left.max(POLL), cond()).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL).await;
    }
}

/// Polls `get` until it returns `expected`; panics naming `what` and the last
/// value seen when `timeout` passes first.
pub async fn eventually_eq<T: PartialEq + std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    expected: &T,
    mut get: impl AsyncFnMut() -> T,
) {
    let mut last = None;
    let ok = eventually(timeout, async || {
        let v = get().await;
        let hit = v == *expected;
        last = Some(v);
        hit
    })
    .await;
    assert!(
        ok,
        "{what}: expected {expected:?} within {timeout:?}, last saw {last:?}"
    );
}

/// A directory under the target's tmp dir, removed on drop unless the test
/// is panicking (then it is kept, with the logs in it, for the post-mortem).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster")
            .join(format!(
                "{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `n` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    format!("--- {} ---\n{}", path.display(), lines[from..].join("\n"))
}

/// Sends `kill -<sig> <pid>`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Waits (bounded, without blocking the runtime) for `child` to exit.
pub async fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {EXIT_WAIT:?}");
        }
        sleep(POLL).await;
    }
}

/// A `redis-server` on 127.0.0.1:<port>, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Writes an append-only file in its directory, so that a restart
    /// comes back with everything it acknowledged.
    persistent: bool,
}

impl RedisServer {
    /// Starts Redis on a free loopback port and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts Redis on `port` (e.g. one a node was already pointed at).
    pub async fn start_on(port: u16) -> Self {
        let mut redis = Self {
            port,
            dir: TempDir::new("redis"),
            child: None,
            persistent: false,
        };
        redis.launch().await;
        redis
    }

    /// Starts Redis with persistence: an append-only file in its temp
    /// directory. Redis writes it before it answers, so a SIGKILL of the
    /// process (the machine survives, with its page cache) loses nothing
    /// Redis acknowledged and a restart brings it all back (scripts
    /// excepted: their cache is never persisted). Fsynced once a second.
    pub async fn start_persistent() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: TempDir::new("redis"),
            child: None,
            persistent: true,
        };
        redis.launch().await;
        redis
    }

    /// The process id, while it runs (for SIGSTOP / SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Deletes what a persistent Redis wrote (its append-only files and any
    /// RDB snapshot), so that the next start comes back empty. Only while
    /// it is stopped.
    pub fn wipe_data(&self) {
        assert!(self.child.is_none(), "wipe_data while redis-server runs");
        for name in ["appendonlydir", "appendonly.aof", "dump.rdb"] {
            let path = self.dir.path().join(name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed
                && e.kind() != ErrorKind::NotFound
            {
                panic!("cannot delete {}: {e}", path.display());
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log(&self) -> String {
        log_tail(&self.dir.path().join("redis.log"), 30)
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("open redis.log");
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "everysec"]
        } else {
            &["--appendonly", "no"]
        };
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"])
            .args(persistence)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "redis-server is not on PATH, and the cluster tests need a real Redis. \
                 Run scripts/install-test-deps.sh (as root) or `apt-get install redis-server`."
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START;
        while !ping(self.port).await {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "redis-server on port {} exited ({status}) before answering PING\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {REDIS_START:?}\n{}",
                self.port,
                self.log()
            );
            sleep(POLL).await;
        }
    }

    /// Graceful stop: SIGTERM, then waits for the process to exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        signal(child.id(), "TERM");
        wait_exit(&mut child, "redis-server (SIGTERM)").await;
    }

    /// Abrupt death: SIGKILL, then reaps the process.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        child.kill().expect("SIGKILL redis-server");
        wait_exit(&mut child, "redis-server (SIGKILL)").await;
    }

    /// Starts Redis again on the same port (stopping it first if it runs)
    /// and waits until it answers PING. It comes back empty, unless it was
    /// started with [`RedisServer::start_persistent`] (then with what it
    /// had written; see [`RedisServer::wipe_data`]).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.launch().await;
    }

    /// Runs one command over raw RESP; returns an array reply's elements, or
    /// a scalar reply as one element. Panics on an error reply.
    pub async fn command(&self, args: &[&str]) -> Vec<String> {
        let port = self.port;
        let run = async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect to redis");
            let mut r = BufReader::new(stream);
            let mut req = format!("*{}\r\n", args.len());
            for a in args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            r.get_mut().write_all(req.as_bytes()).await.expect("write");
            let head = read_line(&mut r).await;
            if let Some(n) = head.strip_prefix('*') {
                let n: i64 = n.parse().expect("array length");
                let mut out = Vec::new();
                for _ in 0..n.max(0) {
                    let h = read_line(&mut r).await;
                    out.push(read_scalar(&mut r, &h).await);
                }
                out
            } else {
                vec![read_scalar(&mut r, &head).await]
            }
        };
        tokio::time::timeout(WAIT, run)
            .await
            .expect("redis answers in time")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether something on 127.0.0.1:`port` answers an inline `PING` with `+PONG`.
pub async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

async fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("read reply");
    line.trim_end_matches("\r\n").to_owned()
}

async fn read_scalar(r: &mut BufReader<TcpStream>, head: &str) -> String {
    if let Some(len) = head.strip_prefix('$') {
        let len: i64 = len.parse().expect("bulk length");
        if len < 0 {
            return String::new();
        }
        let mut buf = vec![0u8; len as usize + 2];
        r.read_exact(&mut buf).await.expect("read bulk");
        buf.truncate(len as usize);
        return String::from_utf8_lossy(&buf).into_owned();
    }
    match head.split_at(head.len().min(1)) {
        ("+" | ":", rest) => rest.to_owned(),
        _ => panic!("redis replied {head:?}"),
    }
}
