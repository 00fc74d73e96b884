//! Cluster test harness, Redis Cluster edition (groundwork for issue 12): a
//! real Redis Cluster of 3 primaries and 3 replicas on free loopback ports,
//! started with Debian's `redis-server` and `redis-cli --cluster create`, and
//! the faults the issue-12 tests need (SIGKILL of the primary owning a slot,
//! a slot migration), each waited for with a bound.
//!
//! Like `redis_support.rs` (whose helpers it reuses), it speaks raw RESP over
//! TCP, so that a bug in the gateway's Redis client cannot make the harness
//! believe the cluster is healthy. [`slot_of`] is a local CRC16, checked
//! against `CLUSTER KEYSLOT` by the harness's own tests.
//!
//! Ports are picked below the kernel's ephemeral range (see [`pick_port`]),
//! so that no outgoing connection can hold a node's port.
//!
//! Every node runs with `cluster-node-timeout 1000` (failover in a few
//! seconds), `cluster-require-full-coverage no` (a slot without a primary
//! does not take the other slots down: issue 12 wants 503s only for the slot
//! that has no primary), `cluster-replica-validity-factor 0` (a replica may
//! always take over), no persistence, and its own `nodes.conf` in its own
//! directory under the test's [`TempDir`] (kept, with the logs, when a test
//! panics).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

use crate::redis_support::{POLL, TempDir, free_port, log_tail, ping, wait_exit};

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;
/// Primaries, and replicas per primary.
pub const PRIMARIES: usize = 3;
const REPLICAS_PER_PRIMARY: usize = 1;
const NODES: usize = PRIMARIES * (1 + REPLICAS_PER_PRIMARY);
/// `cluster-node-timeout`: a primary is suspected after this long.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Longest time a `redis-server` may take to answer its first PING.
const REDIS_START: Duration = Duration::from_secs(5);
/// Longest time `redis-cli --cluster create` plus the gossip that follows
/// may take until every node agrees the cluster is whole.
const FORM_WAIT: Duration = Duration::from_secs(30);
/// Longest time a replica may take to be promoted after its primary died.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(20);
/// Longest time a slot migration may take, moving keys and gossip included.
const MIGRATE_WAIT: Duration = Duration::from_secs(10);
/// Timeout of one harness command (connect, write, reply).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys per `MIGRATE` while moving a slot (as `redis-cli` does by default).
const MIGRATE_BATCH: usize = 100;
/// Attempts to start a node on fresh ports when its ports were taken.
const START_ATTEMPTS: usize = 5;
/// Upper bound of `MIGRATE` rounds for one slot (bounded loop).
const MIGRATE_ROUNDS: usize = 10_000;

// ---------------------------------------------------------------------------
// Hash slots
// ---------------------------------------------------------------------------

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key or shard channel: the CRC16 of its hash tag (the
/// text between the first `{` and the next `}`, when not empty) or of the
/// whole name, modulo 16384.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

/// A short hash tag (decimal digits) whose slot is `slot`: `{tag}` in a key
/// puts the key in that slot.
pub fn tag_for_slot(slot: u16) -> String {
    assert!(slot < SLOTS, "slot {slot} out of range");
    // Every slot has a tag below 10^6 (checked by the harness's tests for a
    // sample; the expected search is ~16k candidates).
    (0u32..1_000_000)
        .map(|n| n.to_string())
        .find(|t| crc16(t.as_bytes()) % SLOTS == slot)
        .unwrap_or_else(|| panic!("no decimal hash tag below 10^6 for slot {slot}"))
}

// ---------------------------------------------------------------------------
// Raw RESP
// ---------------------------------------------------------------------------

/// One RESP2 reply (RESP3 pushes are read as arrays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    /// A scalar's text (`""` for nil); an array's elements joined by spaces.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) | Reply::Bulk(s) => s.clone(),
            Reply::Int(n) => n.to_string(),
            Reply::Nil => String::new(),
            Reply::Array(items) => items.iter().map(Reply::text).collect::<Vec<_>>().join(" "),
        }
    }

    /// An array's elements as text, or a scalar as one element.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(items) => items.iter().map(Reply::text).collect(),
            other => vec![other.text()],
        }
    }

    /// The message of an error reply (`MOVED 866 127.0.0.1:7001`, …).
    pub fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if end == 0 {
        return Err("empty RESP line".into());
    }
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    let next = end + 2;
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|e| format!("bad RESP integer {s:?}: {e}"))
    };
    let reply = match buf[0] {
        b'+' => (Reply::Status(line), next),
        b'-' => (Reply::Error(line), next),
        b':' => (Reply::Int(int(&line)?), next),
        b'$' => {
            let Ok(len) = usize::try_from(int(&line)?) else {
                return Ok(Some((Reply::Nil, next)));
            };
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&buf[next..next + len]).into_owned();
            (Reply::Bulk(text), next + len + 2)
        }
        b'*' | b'>' => {
            let Ok(n) = usize::try_from(int(&line)?) else {
                return Ok(Some((Reply::Nil, next)));
            };
            let mut items = Vec::with_capacity(n);
            let mut at = next;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            (Reply::Array(items), at)
        }
        other => return Err(format!("unexpected RESP type byte {:?}", other as char)),
    };
    Ok(Some(reply))
}

/// One raw RESP connection to a loopback Redis: requests, replies, and the
/// pushes of a (sharded) subscription.
pub struct Conn {
    port: u16,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to 127.0.0.1:`port` within [`QUERY_TIMEOUT`].
    pub async fn open(port: u16) -> Result<Self, String> {
        let stream = timeout(QUERY_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| format!("connect to {port}: timed out"))?
            .map_err(|e| format!("connect to {port}: {e}"))?;
        Ok(Self {
            port,
            stream,
            buf: Vec::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Writes one command.
    pub async fn send(&mut self, args: &[&str]) -> Result<(), String> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        timeout(QUERY_TIMEOUT, self.stream.write_all(&req))
            .await
            .map_err(|_| format!("write to {}: timed out", self.port))?
            .map_err(|e| format!("write to {}: {e}", self.port))
    }

    /// Reads the next reply or push; `Err` on a closed connection or after `wait`.
    pub async fn read(&mut self, wait: Duration) -> Result<Reply, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 16 * 1024];
            match timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(format!("no reply from {} within {wait:?}", self.port)),
                Ok(Ok(0)) => return Err(format!("connection to {} closed", self.port)),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(format!("read from {}: {e}", self.port)),
            }
        }
    }

    /// One command and its reply (a Redis error is an `Ok(Reply::Error)`).
    pub async fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        self.send(args).await?;
        self.read(QUERY_TIMEOUT).await
    }

    /// Sends `SUBSCRIBE`/`SSUBSCRIBE channels…` and waits for one
    /// confirmation per channel; panics on anything else.
    pub async fn subscribe(&mut self, verb: &str, channels: &[&str]) {
        let mut args = vec![verb];
        args.extend_from_slice(channels);
        self.send(&args).await.expect("send subscribe");
        let kind = verb.to_ascii_lowercase();
        for ch in channels {
            let push = self
                .read(QUERY_TIMEOUT)
                .await
                .expect("subscribe confirmation");
            let got = push.strings();
            assert!(
                got.len() == 3 && got[0] == kind && got[1] == *ch,
                "{verb} {ch} on {}: expected a confirmation, got {push:?}",
                self.port
            );
        }
    }

    /// The next push (`["smessage", channel, payload]`, `["sunsubscribe",
    /// channel, count]`, …) as text, or `None` when none comes within `wait`.
    pub async fn next_push(&mut self, wait: Duration) -> Option<Vec<String>> {
        self.read(wait).await.ok().map(|r| r.strings())
    }
}

/// One command over a fresh connection to 127.0.0.1:`port`. `Err` is a
/// transport failure (refused, closed, timed out); a Redis error reply is
/// `Ok(Reply::Error(..))`.
pub async fn try_command(port: u16, args: &[&str]) -> Result<Reply, String> {
    let mut conn = Conn::open(port).await?;
    conn.call(args).await
}

/// `try_command` that panics on a transport failure or an error reply;
/// returns an array's elements, or a scalar as one element (like
/// `RedisServer::command`).
pub async fn command(port: u16, args: &[&str]) -> Vec<String> {
    match try_command(port, args).await {
        Ok(Reply::Error(e)) => panic!("{args:?} on {port}: redis replied -{e}"),
        Ok(reply) => reply.strings(),
        Err(e) => panic!("{args:?} on {port}: {e}"),
    }
}

/// A write on the node on `port`, then `WAIT 1` on the same connection
/// (`WAIT` counts the replicas that acknowledged *this connection's* last
/// write): returns the write's reply once one replica has it; panics if
/// none acknowledged within [`QUERY_TIMEOUT`].
pub async fn command_replicated(port: u16, args: &[&str]) -> Vec<String> {
    let mut conn = Conn::open(port).await.unwrap_or_else(|e| panic!("{e}"));
    let reply = match conn.call(args).await {
        Ok(Reply::Error(e)) => panic!("{args:?} on {port}: redis replied -{e}"),
        Ok(reply) => reply,
        Err(e) => panic!("{args:?} on {port}: {e}"),
    };
    let wait = QUERY_TIMEOUT.as_millis().to_string();
    let acked = conn
        .send(&["WAIT", "1", &wait])
        .await
        .and(conn.read(QUERY_TIMEOUT * 2).await);
    assert_eq!(
        acked,
        Ok(Reply::Int(1)),
        "{args:?} on {port}: no replica acknowledged it"
    );
    reply.strings()
}

/// The value of `field` in an `INFO`-style `field:value` text.
pub fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .find(|(k, _)| *k == field)
        .map(|(_, v)| v.to_owned())
}

/// Where a `MOVED <slot> <host:port>` or `ASK …` error points.
pub fn redirect_port(error: &str) -> Option<u16> {
    let mut parts = error.split_whitespace();
    match parts.next()? {
        "MOVED" | "ASK" => {}
        _ => return None,
    }
    let _slot = parts.next()?;
    parts.next()?.rsplit_once(':')?.1.parse().ok()
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// One line of `CLUSTER NODES`, as one node sees the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    /// `master` in the flags.
    pub primary: bool,
    /// `fail` or `fail?` in the flags.
    pub failed: bool,
    /// The primary's id, for a replica.
    pub primary_id: Option<String>,
    /// Owned slot ranges (inclusive); migration markers are left out.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    pub fn slot_count(&self) -> u32 {
        self.slots.iter().map(|&(a, b)| u32::from(b - a) + 1).sum()
    }
}

/// Parses `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeView> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // `127.0.0.1:7001@17001[,hostname]`
            let addr = f[1].split(['@', ',']).next()?;
            let port = addr.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeView {
                id: f[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                failed: flags.iter().any(|&fl| fl == "fail" || fl == "fail?"),
                primary_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// Cluster bus port, chosen free (the default, port + 10000, may not be).
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// A node on fresh ports, with its own directory under `root`.
    fn new(root: &Path, taken: &mut BTreeSet<u16>) -> Self {
        let port = pick_port(taken);
        let bus_port = pick_port(taken);
        let dir = root.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("create node dir");
        Self {
            port,
            bus_port,
            dir,
            child: None,
        }
    }

    fn log(&self) -> String {
        log_tail(&self.dir.join("redis.log"), 25)
    }
}

/// The lowest port of the kernel's ephemeral range (outgoing connections).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port that was free a moment ago, not in `taken`, and chosen
/// *below* the kernel's ephemeral range: `free_port()` draws from that
/// range, where any outgoing connection (the harness's own, a client's)
/// may grab the port before Redis binds it, and a node restarted on its
/// old port must find it free. Falls back to `free_port()` when the range
/// leaves no room below it.
fn pick_port(taken: &mut BTreeSet<u16>) -> u16 {
    let to = ephemeral_low();
    let from = to.saturating_sub(16_384).max(1_024);
    let hasher = RandomState::new();
    if to > from + 1_024 {
        for n in 0u64..10_000 {
            let offset = hasher.hash_one(n) % u64::from(to - from);
            let p = from + u16::try_from(offset).expect("offset below the span");
            if !taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                taken.insert(p);
                return p;
            }
        }
    }
    (0..10_000)
        .map(|_| free_port())
        .find(|p| taken.insert(*p))
        .expect("a free loopback port")
}

/// A Redis Cluster of 3 primaries and 3 replicas on loopback, killed on drop.
///
/// Nodes are named by their client port everywhere (`primaries()`,
/// `replica_of(p)`, `command(p, …)`).
pub struct RedisCluster {
    dir: TempDir,
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts 6 nodes, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and waits (bounded) until every node reports
    /// `cluster_state:ok` with all 16384 slots assigned and ok, every
    /// primary has exactly one replica, and every replica's link is up.
    pub async fn start() -> Self {
        require_binaries();
        let dir = TempDir::new("redis-cluster");
        let mut taken = BTreeSet::new();
        let nodes = (0..NODES)
            .map(|_| Node::new(dir.path(), &mut taken))
            .collect();
        let mut cluster = Self { dir, nodes };
        for i in 0..NODES {
            let mut attempt = 1;
            while let Err(why) = cluster.launch(i).await {
                // Another process took one of the ports between the check
                // and Redis's bind: pick new ones (nothing knows them yet).
                assert!(
                    why.contains("Address already in use") && attempt < START_ATTEMPTS,
                    "{why}"
                );
                attempt += 1;
                cluster.nodes[i] = Node::new(cluster.dir.path(), &mut taken);
            }
        }
        cluster.create().await;
        cluster.wait_formed().await;
        cluster
    }

    /// Every node's client port, in start order (running or not).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Whether the node on `port` runs (was not killed by the harness).
    pub fn is_running(&self, port: u16) -> bool {
        self.node(port).child.is_some()
    }

    fn running(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// `redis-cluster://127.0.0.1:<port>`: the cluster by one seed, the
    /// first node started. fred's form (`Config::from_url`): a scheme ending
    /// in `-cluster` selects `ServerConfig::Clustered`. Note that fred's
    /// default discovery policy only ever asks the configured seeds for the
    /// topology once its first connection breaks: a test that kills the seed
    /// wants [`RedisCluster::seeds_url`].
    pub fn seed_url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port)
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=…`: every
    /// node as a seed (fred's `?node=host:port`, repeated).
    pub fn seeds_url(&self) -> String {
        let others: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        format!("{}?{}", self.seed_url(), others.join("&"))
    }

    /// A panic message's appendix: every node's log tail and `redis-cli`'s output.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> = self.nodes.iter().map(Node::log).collect();
        out.push(log_tail(&self.dir.path().join("redis-cli.log"), 40));
        out.join("\n")
    }

    /// Starts node `i` and waits (bounded) until it answers PING; `Err`
    /// (with its log) when it exited first, e.g. because a port was taken.
    async fn launch(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        assert!(node.child.is_none(), "node {} already runs", node.port);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("redis.log"))
            .expect("open redis.log");
        let (port, bus) = (node.port.to_string(), node.bus_port.to_string());
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's full sync starts at once (the default waits 5 s
            // for more replicas to share one diskless transfer).
            .args(["--repl-diskless-sync-delay", "0"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-port", &bus])
            .args([
                "--cluster-node-timeout",
                &NODE_TIMEOUT.as_millis().to_string(),
            ])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--cluster-replica-validity-factor", "0"])
            .arg("--dir")
            .arg(&node.dir)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{}", missing("redis-server")),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + REDIS_START;
        while !ping(self.nodes[i].port).await {
            let node = &mut self.nodes[i];
            if let Some(status) = node
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("try_wait")
            {
                node.child = None;
                return Err(format!(
                    "cluster node on port {} (bus {}) exited ({status}) before answering PING\n{}",
                    node.port,
                    node.bus_port,
                    node.log()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "cluster node on port {} did not answer PING within {REDIS_START:?}\n{}",
                node.port,
                node.log()
            );
            sleep(POLL).await;
        }
        // Whoever answered must be our child, not a process that already
        // held the port (then ours failed to bind it and exits).
        let node = &mut self.nodes[i];
        let pid = node.child.as_ref().expect("child").id().to_string();
        let info = try_command(node.port, &["INFO", "server"]).await?.text();
        if info_field(&info, "process_id").as_deref() != Some(pid.as_str()) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                wait_exit(&mut child, "cluster node that lost its port").await;
            }
            return Err(format!(
                "port {}: Address already in use by another process\n{}",
                node.port,
                node.log()
            ));
        }
        Ok(())
    }

    /// `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, bounded.
    async fn create(&self) {
        let log_path = self.dir.path().join("redis-cli.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open redis-cli.log");
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let spawned = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &REPLICAS_PER_PRIMARY.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{}", missing("redis-cli")),
            Err(e) => panic!("cannot start redis-cli: {e}"),
        };
        let status = match timeout(FORM_WAIT, child.wait()).await {
            Ok(status) => status.expect("wait for redis-cli"),
            Err(_) => panic!(
                "redis-cli --cluster create did not finish within {FORM_WAIT:?}\n{}",
                self.logs()
            ),
        };
        assert!(
            status.success(),
            "redis-cli --cluster create failed ({status})\n{}",
            self.logs()
        );
    }

    async fn wait_formed(&self) {
        let deadline = Instant::now() + FORM_WAIT;
        loop {
            let why = match self.formed().await {
                Ok(()) => return,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "the cluster did not form within {FORM_WAIT:?}: {why}\n{}",
                self.logs()
            );
            sleep(POLL * 4).await;
        }
    }

    /// `Ok` when the cluster is whole as seen from every running node.
    async fn formed(&self) -> Result<(), String> {
        self.all_ok(NODES).await?;
        let view = self.topology().await?;
        let primaries: Vec<&NodeView> = view
            .iter()
            .filter(|n| n.primary && !n.slots.is_empty())
            .collect();
        if primaries.len() != PRIMARIES {
            return Err(format!(
                "{} primaries with slots: {view:?}",
                primaries.len()
            ));
        }
        for p in &primaries {
            let replicas: Vec<&NodeView> = view
                .iter()
                .filter(|n| n.primary_id.as_deref() == Some(p.id.as_str()))
                .collect();
            if replicas.len() != REPLICAS_PER_PRIMARY {
                return Err(format!("primary {} has replicas {replicas:?}", p.port));
            }
            for r in replicas {
                let info = self.query_text(r.port, &["INFO", "replication"]).await?;
                if info_field(&info, "master_link_status").as_deref() != Some("up") {
                    return Err(format!("replica {} is not in sync yet", r.port));
                }
            }
        }
        Ok(())
    }

    /// Every running node says `cluster_state:ok`, all slots assigned and
    /// ok, and knows `known` nodes.
    async fn all_ok(&self, known: usize) -> Result<(), String> {
        for port in self.running() {
            let info = self.query_text(port, &["CLUSTER", "INFO"]).await?;
            let field = |f: &str| info_field(&info, f).unwrap_or_default();
            let want = [
                ("cluster_state", "ok".to_owned()),
                ("cluster_slots_assigned", SLOTS.to_string()),
                ("cluster_slots_ok", SLOTS.to_string()),
                ("cluster_known_nodes", known.to_string()),
            ];
            for (f, v) in want {
                if field(f) != v {
                    return Err(format!("node {port}: {f}:{} (want {v})", field(f)));
                }
            }
        }
        Ok(())
    }

    async fn query_text(&self, port: u16, args: &[&str]) -> Result<String, String> {
        match try_command(port, args).await? {
            Reply::Error(e) => Err(format!("{args:?} on {port}: -{e}")),
            reply => Ok(reply.text()),
        }
    }

    /// `CLUSTER NODES` as seen by `port`.
    pub async fn view_of(&self, port: u16) -> Result<Vec<NodeView>, String> {
        Ok(parse_cluster_nodes(
            &self.query_text(port, &["CLUSTER", "NODES"]).await?,
        ))
    }

    /// `CLUSTER NODES` as seen by the first running node that answers.
    pub async fn topology(&self) -> Result<Vec<NodeView>, String> {
        let mut last = "no running node".to_owned();
        for port in self.running() {
            match self.view_of(port).await {
                Ok(view) => return Ok(view),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn topology_or_panic(&self) -> Vec<NodeView> {
        self.topology()
            .await
            .unwrap_or_else(|e| panic!("cannot read the cluster topology: {e}\n{}", self.logs()))
    }

    /// Ports of the running primaries that own slots, ascending.
    pub async fn primaries(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .topology_or_panic()
            .await
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty() && self.is_running(n.port))
            .map(|n| n.port)
            .collect();
        out.sort_unstable();
        out
    }

    /// The port of the (running) replica of the primary on `primary`.
    pub async fn replica_of(&self, primary: u16) -> u16 {
        let view = self.topology_or_panic().await;
        let id = &view
            .iter()
            .find(|n| n.port == primary)
            .unwrap_or_else(|| panic!("no node {primary} in {view:?}"))
            .id;
        view.iter()
            .find(|n| n.primary_id.as_ref() == Some(id) && !n.failed && self.is_running(n.port))
            .unwrap_or_else(|| panic!("primary {primary} has no running replica: {view:?}"))
            .port
    }

    /// The port of the primary that owns `slot`, as the topology says.
    pub async fn owner_of(&self, slot: u16) -> u16 {
        let view = self.topology_or_panic().await;
        view.iter()
            .find(|n| n.primary && n.owns(slot))
            .unwrap_or_else(|| panic!("no primary owns slot {slot}: {view:?}"))
            .port
    }

    /// A running primary other than `port`'s (the lowest).
    pub async fn other_primary(&self, port: u16) -> u16 {
        self.primaries()
            .await
            .into_iter()
            .find(|&p| p != port)
            .expect("another primary")
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub async fn node_id(&self, port: u16) -> String {
        command(port, &["CLUSTER", "MYID"]).await.concat()
    }

    /// One command on the node on `port` (see [`command`]).
    pub async fn command(&self, port: u16, args: &[&str]) -> Vec<String> {
        command(port, args).await
    }

    /// SIGKILLs the primary owning `slot`; returns its port.
    pub async fn kill_primary_owning(&mut self, slot: u16) -> u16 {
        let port = self.owner_of(slot).await;
        self.kill(port).await;
        port
    }

    /// SIGKILLs the node on `port` and reaps it (bounded).
    pub async fn kill(&mut self, port: u16) {
        let node = self.node_mut(port);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {port} is not running"));
        child.kill().expect("SIGKILL redis-server");
        wait_exit(&mut child, "cluster node (SIGKILL)").await;
    }

    /// Starts the node on `port` again (same port, directory and
    /// `nodes.conf`, empty data): it rejoins the cluster, as a replica of
    /// whoever took its slots over.
    pub async fn restart(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"));
        if let Err(why) = self.launch(i).await {
            panic!("restarting {port}: {why}");
        }
    }

    /// Waits (bounded by [`FAILOVER_WAIT`]) until `slot` has a running
    /// primary again, every running node agrees which, and every running
    /// node says `cluster_state:ok` with all 16384 slots ok; returns the
    /// new owner's port.
    pub async fn wait_for_failover(&self, slot: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_WAIT;
        loop {
            let why = match self.slot_served(slot).await {
                Ok(owner) => return owner,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "slot {slot} got no primary within {FAILOVER_WAIT:?}: {why}\n{}",
                self.logs()
            );
            sleep(POLL * 2).await;
        }
    }

    /// `Ok(owner)` when every running node agrees that a running primary
    /// owns `slot`, and the cluster is ok everywhere.
    async fn slot_served(&self, slot: u16) -> Result<u16, String> {
        let mut owner = None;
        for port in self.running() {
            let view = self.view_of(port).await?;
            let seen = view
                .iter()
                .find(|n| n.primary && !n.failed && n.owns(slot))
                .map(|n| n.port)
                .ok_or_else(|| format!("node {port} sees no live owner of slot {slot}"))?;
            if !self.is_running(seen) {
                return Err(format!(
                    "node {port} still routes slot {slot} to dead {seen}"
                ));
            }
            if *owner.get_or_insert(seen) != seen {
                return Err(format!(
                    "nodes disagree on slot {slot}: {owner:?} vs {seen}"
                ));
            }
        }
        let owner = owner.ok_or("no running node")?;
        // The owner must say so itself (it was promoted, not just gossiped about).
        let me = self
            .view_of(owner)
            .await?
            .into_iter()
            .find(|n| n.port == owner)
            .ok_or("owner missing from its own view")?;
        if !me.primary {
            return Err(format!("{owner} does not consider itself a primary yet"));
        }
        for port in self.running() {
            let info = self.query_text(port, &["CLUSTER", "INFO"]).await?;
            for (f, v) in [
                ("cluster_state", "ok".to_owned()),
                ("cluster_slots_ok", SLOTS.to_string()),
            ] {
                let got = info_field(&info, f).unwrap_or_default();
                if got != v {
                    return Err(format!("node {port}: {f}:{got}"));
                }
            }
        }
        Ok(owner)
    }

    /// Moves `slot` from the primary on `from` to the primary on `to`, as
    /// `redis-cli --cluster reshard` does: [`begin_migration`],
    /// [`move_keys`], [`finish_migration`]; returns when every running node
    /// routes the slot to `to` (bounded).
    ///
    /// [`begin_migration`]: RedisCluster::begin_migration
    /// [`move_keys`]: RedisCluster::move_keys
    /// [`finish_migration`]: RedisCluster::finish_migration
    pub async fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        self.begin_migration(slot, from, to).await;
        self.move_keys(slot, from, to).await;
        self.finish_migration(slot, from, to).await;
    }

    /// `CLUSTER SETSLOT slot IMPORTING <from>` on `to`, then `… MIGRATING
    /// <to>` on `from`. From here until [`RedisCluster::finish_migration`]
    /// the source answers `ASK` for keys already moved.
    pub async fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let (from_id, to_id, s) = (
            self.node_id(from).await,
            self.node_id(to).await,
            slot.to_string(),
        );
        command(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).await;
        command(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;
    }

    /// `CLUSTER GETKEYSINSLOT` + `MIGRATE … KEYS` until the slot is empty
    /// on `from` (bounded rounds).
    pub async fn move_keys(&self, slot: u16, from: u16, to: u16) {
        let (s, batch, port) = (slot.to_string(), MIGRATE_BATCH.to_string(), to.to_string());
        for _ in 0..MIGRATE_ROUNDS {
            let keys = command(from, &["CLUSTER", "GETKEYSINSLOT", &s, &batch]).await;
            if keys.is_empty() {
                return;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let reply = command(from, &args).await;
            assert!(
                reply == ["OK"] || reply == ["NOKEY"],
                "MIGRATE slot {slot} {from} -> {to}: {reply:?}"
            );
        }
        panic!("slot {slot} still had keys after {MIGRATE_ROUNDS} MIGRATE rounds");
    }

    /// `CLUSTER SETSLOT slot NODE <to>` on `to`, on `from`, then on the
    /// other primaries; waits (bounded) until every running node routes
    /// the slot to `to`.
    pub async fn finish_migration(&self, slot: u16, from: u16, to: u16) {
        let (to_id, s) = (self.node_id(to).await, slot.to_string());
        let mut order = vec![to, from];
        order.extend(
            self.primaries()
                .await
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in order {
            command(port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
        }
        let deadline = Instant::now() + MIGRATE_WAIT;
        loop {
            let mut pending = Vec::new();
            for port in self.running() {
                let owner = self.view_of(port).await.ok().and_then(|v| {
                    v.into_iter()
                        .find(|n| n.primary && n.owns(slot))
                        .map(|n| n.port)
                });
                if owner != Some(to) {
                    pending.push((port, owner));
                }
            }
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot} not routed to {to} everywhere within {MIGRATE_WAIT:?}: {pending:?}\n{}",
                self.logs()
            );
            sleep(POLL * 2).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The panic message for a missing binary.
fn missing(bin: &str) -> String {
    format!(
        "{bin} is not on PATH, and the Redis Cluster tests need a real Redis Cluster. \
         Run scripts/install-test-deps.sh (as root), or `apt-get install redis-server redis-tools`."
    )
}

/// Panics (never skips) unless `redis-server` and `redis-cli` are installed
/// and at least 7.0 (sharded pub/sub, `cluster-port`).
fn require_binaries() {
    for bin in ["redis-server", "redis-cli"] {
        let out = match Command::new(bin).arg("--version").output() {
            Ok(out) => out,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!("{}", missing(bin)),
            Err(e) => panic!("cannot run {bin} --version: {e}"),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        // `Redis server v=7.0.15 …` / `redis-cli 7.0.15`
        let major = text
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .find(|w| w.contains('.'))
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        assert!(
            major.is_some_and(|m| m >= 7),
            "{bin} is too old for sharded pub/sub (need 7.0 or newer): {text:?}. \
             Run scripts/install-test-deps.sh on a Debian with Redis 7."
        );
    }
}
