//! The cluster under test: one real `redis-server` (with an append-only
//! file, so that it can come back with or without its data), one TCP proxy
//! per node slot in front of it, and three node slots each running the
//! real `fanout` binary. A slot's node is replaced by a new process with a
//! new id (`n<slot>-g<generation>`) after a kill or a drain, so that what a
//! dead node left in Redis can be told from what its successor wrote.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::cluster_support::{ClusterNode, ProcessNode};
use crate::load::{Live, LiveNode};
use crate::proxy::Proxy;
use crate::redis_support::{RedisServer, signal};

/// Heartbeat of the chaos nodes; registry entries live three of them.
/// The ratios are production's (2 s beats, 6 s entries, 2 s command
/// timeout), scaled down: a latency spike shorter than the command timeout
/// then stays well inside the entries' lifetime, as it does in production
/// (the `it` suite's 200 ms beats would make a 400 ms spike look like a
/// dead node on a loaded machine).
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Redis command timeout of the chaos nodes.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1000);
/// Key prefix of the chaos cluster.
pub const PREFIX: &str = "fanout-chaos";
/// Limit of connections per user (test users hold at most 2).
pub const USER_LIMIT: usize = 3;
/// Send queue of the nodes, in bytes (small, so a slow consumer overflows
/// it quickly; at least twice the largest message).
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// A node's drain: the whole of it, and the window its closes are spread over.
pub const GRACE: Duration = Duration::from_secs(4);
pub const DRAIN_WINDOW: Duration = Duration::from_millis(500);

pub struct Rig {
    pub redis: RedisServer,
    pub proxies: Vec<Proxy>,
    nodes: Vec<Option<ProcessNode>>,
    generation: [u32; 3],
    pub live: Live,
    /// Dead nodes, kept so their logs outlive them.
    graveyard: Vec<ProcessNode>,
}

impl Rig {
    pub async fn start() -> Self {
        let redis = RedisServer::start_persistent().await;
        let mut proxies = Vec::new();
        for _ in 0..3 {
            proxies.push(Proxy::start(redis.port()).await);
        }
        let mut rig = Self {
            redis,
            proxies,
            nodes: vec![None, None, None],
            generation: [0; 3],
            live: Live::default(),
            graveyard: Vec::new(),
        };
        for slot in 0..3 {
            rig.spawn(slot).await;
        }
        rig
    }

    fn toml(&self, slot: usize) -> String {
        let redis = format!(
            "[redis]\nurl = \"{}\"\nprefix = \"{PREFIX}\"\nheartbeat = \"{}ms\"\ncommand_timeout = \"{}ms\"\n\
             probe_interval = \"1s\"\nchannel_linger = \"1s\"\n",
            self.proxies[slot].url(),
            HEARTBEAT.as_millis(),
            COMMAND_TIMEOUT.as_millis()
        );
        format!(
            "{redis}\n[shutdown]\ngrace = \"{}ms\"\nreadiness_delay = \"0s\"\ndrain_window = \"{}ms\"\n\n\
             [limits]\nmax_connections_per_user = {USER_LIMIT}\nsend_queue_bytes = {QUEUE_BYTES}\n\n\
             [[history]]\ntenant = \"*\"\nrooms = \"h:*\"\nsize = 2000\nttl = \"10m\"\n",
            GRACE.as_millis(),
            DRAIN_WINDOW.as_millis(),
        )
    }

    /// Starts a new node in `slot` (waits until ready) and makes it live.
    pub async fn spawn(&mut self, slot: usize) -> String {
        assert!(self.nodes[slot].is_none(), "slot {slot} is taken");
        let id = format!("n{slot}-g{}", self.generation[slot]);
        self.generation[slot] += 1;
        let node = ProcessNode::spawn_as(&id, &self.toml(slot)).await;
        self.live.set(
            slot,
            Some(LiveNode {
                slot,
                id: id.clone(),
                addr: node.addr,
            }),
        );
        self.nodes[slot] = Some(node);
        id
    }

    pub fn id(&self, slot: usize) -> Option<String> {
        self.nodes[slot].as_ref().map(|n| n.id.clone())
    }

    /// Ids of the running nodes.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().flatten().map(|n| n.id.clone()).collect()
    }

    /// Takes the slot out of the load balancer, then SIGKILLs its node.
    pub async fn kill(&mut self, slot: usize) -> (String, Instant) {
        self.live.set(slot, None);
        let mut node = self.nodes[slot].take().expect("a node in the slot");
        let at = Instant::now();
        node.kill9().await;
        let id = node.id.clone();
        self.graveyard.push(node);
        (id, at)
    }

    /// Takes the slot out of the load balancer, then SIGTERMs its node and
    /// waits for it to exit; returns its id, exit status and how long the
    /// drain took.
    pub async fn drain(&mut self, slot: usize) -> (String, ExitStatus, Duration) {
        self.live.set(slot, None);
        let mut node = self.nodes[slot].take().expect("a node in the slot");
        let at = Instant::now();
        let status = node.terminate().await;
        let took = at.elapsed();
        let id = node.id.clone();
        self.graveyard.push(node);
        (id, status, took)
    }

    /// `GET /readyz` of every running node: the ones not answering 200, with why.
    pub async fn unready(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.iter().flatten() {
            let (status, body) = n.readyz().await;
            if status != 200 {
                out.push(format!("{}: {status} {}", n.id, body.trim()));
            }
        }
        out
    }

    /// Waits (bounded) until every node answers `/readyz` 200.
    pub async fn wait_ready(&self, bound: Duration) -> Result<Instant, Vec<String>> {
        let deadline = Instant::now() + bound;
        loop {
            let unready = self.unready().await;
            if unready.is_empty() {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                return Err(unready);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/stats` of each running node (`Err`: what it answered instead).
    pub async fn stats(&self) -> Vec<(String, Result<Value, String>)> {
        let mut out = Vec::new();
        for n in self.nodes.iter().flatten() {
            let (status, body) = n.api_get("/v1/stats").await;
            let r = if status == 200 {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            };
            out.push((n.id.clone(), r));
        }
        out
    }

    /// The HTTP presence of a room through each running node.
    pub async fn presence(&self, tenant: &str, room: &str) -> Vec<(String, Result<Value, String>)> {
        let mut out = Vec::new();
        let path = format!("/v1/tenants/{tenant}/rooms/{room}/presence");
        for n in self.nodes.iter().flatten() {
            let (status, body) = n.api_get(&path).await;
            let r = if status == 200 {
                Ok(body["members"].clone())
            } else {
                Err(format!("{status} {body}"))
            };
            out.push((n.id.clone(), r));
        }
        out
    }

    /// Pauses Redis: `CLIENT PAUSE` for `d`, or SIGSTOP now and SIGCONT after `d`.
    pub async fn pause_redis(&self, sigstop: bool, d: Duration) {
        if sigstop {
            let pid = self.redis.pid().expect("redis runs");
            signal(pid, "STOP");
            tokio::time::sleep(d).await;
            signal(pid, "CONT");
        } else {
            let ms = d.as_millis().to_string();
            self.redis.command(&["CLIENT", "PAUSE", &ms, "ALL"]).await;
            tokio::time::sleep(d).await;
        }
    }

    /// Where every node's log is (dead ones included), for failure reports.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.graveyard
            .iter()
            .chain(self.nodes.iter().flatten())
            .map(|n| (n.id.clone(), n.log_path()))
            .collect()
    }

    /// The last lines of every running node's log.
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(ProcessNode::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Registry TTL of the nodes: three heartbeats.
pub fn ttl() -> Duration {
    HEARTBEAT * 3
}

/// The nodes' Redis command timeout.
pub fn command_timeout() -> Duration {
    COMMAND_TIMEOUT
}
