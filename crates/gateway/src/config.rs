//! Typed configuration: a TOML file, `FANOUT_*` environment overrides,
//! defaults for everything, validated at start.
//!
//! `Config` is plain serde data (no live handles, as in linkerd2-proxy);
//! [`crate::node::Node`] turns it into running state. Loading goes through
//! `figment` because it reports *which key* of *which source* was wrong
//! ("for key `limits.max_frame_bytes` in fanout.toml"), which is the error an
//! operator needs at 3 a.m. Unknown keys are errors, never silently ignored:
//! a typo such as `max_frame_byte` must not fall back to a default.
//!
//! Environment variables map `__` to nesting: `FANOUT_LIMITS__MAX_FRAME_BYTES=1024`
//! sets `limits.max_frame_bytes`. Only variables whose first segment is a
//! known top-level key are read, so that variables Kubernetes injects for a
//! Service named `fanout` (`FANOUT_PORT`, `FANOUT_SERVICE_HOST`) are not
//! mistaken for configuration.

mod error;
mod sections;
mod validate;

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

pub use self::error::ConfigError;
pub use self::sections::EXAMPLE_CONFIG;
pub use self::sections::{
    ApiKeyConfig, AuthConfig, Config, HistoryRule, JwtAlgorithm, KeyConfig, Limits, LogConfig,
    LogFormat, MAX_HISTORY_SIZE, MAX_HISTORY_TTL, NamedKeyConfig, RedisConfig, SessionConfig,
    ShutdownConfig, TenantAuthConfig, TlsConfig,
};
pub use self::sections::{HttpConfig, MAX_TOP_TENANTS, MetricsConfig};
pub use self::validate::{DEV_API_KEY, DEV_SECRET};

/// The top-level keys that environment overrides may set.
const ENV_SECTIONS: &[&str] = &[
    "node_id",
    "listen",
    "metrics_listen",
    "http",
    "metrics",
    "log",
    "auth",
    "api_keys",
    "limits",
    "session",
    "shutdown",
    "redis",
    "tls",
    "history",
];

impl Config {
    /// Loads defaults, then `path` (if given), then `FANOUT_*` variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, Env::prefixed("FANOUT_"))
    }

    /// Loads from a TOML string only (no environment); used by tests and `genconfig` checks.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn load_with_env(path: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    field: "--config",
                    reason: format!("file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = env
            .filter(|key| {
                let first = key.as_str().split("__").next().unwrap_or_default();
                ENV_SECTIONS.iter().any(|s| first.eq_ignore_ascii_case(s))
            })
            .split("__");
        let config: Config = figment.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_config_is_valid_and_listens_on_loopback() {
        let config = Config::from_toml_str("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(config.is_dev_mode());
        assert_eq!(config.limits.max_frame_bytes, 65_536);
    }

    #[test]
    fn redis_urls_name_one_redis_or_a_cluster_and_never_tls_we_cannot_do() {
        let redis = |body: &str| Config::from_toml_str(&format!("[redis]\n{body}"));
        assert!(redis("url = \"redis://127.0.0.1:6379\"").is_ok());
        assert!(redis("url = \"redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002\"").is_ok());
        for url in ["rediss://h:6379", "rediss-cluster://h:7001"] {
            let err = redis(&format!("url = \"{url}\"")).unwrap_err().to_string();
            assert!(err.contains("redis.url") && err.contains("TLS"), "{err}");
        }
        let err = redis("url = \"http://h\"").unwrap_err().to_string();
        assert!(err.contains("redis-cluster://"), "{err}");
        // On a cluster a dying primary may hold a registry command for the
        // command timeout; heartbeats must still land within 3 beats.
        let err = redis(
            "url = \"redis-cluster://h:7001\"\nheartbeat = \"500ms\"\ncommand_timeout = \"1s\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis.command_timeout"), "{err}");
        assert!(
            redis("url = \"redis://h:6379\"\nheartbeat = \"500ms\"\ncommand_timeout = \"1s\"")
                .is_ok()
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = Config::from_toml_str("[limits]\nmax_frame_bytes = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_frame_bytes"), "{err}");
    }

    #[test]
    fn history_rules_are_read_in_order_and_checked() {
        let ok = Config::from_toml_str(
            "[[history]]\ntenant = \"acme\"\nrooms = \"chat:vip:*\"\nsize = 1000\nttl = \"1h\"\n\
             [[history]]\ntenant = \"*\"\nrooms = \"chat:*\"\nsize = 100\nttl = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(ok.history.len(), 2);
        assert_eq!(ok.history[0].rooms, "chat:vip:*");
        assert_eq!(ok.history[1].ttl, std::time::Duration::from_secs(300));
        let rule = |body: &str| format!("[[history]]\n{body}\n");
        for (body, field) in [
            (
                "tenant = \"a b\"\nrooms = \"*\"\nsize = 1\nttl = \"1s\"",
                "history.tenant",
            ),
            (
                "tenant = \"*\"\nrooms = \"\"\nsize = 1\nttl = \"1s\"",
                "history.rooms",
            ),
            (
                "tenant = \"*\"\nrooms = \"*\"\nsize = 0\nttl = \"1s\"",
                "history.size",
            ),
            (
                "tenant = \"*\"\nrooms = \"*\"\nsize = 10001\nttl = \"1s\"",
                "history.size",
            ),
            (
                "tenant = \"*\"\nrooms = \"*\"\nsize = 1\nttl = \"8d\"",
                "history.ttl",
            ),
            (
                "tenant = \"*\"\nrooms = \"*\"\nsize = 1\nttl = \"100ms\"",
                "history.ttl",
            ),
        ] {
            let err = Config::from_toml_str(&rule(body)).unwrap_err().to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
        let err = Config::from_toml_str("[[history]]\ntenant = \"*\"\nrooms = \"*\"\nsize = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl"), "a missing key is named: {err}");
        let err = Config::from_toml_str("[limits]\nhistory_memory_bytes = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.history_memory_bytes"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::from_toml_str("[limits]\nmax_frame_byte = 10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_frame_byte"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err =
            Config::from_toml_str("[session]\nping_interval = \"90s\"\nidle_timeout = \"60s\"")
                .unwrap_err()
                .to_string();
        assert!(err.contains("session.ping_interval"), "{err}");
        let err = Config::from_toml_str("[limits]\nmax_frame_bytes = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.max_frame_bytes"), "{err}");
    }

    #[test]
    // `figment::Jail` fixes the closure's error type (`figment::Error`, large).
    #[allow(clippy::result_large_err)]
    fn environment_overrides_the_file_and_ignores_foreign_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("f.toml", "[limits]\nmax_frame_bytes = 2048\n")?;
            jail.set_env("FANOUT_LIMITS__MAX_ROOMS_PER_CONNECTION", "7");
            jail.set_env("FANOUT_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("FANOUT_SERVICE_HOST", "10.0.0.1");
            let config = Config::load(Some(Path::new("f.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.limits.max_frame_bytes, 2048);
            assert_eq!(config.limits.max_rooms_per_connection, 7);
            Ok(())
        });
    }

    #[test]
    fn a_grace_too_short_for_the_drain_is_refused() {
        let err = Config::from_toml_str(
            "[shutdown]\ngrace = \"10s\"\nreadiness_delay = \"5s\"\ndrain_window = \"5s\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shutdown.grace"), "{err}");
        let ok = Config::from_toml_str(
            "[shutdown]\ngrace = \"11s\"\nreadiness_delay = \"5s\"\ndrain_window = \"5s\"",
        )
        .unwrap();
        assert_eq!(ok.shutdown.drain_window, std::time::Duration::from_secs(5));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/fanout.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn genconfig_output_parses_and_validates() {
        let text = crate::config::sections::EXAMPLE_CONFIG;
        Config::from_toml_str(text).unwrap();
    }
}
