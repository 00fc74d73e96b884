//! The command line: one subcommand per scenario, the flags every scenario
//! shares ([`Common`]) and the publish plan the message scenarios share
//! ([`Load`]).
//!
//! The argument structs are also serde data: with `--procs N` the parent
//! hands each child its whole scenario as one JSON line on stdin instead of
//! re-assembling an argv (which would have to strip and override flags such
//! as `--bind` and `--procs` by string surgery).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// HS256 secret of a node in development mode (`fanout` with no config).
/// Public on purpose: it only works against loopback dev nodes.
pub const DEV_SECRET: &str = "fanout-dev-secret-DO-NOT-USE-IN-PRODUCTION";
/// API key of a node in development mode.
pub const DEV_API_KEY: &str = "fanout-dev-api-key";

/// fanout's load generator. Every scenario is bounded in count and time,
/// targets loopback only, prints one JSON result line on stdout and a
/// summary on stderr.
#[derive(Debug, Parser)]
#[command(name = "fanout-loadtest", version, about)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios, plus the hidden child mode used by `--procs`.
#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
pub enum Command {
    /// C connections, each subscribed to a room: connect rate, failures,
    /// server RSS per connection and server CPU at rest.
    Idle(IdleArgs),
    /// S subscribers in one room, P publishes at rate R (or a ramp):
    /// deliveries/s, loss, duplicates, order, latency.
    Fanout(FanoutArgs),
    /// Many small rooms, random publishes (or a ramp): same measures as `fanout`.
    Rooms(RoomsArgs),
    /// User-addressed sends to users with several connections spread over nodes.
    Users(UsersArgs),
    /// Connects and disconnects at a set rate while a fan-out runs; with
    /// --reconnect / --recover the churn connections are clients that come
    /// back (and resume with `since`), measured across their connections.
    Churn(ChurnArgs),
    /// Fills N rooms with M messages each (no subscribers) and measures
    /// what the node's room history costs in memory.
    History(HistoryArgs),
    /// Internal: run one share of a `--procs` run, driven over stdin/stdout.
    #[command(name = "__child", hide = true)]
    Child,
}

impl Command {
    /// The flags shared by every scenario (`None` for the child mode).
    pub fn common(&self) -> Option<&Common> {
        match self {
            Command::Idle(a) => Some(&a.common),
            Command::Fanout(a) => Some(&a.common),
            Command::Rooms(a) => Some(&a.common),
            Command::Users(a) => Some(&a.common),
            Command::Churn(a) => Some(&a.common),
            Command::History(a) => Some(&a.common),
            Command::Child => None,
        }
    }

    /// The scenario's name as printed in results.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Idle(_) => "idle",
            Command::Fanout(_) => "fanout",
            Command::Rooms(_) => "rooms",
            Command::Users(_) => "users",
            Command::Churn(_) => "churn",
            Command::History(_) => "history",
            Command::Child => "child",
        }
    }

    /// How many connections the whole run opens (all processes together),
    /// not counting churn connections, which come and go.
    pub fn total_connections(&self) -> usize {
        match self {
            Command::Idle(a) => a.connections,
            Command::Fanout(a) => a.subscribers,
            Command::Rooms(a) => a.connections,
            Command::Users(a) => a.users.saturating_mul(a.conns_per_user),
            Command::Churn(a) => a.subscribers + a.churn_concurrency_bound(),
            Command::History(_) => 0,
            Command::Child => 0,
        }
    }
}

/// Which codec the connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecChoice {
    /// JSON text frames (`fanout.json`).
    Json,
    /// MessagePack binary frames (`fanout.msgpack`).
    Msgpack,
    /// Alternate per connection: even connections JSON, odd MessagePack.
    Mixed,
}

/// How connections authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `Authorization: Bearer` on the upgrade request (servers, mobile).
    Header,
    /// `{"type":"auth"}` as the first frame (browsers).
    Frame,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Common {
    /// Node WebSocket URL, e.g. ws://127.0.0.1:8080 (path defaults to /ws).
    /// Repeat for several nodes; connections and publishers go round-robin.
    /// The HTTP API is reached at the same host:port. Loopback only.
    #[arg(long = "node", default_value = "ws://127.0.0.1:8080")]
    pub nodes: Vec<String>,
    /// Source addresses for client sockets, bound round-robin, e.g.
    /// `127.0.0.1,127.0.0.2` or `127.0.0.1-8`. Loopback only.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// HS256 secret the generator signs its tokens with (the node's `auth.secret`).
    #[arg(long, env = "FANOUT_LOADTEST_SECRET", hide_env_values = true, default_value = DEV_SECRET)]
    pub secret: String,
    /// API key for `POST /v1/publish`.
    #[arg(long, env = "FANOUT_LOADTEST_API_KEY", hide_env_values = true, default_value = DEV_API_KEY)]
    pub api_key: String,
    /// Tenant of every token and publish.
    #[arg(long, default_value = "loadtest")]
    pub tenant: String,
    /// Codec of the connections.
    #[arg(long, value_enum, default_value_t = CodecChoice::Json)]
    pub codec: CodecChoice,
    /// Where the token goes.
    #[arg(long, value_enum, default_value_t = AuthMode::Header)]
    pub auth: AuthMode,
    /// Hard cap on the whole run; a run that reaches it stops and reports
    /// `"complete":false`.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Connection attempts in flight at once (per process). Kept under the
    /// node's listen backlog (4096, capped by `net.core.somaxconn`): a burst beyond it
    /// overflows the accept queue and each dropped SYN costs a 1 s retransmit.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// New connections per second (per process); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Longest time one connection may take to connect, authenticate and subscribe.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// How long to wait for outstanding deliveries after the last publish.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Spread the run over N child processes (each with a share of the
    /// connections and of the --bind addresses).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// PID of a node process to measure; repeatable (values are summed).
    /// `idle` and `history` read its RSS; the message scenarios its CPU
    /// while they publish.
    #[arg(long = "node-pid")]
    pub node_pids: Vec<u32>,
    /// Padding added to every published payload, in bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Seed of the random choices (room and user picks), for repeatable runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The publish plan of the message scenarios.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Load {
    /// Messages to publish in total (over all processes and publishers).
    #[arg(long, default_value_t = 1000)]
    pub publishes: u64,
    /// Publishes per second in total.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Concurrent publishers per process. Each is sequential (one request in
    /// flight) so that its messages have a defined order; a node answers a
    /// publish after queueing it for its local members, so one publisher
    /// into a large room is limited by that round trip.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
}

/// `idle`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct IdleArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Rooms the connections are spread over (connection i joins room i mod rooms).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Wait after the last connect before measuring RSS.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
    /// How long connections are held open while server CPU is measured.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub hold: Duration,
    /// Also send an application `ping` frame from every connection this often
    /// (0 = only the server's WebSocket pings).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub ping_every: Duration,
}

/// `fanout`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct FanoutArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Subscribers in the room.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publish plan (with --ramp: the starting rate; --publishes is ignored).
    #[command(flatten)]
    pub load: Load,
    /// The ramp (`--ramp` and its flags).
    #[command(flatten)]
    pub ramp: RampArgs,
}

/// A rising publish rate (`fanout --ramp`, `rooms --ramp`).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct RampArgs {
    /// Step the rate up (from --rate) until a step loses, duplicates or
    /// reorders a message, its p99 exceeds --p99-bound-ms or the publishers
    /// reach less than 90 % of its rate; report the highest rate that
    /// passed. --publishes is ignored.
    #[arg(long = "ramp")]
    pub on: bool,
    /// Latency bound a ramp step must meet.
    #[arg(long, default_value_t = 50.0)]
    pub p99_bound_ms: f64,
    /// Length of one ramp step.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub step: Duration,
    /// Rate multiplier from one ramp step to the next (> 1).
    #[arg(long, default_value_t = 1.5)]
    pub ramp_factor: f64,
    /// Highest rate a ramp tries.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// PID of a Redis process whose CPU each ramp step reports (with the
    /// --node-pid processes'); repeatable, values summed.
    #[arg(long = "redis-pid")]
    pub redis_pids: Vec<u32>,
}

/// `rooms`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct RoomsArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Connections, grouped into rooms of --room-size.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Members per room.
    #[arg(long, default_value_t = 4)]
    pub room_size: usize,
    /// Publish plan: each publish goes to a random room (with --ramp: the
    /// starting rate; --publishes is ignored).
    #[command(flatten)]
    pub load: Load,
    /// The ramp (`--ramp` and its flags).
    #[command(flatten)]
    pub ramp: RampArgs,
}

/// `users`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct UsersArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Distinct users.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Connections per user, spread round-robin over the nodes.
    #[arg(long, default_value_t = 3)]
    pub conns_per_user: usize,
    /// Publish plan: each publish goes to a random user.
    #[command(flatten)]
    pub load: Load,
}

/// `churn`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ChurnArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: Common,
    /// Stable subscribers in the room; loss and latency are measured on them.
    #[arg(long, default_value_t = 500)]
    pub subscribers: usize,
    /// Publish plan into the room.
    #[command(flatten)]
    pub load: Load,
    /// Churn connections opened per second (in total); each joins the room,
    /// stays --churn-hold and disconnects.
    #[arg(long, default_value_t = 50.0)]
    pub churn_rate: f64,
    /// How long one churn connection stays.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub churn_hold: Duration,
    /// Churn connections are clients that come back: each subscribes
    /// before the first publish, leaves after --churn-hold, stays away
    /// --churn-away and reconnects, again and again while publishing; after
    /// the last publish each comes back once more and stays. They are owed
    /// every message, accounted across their connections (`recovery`).
    /// Without --recover they resubscribe without `since`.
    #[arg(long)]
    pub reconnect: bool,
    /// Like --reconnect, and a returning client subscribes with `since` =
    /// the last (epoch, offset) it saw in the room (a room with history).
    #[arg(long)]
    pub recover: bool,
    /// With --reconnect / --recover: how long a client stays away.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub churn_away: Duration,
}

impl ChurnArgs {
    /// Whether churn connections are reconnecting clients.
    pub fn reconnecting(&self) -> bool {
        self.reconnect || self.recover
    }

    /// Reconnecting clients in the whole run: enough that, each cycling
    /// through --churn-hold and --churn-away, about --churn-rate of them
    /// reconnect per second.
    pub fn reconnecting_clients(&self) -> usize {
        let cycle = self.churn_hold.as_secs_f64() + self.churn_away.as_secs_f64();
        (self.churn_rate * cycle).ceil().max(1.0) as usize
    }

    /// Churn connections open at once, at most (rate × hold, plus slack for
    /// slow closes; the clients themselves when reconnecting); used to
    /// check the file limit.
    pub fn churn_concurrency_bound(&self) -> usize {
        let fresh = (self.churn_rate * (self.churn_hold.as_secs_f64() + 1.0)).ceil() as usize;
        if self.reconnecting() {
            fresh.max(self.reconnecting_clients() + self.churn_rate.ceil() as usize)
        } else {
            fresh
        }
    }
}

/// `history`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct HistoryArgs {
    /// Shared flags (--payload-bytes sets the size of every message).
    #[command(flatten)]
    pub common: Common,
    /// Rooms to fill (named as `rooms` names them, so one `[[history]]`
    /// rule matches both).
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Messages published into each room (the rule's `size` fills it).
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Messages per `POST /v1/publish/batch` request (at most the node's
    /// `limits.max_batch_messages`, default 1,000).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Wait after the last publish before reading RSS.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub settle: Duration,
}

/// Parses `30`, `30s`, `500ms`, `2m` or `1.5s` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (use e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn scenario_args_round_trip_through_json() {
        let cli = Cli::try_parse_from([
            "fanout-loadtest",
            "fanout",
            "--node",
            "ws://127.0.0.1:1",
            "--node",
            "ws://127.0.0.1:2",
            "--subscribers",
            "7",
            "--ramp",
        ])
        .unwrap();
        let json = serde_json::to_string(&cli.command).unwrap();
        let back: Command = serde_json::from_str(&json).unwrap();
        let Command::Fanout(args) = back else {
            panic!("{json}")
        };
        assert_eq!(args.subscribers, 7);
        assert!(args.ramp.on);
        assert_eq!(args.common.nodes.len(), 2);
    }

    #[test]
    fn rooms_take_the_ramp_flags() {
        let cli = Cli::try_parse_from([
            "fanout-loadtest",
            "rooms",
            "--ramp",
            "--ramp-factor",
            "1.25",
            "--redis-pid",
            "7",
            "--redis-pid",
            "8",
        ])
        .unwrap();
        let Command::Rooms(args) = cli.command else {
            panic!("not rooms")
        };
        assert!(args.ramp.on);
        assert_eq!(args.ramp.ramp_factor, 1.25);
        assert_eq!(args.ramp.redis_pids, [7, 8]);
    }
}
