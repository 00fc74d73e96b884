//! The fanout gateway node.
//!
//! A node holds clients' WebSockets, serves the backend HTTP API, and
//! reaches connections on other nodes through a [`cluster::Bus`].
//!
//! ```text
//!   client frame ─▶ session ─┐                         ┌─▶ bus ─▶ other nodes
//!                            ├─▶ node: validate, encode once ─┤
//!   POST /v1/publish ─▶ http ┘                         └─▶ hub ─▶ member send queues ─▶ session writer (feed…flush)
//! ```
//!
//! Modules, one concern each:
//!
//! - [`config`]: typed config from TOML + `FANOUT_*` env, validated at start.
//! - [`auth`]: JWT verification into grants; API keys.
//! - [`session`]: one connection, one `select!` loop: reads, queue, timers.
//! - [`hub`]: the local socket map and the bounded per-connection send queue.
//! - [`message`]: a broadcast, encoded once per codec into shared bytes.
//! - [`node`]: the domain calls handlers make (publish, presence, stats, drain).
//! - [`cluster`]: the `Bus` seam to other nodes; the embedded bus.
//! - [`http`]: upgrade, API, health and metrics endpoints.
//! - [`metrics`]: metric names and recording helpers.
//! - [`server`]: bind, serve, drain.
//! - [`telemetry`]: log setup.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod http;
pub mod hub;
pub mod message;
pub mod metrics;
pub mod node;
pub mod server;
pub mod session;
pub mod telemetry;

pub use self::config::Config;
pub use self::node::Node;
pub use self::server::Server;
