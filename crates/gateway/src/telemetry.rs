//! Log setup: text for people, JSON for pipelines; `RUST_LOG` wins over config.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` or `log.level` is not a valid filter (the field, the parser's error).
    #[error("{field}: {source}")]
    Filter {
        /// `RUST_LOG` or `log.level`.
        field: &'static str,
        /// The parser's error.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("cannot install the logger: {0}")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Installs the global `tracing` subscriber. Returns an error if the filter is invalid.
pub fn init(log: &LogConfig) -> Result<(), TelemetryError> {
    let parse = |field, v: &str| {
        EnvFilter::try_new(v).map_err(|source| TelemetryError::Filter { field, source })
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => parse("RUST_LOG", &v)?,
        _ => parse("log.level", &log.level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(TelemetryError::Install)
}
