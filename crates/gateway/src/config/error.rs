//! The error of loading a configuration: which source or which key, and why.

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or parsed, or a key has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The configuration parsed but a value is not acceptable.
    #[error("invalid configuration: `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the offending key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
