//! JWT verification (HS256, RS256, ES256) with per-tenant keys.
//!
//! Choosing the key needs the `tenant` claim before the signature is checked.
//! We read it from the unverified payload *only to pick a key*; the token is
//! then fully verified with that key and that key's single algorithm, so a
//! forged `tenant` can only select a key the forger cannot sign for. A
//! tenant with its own key is verified with that key only, never the default.
//!
//! `alg: none` is refused by `jsonwebtoken` itself (it has no such variant),
//! and a token signed with another algorithm than the key's is refused
//! because each key's `Validation` lists exactly one algorithm.

use std::collections::HashMap;
use std::fs;

use fanout_protocol::{Name, RoomPattern};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::grant::Grant;
use crate::config::{AuthConfig, DEV_SECRET, JwtAlgorithm, KeyConfig};

/// Why a token was refused. Sent as the reason of close 4001 (short, no secrets).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, badly signed, of the wrong algorithm or expired.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A claim is missing or has a value outside the contract.
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
}

impl AuthError {
    /// A short label for the auth-failure metric.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Invalid(m) if m.contains("xpired") => "expired",
            AuthError::Invalid(_) => "invalid",
            AuthError::Claim { .. } => "claim",
            AuthError::NoKey(_) => "no_key",
        }
    }
}

/// A verification key with the one algorithm it accepts.
struct VerifyKey {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies client tokens into [`Grant`]s.
pub struct TokenVerifier {
    default: Option<VerifyKey>,
    tenants: HashMap<String, VerifyKey>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field(
                "default",
                &self
                    .default
                    .as_ref()
                    .map(|k| k.validation.algorithms.clone()),
            )
            .field("tenants", &self.tenants.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The claims fanout reads. `sub`, `tenant` and `exp` are required.
#[derive(Debug, Deserialize, Serialize)]
struct Claims {
    sub: String,
    tenant: String,
    exp: u64,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<bool>,
}

/// Just the tenant, read unverified to choose the key.
#[derive(Deserialize)]
struct TenantOnly {
    tenant: Option<String>,
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

fn load_key(key: &KeyConfig, leeway: u64) -> Result<VerifyKey, KeyError> {
    let alg = key.algorithm.unwrap_or(if key.secret.is_some() {
        JwtAlgorithm::HS256
    } else {
        JwtAlgorithm::RS256
    });
    let pem = |k: &KeyConfig| -> Result<Vec<u8>, KeyError> {
        let path = k
            .public_key_file
            .as_ref()
            .ok_or(KeyError::NoPublicKeyFile)?;
        fs::read(path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })
    };
    let bad = |kind| move |source| KeyError::BadKey { kind, source };
    let (decoding, algorithm) = match alg {
        JwtAlgorithm::HS256 => {
            let secret = key.secret.as_deref().ok_or(KeyError::NoSecret)?;
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        }
        JwtAlgorithm::RS256 => (
            DecodingKey::from_rsa_pem(&pem(key)?).map_err(bad("RSA"))?,
            Algorithm::RS256,
        ),
        JwtAlgorithm::ES256 => (
            DecodingKey::from_ec_pem(&pem(key)?).map_err(bad("EC"))?,
            Algorithm::ES256,
        ),
    };
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = leeway;
    validation.validate_exp = true;
    Ok(VerifyKey {
        key: decoding,
        validation,
    })
}

impl TokenVerifier {
    /// Builds the verifier from config; in development mode the default key
    /// is the dev secret. Errors name the config field.
    pub fn new(auth: &AuthConfig, dev_mode: bool) -> Result<Self, VerifierError> {
        let leeway = auth.leeway.as_secs();
        let default_key = if dev_mode {
            KeyConfig {
                algorithm: Some(JwtAlgorithm::HS256),
                secret: Some(DEV_SECRET.into()),
                public_key_file: None,
            }
        } else {
            auth.default_key()
        };
        let default = if default_key.is_set() {
            Some(
                load_key(&default_key, leeway).map_err(|source| VerifierError {
                    field: "auth".into(),
                    source,
                })?,
            )
        } else {
            None
        };
        let mut tenants = HashMap::new();
        for (tenant, key) in &auth.tenants {
            let loaded = load_key(key, leeway).map_err(|source| VerifierError {
                field: format!("auth.tenants.{tenant}"),
                source,
            })?;
            tenants.insert(tenant.clone(), loaded);
        }
        Ok(Self { default, tenants })
    }

    /// Verifies `token` and returns what it allows.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let tenant_hint = jsonwebtoken::dangerous::insecure_decode_claims::<TenantOnly>(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .tenant
            .ok_or_else(|| AuthError::Claim {
                claim: "tenant",
                reason: "missing".into(),
            })?;
        let key = match self.tenants.get(&tenant_hint) {
            Some(k) => k,
            None => self
                .default
                .as_ref()
                .ok_or_else(|| AuthError::NoKey(tenant_hint.clone()))?,
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => AuthError::Claim {
                    claim: if c == "sub" { "sub" } else { "exp" },
                    reason: "missing".into(),
                },
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        grant_from(data.claims)
    }
}

fn grant_from(claims: Claims) -> Result<Grant, AuthError> {
    let claim = |claim: &'static str| {
        move |e: fanout_protocol::NameError| AuthError::Claim {
            claim,
            reason: e.to_string(),
        }
    };
    let patterns =
        |claim: &'static str, list: Vec<String>| -> Result<Vec<RoomPattern>, AuthError> {
            list.iter()
                .map(|p| {
                    RoomPattern::parse(p).map_err(|e| AuthError::Claim {
                        claim,
                        reason: e.to_string(),
                    })
                })
                .collect()
        };
    Ok(Grant {
        tenant: Name::new("tenant", &claims.tenant).map_err(claim("tenant"))?,
        user: Name::new("user", &claims.sub).map_err(claim("sub"))?,
        expires_at: claims.exp,
        rooms: patterns("rooms", claims.rooms)?,
        publish: patterns("publish", claims.publish)?,
        presence: claims.presence.unwrap_or(true),
    })
}

/// What `fanout token` puts into a development token.
#[derive(Debug, Clone)]
pub struct DevTokenRequest {
    /// `sub`.
    pub sub: String,
    /// `tenant`.
    pub tenant: String,
    /// `rooms` patterns.
    pub rooms: Vec<String>,
    /// `publish` patterns.
    pub publish: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: u64,
}

/// Signs an HS256 token; used by `fanout token` and by tests.
pub fn mint_hs256(
    secret: &str,
    req: &DevTokenRequest,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        sub: req.sub.clone(),
        tenant: req.tenant.clone(),
        exp: req.exp,
        rooms: req.rooms.clone(),
        publish: req.publish.clone(),
        presence: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}
