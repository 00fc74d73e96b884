//! Checks that go beyond types: ranges, combinations, files that must exist.

use super::error::ConfigError;
use super::sections::{
    AuthConfig, Config, HistoryRule, JwtAlgorithm, KeyConfig, MAX_HISTORY_SIZE, MAX_HISTORY_TTL,
    NamedKeyConfig, RedisConfig,
};

/// HS256 secret of development mode. Public on purpose: development mode only
/// listens on loopback, and `fanout token` must mint tokens the node accepts.
pub const DEV_SECRET: &str = "fanout-dev-secret-DO-NOT-USE-IN-PRODUCTION";
/// API key of development mode.
pub const DEV_API_KEY: &str = "fanout-dev-api-key";

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Config {
    /// Development mode: no token key and no API key configured.
    pub fn is_dev_mode(&self) -> bool {
        !self.auth.has_default_keys() && self.auth.tenants.is_empty() && self.api_keys.is_empty()
    }

    /// Checks every value that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.is_dev_mode() && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "auth",
                format!(
                    "no token key and no API key are configured (development mode), which is \
                     only allowed on a loopback address, but `listen` is {}; set auth.secret \
                     (or auth.public_key_file) and api_keys",
                    self.listen
                ),
            ));
        }
        if let Some(id) = &self.node_id {
            fanout_protocol::names::validate_name("node", id)
                .map_err(|e| invalid("node_id", e.to_string()))?;
        }
        validate_auth(&self.auth)?;
        for tenant in self.auth.tenants.keys() {
            fanout_protocol::names::validate_name("tenant", tenant)
                .map_err(|e| invalid("auth.tenants", e.to_string()))?;
        }
        for key in &self.api_keys {
            if key.key.len() < 16 {
                return Err(invalid(
                    "api_keys.key",
                    "an API key must be at least 16 characters",
                ));
            }
            if let Some(t) = &key.tenant {
                fanout_protocol::names::validate_name("tenant", t)
                    .map_err(|e| invalid("api_keys.tenant", e.to_string()))?;
            }
        }
        self.validate_limits()?;
        validate_http(&self.http, &self.metrics)?;
        for rule in &self.history {
            validate_history(rule)?;
        }
        if let Some(redis) = &self.redis {
            validate_redis(redis)?;
        }
        let s = &self.session;
        if s.ping_interval.is_zero() {
            return Err(invalid(
                "session.ping_interval",
                "must be greater than zero",
            ));
        }
        if s.ping_interval >= s.idle_timeout {
            return Err(invalid(
                "session.ping_interval",
                format!(
                    "must be shorter than session.idle_timeout ({:?}), or live clients are closed as idle",
                    s.idle_timeout
                ),
            ));
        }
        if s.auth_timeout.is_zero() {
            return Err(invalid("session.auth_timeout", "must be greater than zero"));
        }
        if s.write_timeout.is_zero() {
            return Err(invalid(
                "session.write_timeout",
                "must be greater than zero",
            ));
        }
        let d = &self.shutdown;
        if d.readiness_delay
            .checked_add(d.drain_window)
            .is_none_or(|before_close| before_close >= d.grace)
        {
            return Err(invalid(
                "shutdown.grace",
                format!(
                    "must be longer than shutdown.readiness_delay + shutdown.drain_window \
                     ({:?} + {:?}), or the drain is cut short",
                    d.readiness_delay, d.drain_window
                ),
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive: [(&'static str, usize); 7] = [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.max_message_bytes", l.max_message_bytes),
            (
                "limits.max_rooms_per_connection",
                l.max_rooms_per_connection,
            ),
            ("limits.send_queue_messages", l.send_queue_messages),
            ("limits.send_queue_bytes", l.send_queue_bytes),
            ("limits.max_http_body_bytes", l.max_http_body_bytes),
            ("limits.max_batch_messages", l.max_batch_messages),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        for (rate_field, rate, burst_field, burst) in [
            (
                "limits.publish_rate",
                l.publish_rate,
                "limits.publish_burst",
                l.publish_burst,
            ),
            (
                "limits.request_rate",
                l.request_rate,
                "limits.request_burst",
                l.request_burst,
            ),
            (
                "limits.membership_rate",
                l.membership_rate,
                "limits.membership_burst",
                l.membership_burst,
            ),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(invalid(rate_field, "must be a positive number"));
            }
            if burst == 0 {
                return Err(invalid(burst_field, "must be at least 1"));
            }
        }
        if (l.membership_burst as usize) < l.max_rooms_per_connection {
            return Err(invalid(
                "limits.membership_burst",
                "must be at least limits.max_rooms_per_connection (a reconnecting client resubscribes all its rooms at once)",
            ));
        }
        if l.request_burst < l.membership_burst {
            return Err(invalid(
                "limits.request_burst",
                "must be at least limits.membership_burst (subscribes count against both)",
            ));
        }
        if l.rate_limit_strikes == 0 {
            return Err(invalid("limits.rate_limit_strikes", "must be at least 1"));
        }
        if l.malformed_strikes == 0 {
            return Err(invalid("limits.malformed_strikes", "must be at least 1"));
        }
        if l.history_memory_bytes < l.max_message_bytes {
            return Err(invalid(
                "limits.history_memory_bytes",
                "must be at least limits.max_message_bytes, or no message fits in history",
            ));
        }
        if l.idempotency_keys == 0 {
            return Err(invalid("limits.idempotency_keys", "must be at least 1"));
        }
        if l.send_queue_bytes < 2 * l.max_message_bytes {
            return Err(invalid(
                "limits.send_queue_bytes",
                "must be at least twice limits.max_message_bytes, or one or two large messages close every reader",
            ));
        }
        Ok(())
    }
}

fn validate_auth(auth: &AuthConfig) -> Result<(), ConfigError> {
    check_key("auth", &auth.default_key(), false)?;
    check_named_keys("auth.keys", &auth.keys)?;
    if let Some(url) = &auth.jwks_url {
        check_jwks_url("auth.jwks_url", url)?;
    }
    check_expected("auth.audience", auth.audience.as_deref())?;
    check_expected("auth.issuer", auth.issuer.as_deref())?;
    for (field, value) in [
        ("auth.jwks_refresh", auth.jwks_refresh),
        ("auth.jwks_min_refetch", auth.jwks_min_refetch),
    ] {
        if value < std::time::Duration::from_secs(1) {
            return Err(invalid(field, "must be at least 1s"));
        }
    }
    if auth.jwks_timeout.is_zero() || auth.jwks_timeout > std::time::Duration::from_secs(30) {
        return Err(invalid(
            "auth.jwks_timeout",
            "must be greater than zero and at most 30s (connecting clients wait for a fetch)",
        ));
    }
    for tenant in auth.tenants.values() {
        if tenant.has_own_keys() {
            check_key("auth.tenants", &tenant.key(), false)?;
            check_named_keys("auth.tenants.keys", &tenant.keys)?;
            if let Some(url) = &tenant.jwks_url {
                check_jwks_url("auth.tenants.jwks_url", url)?;
            }
        } else if tenant.algorithm.is_some() {
            return Err(invalid(
                "auth.tenants",
                "`algorithm` is set but no `secret` or `public_key_file`",
            ));
        } else if tenant.audience.is_none() && tenant.issuer.is_none() {
            return Err(invalid(
                "auth.tenants",
                "a tenant entry needs its own key (`secret`, `public_key_file`, `keys` or \
                 `jwks_url`), or an `audience` / `issuer` to expect with the default keys",
            ));
        } else if !auth.has_default_keys() {
            return Err(invalid(
                "auth.tenants",
                "a tenant entry without its own key uses the default keys, but none is configured",
            ));
        }
        check_expected("auth.tenants.audience", tenant.audience.as_deref())?;
        check_expected("auth.tenants.issuer", tenant.issuer.as_deref())?;
    }
    Ok(())
}

fn check_named_keys(field: &'static str, keys: &[NamedKeyConfig]) -> Result<(), ConfigError> {
    let mut kids = std::collections::HashSet::new();
    for key in keys {
        if key.kid.is_empty() {
            return Err(invalid(field, "`kid` must not be empty"));
        }
        if !kids.insert(key.kid.as_str()) {
            return Err(invalid(field, format!("kid {:?} is listed twice", key.kid)));
        }
        check_key(field, &key.key(), true)?;
    }
    Ok(())
}

fn check_expected(field: &'static str, value: Option<&str>) -> Result<(), ConfigError> {
    if value.is_some_and(str::is_empty) {
        return Err(invalid(
            field,
            "must not be empty (leave it unset to check nothing)",
        ));
    }
    Ok(())
}

/// A JWKS is fetched over `https://`; plain `http://` only from a loopback
/// address (a sidecar on the same host, tests), where nobody on the
/// network can substitute keys.
fn check_jwks_url(field: &'static str, url: &str) -> Result<(), ConfigError> {
    if let Some(rest) = url.strip_prefix("https://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(invalid(field, format!("{url:?} has no host")));
        }
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(invalid(field, format!("{url:?} is not an https:// URL")));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback || authority.contains('@') {
        return Err(invalid(
            field,
            format!(
                "{url:?}: plain http:// is allowed only for a loopback host \
                 (127.0.0.1, [::1], localhost); use https://"
            ),
        ));
    }
    Ok(())
}

fn check_key(field: &'static str, key: &KeyConfig, must_be_set: bool) -> Result<(), ConfigError> {
    if !key.is_set() {
        if must_be_set {
            return Err(invalid(field, "a key needs `secret` or `public_key_file`"));
        }
        if key.algorithm.is_some() {
            return Err(invalid(
                field,
                "`algorithm` is set but no `secret` or `public_key_file`",
            ));
        }
        return Ok(());
    }
    let alg = key.algorithm.unwrap_or(if key.secret.is_some() {
        JwtAlgorithm::HS256
    } else {
        JwtAlgorithm::RS256
    });
    match (alg, &key.secret, &key.public_key_file) {
        (JwtAlgorithm::HS256, Some(secret), None) => {
            if secret.len() < 16 {
                return Err(invalid(
                    field,
                    "an HS256 secret must be at least 16 characters",
                ));
            }
        }
        (JwtAlgorithm::HS256, _, _) => {
            return Err(invalid(
                field,
                "HS256 takes `secret` (and no `public_key_file`)",
            ));
        }
        (_, None, Some(path)) => {
            if !path.is_file() {
                return Err(invalid(
                    field,
                    format!("public_key_file {} is not a readable file", path.display()),
                ));
            }
        }
        (_, _, _) => {
            return Err(invalid(
                field,
                format!("{alg:?} takes `public_key_file` (and no `secret`)"),
            ));
        }
    }
    Ok(())
}

fn validate_redis(r: &RedisConfig) -> Result<(), ConfigError> {
    if r.url.starts_with("rediss://") || r.url.starts_with("rediss-cluster://") {
        // fred, built without a TLS feature, would only log a warning and
        // connect in plain text.
        return Err(invalid(
            "redis.url",
            "TLS to Redis (rediss://) is not built in; reach Redis over a private network or a TLS tunnel and use redis:// or redis-cluster://",
        ));
    }
    if !(r.url.starts_with("redis://") || r.url.starts_with("redis-cluster://")) {
        return Err(invalid(
            "redis.url",
            "must be a redis://host:port URL (one Redis) or redis-cluster://host:port[?node=host:port&node=…] (a Redis Cluster, by one or more seed nodes)",
        ));
    }
    if r.prefix.is_empty() || !r.prefix.bytes().all(fanout_protocol::names::is_name_byte) {
        return Err(invalid(
            "redis.prefix",
            "must be non-empty and use only letters, digits and _ . : @ -",
        ));
    }
    for (field, d) in [
        ("redis.heartbeat", r.heartbeat),
        ("redis.command_timeout", r.command_timeout),
        ("redis.probe_interval", r.probe_interval),
        ("redis.cluster_refresh", r.cluster_refresh),
        ("redis.audit_interval", r.audit_interval),
        ("redis.channel_linger", r.channel_linger),
    ] {
        if d.is_zero() {
            return Err(invalid(field, "must be greater than zero"));
        }
    }
    if r.url.starts_with("redis-cluster://") && r.command_timeout >= r.heartbeat * 2 {
        // One primary dying with a registry command in flight holds the
        // registry actor for the command timeout; the next heartbeat must
        // still land within the entry TTL (3 beats), or every node turns
        // unready and is taken for dead by the others.
        return Err(invalid(
            "redis.command_timeout",
            "must be below twice redis.heartbeat on a Redis Cluster (a dying primary may hold a registry command that long, and heartbeats must keep landing within 3 beats)",
        ));
    }
    if r.direct_max_nodes == 0 {
        return Err(invalid("redis.direct_max_nodes", "must be at least 1"));
    }
    if r.pubsub_buffer < 1024 {
        return Err(invalid("redis.pubsub_buffer", "must be at least 1024"));
    }
    if r.pubsub_buffer_bytes < 1024 * 1024 {
        return Err(invalid(
            "redis.pubsub_buffer_bytes",
            "must be at least 1 MiB (it must hold the largest message with room to spare)",
        ));
    }
    Ok(())
}

fn validate_history(rule: &HistoryRule) -> Result<(), ConfigError> {
    if rule.tenant != "*" {
        fanout_protocol::names::validate_name("tenant", &rule.tenant)
            .map_err(|e| invalid("history.tenant", format!("{e} (or \"*\" for every tenant)")))?;
    }
    fanout_protocol::RoomPattern::parse(&rule.rooms)
        .map_err(|e| invalid("history.rooms", e.to_string()))?;
    if rule.size == 0 || rule.size > MAX_HISTORY_SIZE {
        return Err(invalid(
            "history.size",
            format!(
                "must be 1 to {MAX_HISTORY_SIZE} messages, got {}",
                rule.size
            ),
        ));
    }
    if rule.ttl < std::time::Duration::from_secs(1) || rule.ttl > MAX_HISTORY_TTL {
        return Err(invalid(
            "history.ttl",
            format!(
                "must be 1s to {}, got {}",
                humantime_serde::re::humantime::format_duration(MAX_HISTORY_TTL),
                humantime_serde::re::humantime::format_duration(rule.ttl)
            ),
        ));
    }
    Ok(())
}

fn validate_http(
    http: &super::sections::HttpConfig,
    metrics: &super::sections::MetricsConfig,
) -> Result<(), ConfigError> {
    if http.header_read_timeout.is_zero() {
        return Err(invalid(
            "http.header_read_timeout",
            "must be greater than zero",
        ));
    }
    if http.keepalive_timeout < std::time::Duration::from_secs(1) {
        return Err(invalid(
            "http.keepalive_timeout",
            "must be at least 1s (a response is being written while it runs)",
        ));
    }
    if http.max_connections == 0 {
        return Err(invalid("http.max_connections", "must be at least 1"));
    }
    if metrics.top_tenants > super::sections::MAX_TOP_TENANTS {
        return Err(invalid(
            "metrics.top_tenants",
            format!(
                "must be at most {}: every series is scraped and stored",
                super::sections::MAX_TOP_TENANTS
            ),
        ));
    }
    Ok(())
}
