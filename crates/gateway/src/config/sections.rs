//! The configuration sections, with their defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The commented example printed by `fanout genconfig`; a test keeps it valid.
pub const EXAMPLE_CONFIG: &str = include_str!("example.toml");

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node id shown in `welcome` and used in the cluster registry. Must be
    /// unique among running nodes; defaults to `<hostname>-<random>`.
    pub node_id: Option<String>,
    /// Address for WebSockets, the HTTP API, `/healthz`, `/readyz` and
    /// (without `metrics_listen`) `/metrics`.
    pub listen: SocketAddr,
    /// Optional separate address for `/metrics` (then served there only),
    /// `/healthz` and `/readyz`.
    pub metrics_listen: Option<SocketAddr>,
    /// Time and number limits of HTTP connections on the listeners.
    pub http: HttpConfig,
    /// What `/metrics` shows.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Keys of the backend HTTP API.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Limits that protect the node and other clients.
    pub limits: Limits,
    /// Per-connection timers.
    pub session: SessionConfig,
    /// Drain and exit.
    pub shutdown: ShutdownConfig,
    /// Cluster mode over Redis; absent means the embedded single-node bus.
    pub redis: Option<RedisConfig>,
    /// TLS on the main listener (`wss://`, `https://`) without a proxy in front.
    pub tls: Option<TlsConfig>,
    /// Which rooms keep history (§7 of the protocol); the first matching
    /// rule wins, and a room no rule matches keeps none.
    pub history: Vec<HistoryRule>,
}

/// One `[[history]]` rule: rooms matching `tenant` and `rooms` keep their
/// last `size` messages, for `ttl` after the room's last publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// A tenant name, or `"*"` for every tenant.
    pub tenant: String,
    /// A room pattern (`*` matches any run of characters, as in token claims).
    pub rooms: String,
    /// Messages kept per room (at most [`MAX_HISTORY_SIZE`]).
    pub size: usize,
    /// How long a quiet room keeps its messages (at most [`MAX_HISTORY_TTL`]).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// Largest `size` of a history rule: a replay is at most this many messages.
pub const MAX_HISTORY_SIZE: usize = 10_000;
/// Longest `ttl` of a history rule.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Certificate and key of the main listener, PEM files. Read at start; a
/// rotated certificate takes effect on restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first (PEM).
    pub cert_file: std::path::PathBuf,
    /// Private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            api_keys: Vec::new(),
            limits: Limits::default(),
            session: SessionConfig::default(),
            shutdown: ShutdownConfig::default(),
            redis: None,
            tls: None,
            history: Vec::new(),
        }
    }
}

/// HTTP connections on the listeners (`listen`, `metrics_listen`), from
/// their accept until they are upgraded to a WebSocket or closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A request head must be complete within this, from the accept (TLS
    /// handshake included) or from the first byte of the request on a
    /// keep-alive connection; else the connection is closed (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after
    /// this. Longer than the keep-alive of a proxy in front (nginx: 60 s),
    /// so that the proxy, not the node, closes idle connections.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Connections served as usual while in HTTP. Beyond it a connection
    /// gets one request within 2 s of its accept, and only a WebSocket
    /// upgrade or `/healthz`, `/readyz`, `/metrics`; other requests answer
    /// 503, so that descriptors stay for WebSockets.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            max_connections: 1024,
        }
    }
}

/// What `/metrics` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `fanout_connections` has a series for each of this many tenants
    /// with the most connections on the node, and one, `tenant="(other)"`,
    /// for all the others; 0 = only that one.
    pub top_tenants: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { top_tenants: 20 }
    }
}

/// Largest `metrics.top_tenants`: every series is scraped and stored.
pub const MAX_TOP_TENANTS: usize = 1000;

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `fanout_gateway=debug,info`.
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Accepted JWT signature algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with a public key.
    RS256,
    /// ECDSA P-256 with SHA-256, verified with a public key.
    ES256,
}

/// One verification key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    /// The algorithm tokens must be signed with; any other is refused.
    pub algorithm: Option<JwtAlgorithm>,
    /// Shared secret for HS256.
    pub secret: Option<String>,
    /// PEM public key file for RS256 / ES256.
    pub public_key_file: Option<PathBuf>,
}

impl KeyConfig {
    /// Whether any key material is set.
    pub fn is_set(&self) -> bool {
        self.secret.is_some() || self.public_key_file.is_some()
    }
}

/// One key of a key set chosen by the `kid` in a token's header
/// (`[[auth.keys]]`, `[[auth.tenants.<t>.keys]]`): several can be listed at
/// once, so that keys are rotated without downtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKeyConfig {
    /// Key id: a token whose header has this `kid` is verified with this key only.
    pub kid: String,
    /// The algorithm tokens must be signed with; any other is refused.
    #[serde(default)]
    pub algorithm: Option<JwtAlgorithm>,
    /// Shared secret for HS256.
    #[serde(default)]
    pub secret: Option<String>,
    /// PEM public key file for RS256 / ES256.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
}

impl NamedKeyConfig {
    /// The key material, without the id.
    pub fn key(&self) -> KeyConfig {
        KeyConfig {
            algorithm: self.algorithm,
            secret: self.secret.clone(),
            public_key_file: self.public_key_file.clone(),
        }
    }
}

/// Token verification: the default keys and what tokens must say, and
/// optional per-tenant keys and expectations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Algorithm of the default key without a `kid` (for tenants without their own keys).
    pub algorithm: Option<JwtAlgorithm>,
    /// HS256 secret of the default key without a `kid`.
    pub secret: Option<String>,
    /// RS256 / ES256 PEM public key file of the default key without a `kid`.
    pub public_key_file: Option<PathBuf>,
    /// Default keys with a `kid`, for rotation.
    pub keys: Vec<NamedKeyConfig>,
    /// Default keys from a JWKS document (`https://`, or `http://` on loopback only).
    pub jwks_url: Option<String>,
    /// Expected `aud`: when set, a token must name it in `aud`.
    pub audience: Option<String>,
    /// Expected `iss`: when set, a token's `iss` must be exactly this.
    pub issuer: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Every JWKS is fetched again this often.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// A token with a `kid` no key has makes the JWKS be fetched again, at
    /// most once per this (failed fetches count).
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
    /// Longest JWKS fetch; also bounds how long a connecting client waits for one.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// Tenants that sign their own tokens or expect other claims. A token
    /// whose `tenant` has keys here is verified with those keys only.
    pub tenants: BTreeMap<String, TenantAuthConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: None,
            secret: None,
            public_key_file: None,
            keys: Vec::new(),
            jwks_url: None,
            audience: None,
            issuer: None,
            leeway: Duration::ZERO,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(3),
            tenants: BTreeMap::new(),
        }
    }
}

impl AuthConfig {
    /// The default key without a `kid`.
    pub fn default_key(&self) -> KeyConfig {
        KeyConfig {
            algorithm: self.algorithm,
            secret: self.secret.clone(),
            public_key_file: self.public_key_file.clone(),
        }
    }

    /// Whether any default key is configured (without a `kid`, with one, or a JWKS).
    pub fn has_default_keys(&self) -> bool {
        self.default_key().is_set() || !self.keys.is_empty() || self.jwks_url.is_some()
    }
}

/// `[auth.tenants.<t>]`: a tenant's own keys (any of a key without a `kid`,
/// `keys`, `jwks_url`), and what its tokens must say. `audience` and
/// `issuer` replace the global ones for this tenant; unset, the global ones
/// apply. A tenant with no key of its own uses the default keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantAuthConfig {
    /// Algorithm of the tenant's key without a `kid`.
    pub algorithm: Option<JwtAlgorithm>,
    /// HS256 secret of the tenant's key without a `kid`.
    pub secret: Option<String>,
    /// RS256 / ES256 PEM public key file of the tenant's key without a `kid`.
    pub public_key_file: Option<PathBuf>,
    /// The tenant's keys with a `kid`.
    pub keys: Vec<NamedKeyConfig>,
    /// The tenant's JWKS.
    pub jwks_url: Option<String>,
    /// Expected `aud` for this tenant (replaces `auth.audience`).
    pub audience: Option<String>,
    /// Expected `iss` for this tenant (replaces `auth.issuer`).
    pub issuer: Option<String>,
}

impl TenantAuthConfig {
    /// The tenant's key without a `kid`.
    pub fn key(&self) -> KeyConfig {
        KeyConfig {
            algorithm: self.algorithm,
            secret: self.secret.clone(),
            public_key_file: self.public_key_file.clone(),
        }
    }

    /// Whether the tenant has keys of its own (then the default keys never verify its tokens).
    pub fn has_own_keys(&self) -> bool {
        self.key().is_set() || !self.keys.is_empty() || self.jwks_url.is_some()
    }
}

impl From<KeyConfig> for TenantAuthConfig {
    fn from(key: KeyConfig) -> Self {
        Self {
            algorithm: key.algorithm,
            secret: key.secret,
            public_key_file: key.public_key_file,
            ..Self::default()
        }
    }
}

/// One API key of the backend HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The bearer token backends send.
    pub key: String,
    /// When set, the key may only act on this tenant (others answer 403).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Limits; every one has a default sized for a general-purpose deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest client frame; larger closes the connection with 1009.
    pub max_frame_bytes: usize,
    /// Largest published message, as the delivered `message` frame in the
    /// larger of its two encodings (JSON, MessagePack); larger is 413.
    pub max_message_bytes: usize,
    /// Rooms one connection may be subscribed to at once.
    pub max_rooms_per_connection: usize,
    /// Connections one user may hold (0 = unlimited); beyond closes 4003.
    pub max_connections_per_user: u32,
    /// Connections one tenant may hold (0 = unlimited); beyond closes 4003.
    pub max_connections_per_tenant: u32,
    /// Sustained client publishes per second per connection.
    pub publish_rate: f64,
    /// Publishes a connection may burst above the sustained rate.
    pub publish_burst: u32,
    /// Sustained client requests per second per connection other than
    /// publishes (subscribe, unsubscribe, presence, history, refresh, ping):
    /// each costs the node (and a presence query or a history read costs
    /// Redis) something, so a logged-in client cannot loop them freely.
    pub request_rate: f64,
    /// Requests a connection may burst above `request_rate`.
    pub request_burst: u32,
    /// Sustained subscribes + unsubscribes per second per connection (on
    /// top of `request_rate`): each can send a join or leave event to every
    /// presence watcher of the room in the cluster, so this caps the events
    /// one connection can cause.
    pub membership_rate: f64,
    /// Subscribes + unsubscribes a connection may burst above
    /// `membership_rate`; at least `max_rooms_per_connection`, so that a
    /// client reconnecting resubscribes all its rooms at once.
    pub membership_burst: u32,
    /// Consecutive rate-limited requests (of any kind) before closing with 4008.
    pub rate_limit_strikes: u32,
    /// Consecutive malformed frames before closing with 4000.
    pub malformed_strikes: u32,
    /// Frames a connection's send queue may hold before it is closed with 4009.
    pub send_queue_messages: usize,
    /// Bytes a connection's send queue may hold before it is closed with 4009.
    pub send_queue_bytes: usize,
    /// Largest HTTP API request body; larger is 413.
    pub max_http_body_bytes: usize,
    /// Most messages in one `/v1/publish/batch`.
    pub max_batch_messages: usize,
    /// Embedded bus only: memory all rooms' history may take, counted as
    /// the stored message bytes; beyond it the history of the rooms
    /// published to longest ago is dropped (and counted). In cluster mode
    /// history lives in Redis and this does not apply.
    pub history_memory_bytes: usize,
    /// Embedded bus only: idempotency keys remembered at once (each for 5
    /// minutes); beyond it the oldest are forgotten early (and counted).
    pub idempotency_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            max_message_bytes: 65_536,
            max_rooms_per_connection: 100,
            max_connections_per_user: 32,
            max_connections_per_tenant: 0,
            publish_rate: 20.0,
            publish_burst: 40,
            request_rate: 20.0,
            request_burst: 150,
            membership_rate: 5.0,
            membership_burst: 100,
            rate_limit_strikes: 20,
            malformed_strikes: 10,
            send_queue_messages: 1_024,
            send_queue_bytes: 4 * 1024 * 1024,
            max_http_body_bytes: 1024 * 1024,
            max_batch_messages: 1_000,
            history_memory_bytes: 256 * 1024 * 1024,
            idempotency_keys: 1_000_000,
        }
    }
}

/// Per-connection timers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Time to authenticate after the upgrade; then 4001.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Interval of server WebSocket pings (also sent in `welcome`).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection silent this long (no frame, no pong) is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A socket write that takes longer than this closes the connection.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Shutdown on SIGTERM / SIGINT.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Longest time from the signal to exit; connections still open then are dropped.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// After the signal, `/readyz` answers 503 but clients are served as
    /// before for this long, so that load balancers stop sending new
    /// connections here before the existing ones are asked to reconnect.
    #[serde(with = "humantime_serde")]
    pub readiness_delay: Duration,
    /// Clients are closed with 1012 in batches spread evenly over this
    /// window, so that their reconnects do not arrive at the other nodes
    /// all at once.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(25),
            readiness_delay: Duration::from_secs(5),
            drain_window: Duration::from_secs(10),
        }
    }
}

/// Cluster mode: registry, presence and relay through one Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (one Redis), or
    /// `redis-cluster://[user:password@]host:port[?node=host:port&node=…]`
    /// (a Redis Cluster, named by one or more seed nodes).
    pub url: String,
    /// Prefix of every key and channel, so that several clusters can share one Redis.
    pub prefix: String,
    /// Interval of the node heartbeat; registry entries live for three beats.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Rooms hosted on at most this many nodes are sent directly to each
    /// node's inbox; rooms spread wider are published once on their channel.
    pub direct_max_nodes: usize,
    /// How long a room or tenant channel stays subscribed after its last local member leaves.
    #[serde(with = "humantime_serde")]
    pub channel_linger: Duration,
    /// Timeout of one Redis command; a publish that times out answers 503.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Interval of the probe a node publishes to its own inbox to detect a
    /// subscriber connection that silently stopped delivering.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Redis Cluster: how often the slot map is re-read (also at once after
    /// a redirection or a reconnect). A migrated slot's channels are
    /// resubscribed on the new owner within about this long.
    #[serde(with = "humantime_serde")]
    pub cluster_refresh: Duration,
    /// How often a pass of the registry audit starts: it scans the keys in
    /// steps (one per heartbeat) and removes entries of nodes that are gone
    /// from the node index, which a lost node index would otherwise leave
    /// for good.
    #[serde(with = "humantime_serde")]
    pub audit_interval: Duration,
    /// Capacity of the pub/sub receive buffer (messages) between the Redis
    /// client and the node's dispatcher; overflow is counted and logged.
    pub pubsub_buffer: usize,
    /// Bytes the same buffer may hold (whichever bound comes first): a burst
    /// of large messages cannot grow the node's memory past it.
    pub pubsub_buffer_bytes: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "fanout".into(),
            heartbeat: Duration::from_secs(2),
            direct_max_nodes: 4,
            channel_linger: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(5),
            cluster_refresh: Duration::from_secs(1),
            audit_interval: Duration::from_secs(60),
            pubsub_buffer: 65_536,
            pubsub_buffer_bytes: 64 * 1024 * 1024,
        }
    }
}

impl RedisConfig {
    /// How long a registry entry lives without a heartbeat: three beats.
    pub fn entry_ttl(&self) -> Duration {
        self.heartbeat * 3
    }
}
