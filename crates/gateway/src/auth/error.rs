//! Why a token was refused, and why a configured key could not be loaded.

/// Why a token was refused. Sent as the reason of close 4001 (short, no secrets).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, badly signed, of the wrong algorithm or expired.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A claim is missing or has a value outside the contract (or the configuration).
    #[error("invalid claim `{claim}`: {reason}")]
    Claim {
        /// The claim.
        claim: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No key is configured for the token's tenant.
    #[error("no key is configured for tenant {0:?}")]
    NoKey(String),
    /// The token's header names a key (`kid`) that no configured key and no
    /// key of the JWKS has (also when the JWKS could not be fetched).
    #[error("unknown key id (kid) {0:?}")]
    UnknownKid(String),
}

/// Longest `kid` repeated in a refusal (it comes from the client).
const KID_SHOWN: usize = 40;

impl AuthError {
    /// A refusal for `kid`, shortened to what a close reason can carry.
    pub(super) fn unknown_kid(kid: &str) -> Self {
        let mut end = kid.len().min(KID_SHOWN);
        while !kid.is_char_boundary(end) {
            end -= 1;
        }
        AuthError::UnknownKid(kid[..end].to_owned())
    }

    /// A short label for the auth-failure metric.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Invalid(m) if m.contains("xpired") => "expired",
            AuthError::Invalid(_) => "invalid",
            AuthError::Claim { claim: "nbf", .. } => "not_yet_valid",
            AuthError::Claim { claim: "aud", .. } => "audience",
            AuthError::Claim { claim: "iss", .. } => "issuer",
            AuthError::Claim { .. } => "claim",
            AuthError::NoKey(_) => "no_key",
            AuthError::UnknownKid(_) => "unknown_kid",
        }
    }
}

/// Why a configured verification key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// RS256/ES256 without `public_key_file`.
    #[error("public_key_file is not set")]
    NoPublicKeyFile,
    /// HS256 without `secret`.
    #[error("HS256 needs `secret`")]
    NoSecret,
    /// The key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a PEM public key of the key's algorithm.
    #[error("bad {kind} public key: {source}")]
    BadKey {
        /// `RSA` or `EC`.
        kind: &'static str,
        /// The parser's error.
        source: jsonwebtoken::errors::Error,
    },
    /// A tenant entry without keys of its own, and no default keys to use.
    #[error("the tenant has no key of its own and no default key is configured")]
    NoDefaultKey,
    /// The JWKS URL or its HTTP client cannot be used.
    #[error("JWKS {url}: {reason}")]
    Jwks {
        /// `jwks_url`.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A key error with the config field it belongs to (`auth`, `auth.tenants.<t>`).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {source}")]
pub struct VerifierError {
    /// The config field.
    pub field: String,
    /// What is wrong with it.
    pub source: KeyError,
}
