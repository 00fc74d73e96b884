//! JWT verification (HS256, RS256, ES256): default and per-tenant key sets,
//! keys chosen by `kid` (configured or from a JWKS), `exp` and `nbf` with
//! `leeway`, expected `aud` and `iss`.
//!
//! Choosing the key set needs the `tenant` claim before the signature is
//! checked. We read it from the unverified payload *only to pick a key
//! set*; the token is then fully verified with a key of that set and that
//! key's single algorithm, so a forged `tenant` can only select keys the
//! forger cannot sign for. A tenant with keys of its own is verified with
//! those only, never the default ones. Which key of a set is used is the
//! `kid` rule of [`super::keyring`].
//!
//! `alg: none` is refused by `jsonwebtoken` itself (it has no such variant),
//! and a token signed with another algorithm than a key's is never checked
//! against that key.

use std::collections::HashMap;
use std::sync::Arc;

use fanout_protocol::{Name, RoomPattern};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::{AuthError, KeyError, VerifierError};
use super::grant::{Grant, PermissionCache, Permissions};
use super::jwks::{Jwks, JwksTiming};
use super::key::{VerifyKey, load_key};
use super::keyring::KeyRing;
use crate::config::{AuthConfig, DEV_SECRET, JwtAlgorithm, KeyConfig, NamedKeyConfig};

/// A key set and what tokens verified with it must say.
#[derive(Debug)]
struct Policy {
    keys: Arc<KeyRing>,
    /// Everything but the algorithm, which is the key's.
    validation: Validation,
}

/// Verifies client tokens into [`Grant`]s.
#[derive(Debug)]
pub struct TokenVerifier {
    default: Option<Policy>,
    tenants: HashMap<String, Policy>,
    /// Parsed permissions shared by the grants of identical claims.
    permissions: PermissionCache,
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

/// Just the tenant, read unverified to choose the key set.
#[derive(Deserialize)]
struct TenantOnly {
    tenant: Option<String>,
}

/// The checks every token gets: `exp` and `sub` present, `exp` and `nbf`
/// with `leeway`, and `aud` / `iss` when expected (then also required).
fn validation(leeway: u64, audience: Option<&str>, issuer: Option<&str>) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    let mut required = vec!["exp", "sub"];
    if let Some(aud) = audience {
        v.set_audience(&[aud]);
        required.push("aud");
    }
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v
}

/// Builds key sets, one JWKS fetcher per distinct URL.
struct RingBuilder {
    timing: JwksTiming,
    jwks: HashMap<String, Arc<Jwks>>,
}

impl RingBuilder {
    fn build(
        &mut self,
        field: &str,
        unnamed: &KeyConfig,
        named: &[NamedKeyConfig],
        jwks_url: Option<&str>,
    ) -> Result<KeyRing, VerifierError> {
        let err = |field: String| move |source| VerifierError { field, source };
        let unnamed = if unnamed.is_set() {
            Some(Arc::new(load_key(unnamed).map_err(err(field.into()))?))
        } else {
            None
        };
        let named = named
            .iter()
            .map(|k| {
                let key =
                    load_key(&k.key()).map_err(err(format!("{field}.keys (kid {:?})", k.kid)))?;
                Ok((k.kid.clone(), Arc::new(key)))
            })
            .collect::<Result<Vec<_>, VerifierError>>()?;
        let jwks = match jwks_url {
            Some(url) => Some(match self.jwks.get(url) {
                Some(jwks) => jwks.clone(),
                None => {
                    let jwks = Arc::new(
                        Jwks::start(url, self.timing).map_err(err(format!("{field}.jwks_url")))?,
                    );
                    self.jwks.insert(url.to_owned(), jwks.clone());
                    jwks
                }
            }),
            None => None,
        };
        Ok(KeyRing {
            unnamed,
            named,
            jwks,
        })
    }
}

impl TokenVerifier {
    /// Builds the verifier from config; in development mode the default key
    /// is the dev secret. Errors name the config field. With a `jwks_url`
    /// this must run inside a Tokio runtime: each JWKS gets a fetch task
    /// (stopped when the verifier is dropped).
    pub fn new(auth: &AuthConfig, dev_mode: bool) -> Result<Self, VerifierError> {
        let leeway = auth.leeway.as_secs();
        let mut rings = RingBuilder {
            timing: JwksTiming {
                refresh: auth.jwks_refresh,
                min_refetch: auth.jwks_min_refetch,
                timeout: auth.jwks_timeout,
            },
            jwks: HashMap::new(),
        };
        let default_keys = if dev_mode {
            let dev = KeyConfig {
                algorithm: Some(JwtAlgorithm::HS256),
                secret: Some(DEV_SECRET.into()),
                public_key_file: None,
            };
            Some(rings.build("auth", &dev, &[], None)?)
        } else if auth.has_default_keys() {
            Some(rings.build(
                "auth",
                &auth.default_key(),
                &auth.keys,
                auth.jwks_url.as_deref(),
            )?)
        } else {
            None
        }
        .map(Arc::new);
        let default = default_keys.as_ref().map(|keys| Policy {
            keys: keys.clone(),
            validation: validation(leeway, auth.audience.as_deref(), auth.issuer.as_deref()),
        });
        let mut tenants = HashMap::new();
        for (tenant, t) in &auth.tenants {
            let field = format!("auth.tenants.{tenant}");
            let keys = if t.has_own_keys() {
                Arc::new(rings.build(&field, &t.key(), &t.keys, t.jwks_url.as_deref())?)
            } else {
                default_keys.clone().ok_or(VerifierError {
                    field,
                    source: KeyError::NoDefaultKey,
                })?
            };
            let audience = t.audience.as_deref().or(auth.audience.as_deref());
            let issuer = t.issuer.as_deref().or(auth.issuer.as_deref());
            tenants.insert(
                tenant.clone(),
                Policy {
                    keys,
                    validation: validation(leeway, audience, issuer),
                },
            );
        }
        Ok(Self {
            default,
            tenants,
            permissions: PermissionCache::default(),
        })
    }

    /// Verifies `token` and returns what it allows, with the keys at hand:
    /// the configured ones and those of the last JWKS fetch. Never waits: a
    /// `kid` the JWKS lacks is refused, and a refetch is asked for
    /// (rate-limited) so that a retry can succeed. `refresh` on a live
    /// connection uses this, so that a session's loop never waits for the
    /// network; the handshake uses [`TokenVerifier::verify_async`].
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let (policy, header) = self.policy(token)?;
        let keys = policy.keys.candidates_now(header.kid.as_deref())?;
        check(token, &header, policy, &keys, &self.permissions)
    }

    /// Verifies `token` and returns what it allows. Waits for the network
    /// only when the token's key would come from a JWKS that does not have
    /// it (or was never fetched): the JWKS is fetched again, at most once
    /// per `auth.jwks_min_refetch`, and this waits at most about
    /// `auth.jwks_timeout`.
    pub async fn verify_async(&self, token: &str) -> Result<Grant, AuthError> {
        let (policy, header) = self.policy(token)?;
        let keys = policy.keys.candidates(header.kid.as_deref()).await?;
        check(token, &header, policy, &keys, &self.permissions)
    }

    /// The key set and expectations for the token's (unverified) tenant, and its header.
    fn policy(&self, token: &str) -> Result<(&Policy, Header), AuthError> {
        let tenant_hint = jsonwebtoken::dangerous::insecure_decode_claims::<TenantOnly>(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .tenant
            .ok_or_else(|| AuthError::Claim {
                claim: "tenant",
                reason: "missing".into(),
            })?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let policy = match self.tenants.get(&tenant_hint) {
            Some(p) => p,
            None => self
                .default
                .as_ref()
                .ok_or_else(|| AuthError::NoKey(tenant_hint.clone()))?,
        };
        Ok((policy, header))
    }
}

/// Verifies the token with the first of `keys` of its algorithm that
/// verifies its signature, then its claims.
fn check(
    token: &str,
    header: &Header,
    policy: &Policy,
    keys: &[Arc<VerifyKey>],
    permissions: &PermissionCache,
) -> Result<Grant, AuthError> {
    let mut bad_signature = None;
    for key in keys.iter().filter(|k| k.algorithm == header.alg) {
        let mut validation = policy.validation.clone();
        validation.algorithms = vec![key.algorithm];
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => return grant_from(data.claims, permissions),
            // Another key of the set may have signed it.
            Err(e) if *e.kind() == ErrorKind::InvalidSignature => bad_signature = Some(e),
            // The signature is good (or the token is bad whatever the key).
            Err(e) => return Err(refusal(&e, &policy.validation)),
        }
    }
    Err(match bad_signature {
        Some(e) => refusal(&e, &policy.validation),
        None => AuthError::Invalid(format!("{:?} tokens are not accepted", header.alg)),
    })
}

/// The refusal for a `jsonwebtoken` error, naming the claim where there is one.
fn refusal(e: &jsonwebtoken::errors::Error, expected: &Validation) -> AuthError {
    let claim = |claim: &'static str, reason: &str| AuthError::Claim {
        claim,
        reason: reason.into(),
    };
    match e.kind() {
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "sub" => claim("sub", "missing"),
            "aud" => claim("aud", "missing (an audience is expected)"),
            "iss" => claim("iss", "missing (an issuer is expected)"),
            _ => claim("exp", "missing"),
        },
        ErrorKind::ImmatureSignature => claim("nbf", "the token is not valid yet"),
        ErrorKind::InvalidAudience if expected.aud.is_none() => {
            claim("aud", "the token names an audience and none is expected")
        }
        ErrorKind::InvalidAudience => claim("aud", "not the expected audience"),
        ErrorKind::InvalidIssuer => claim("iss", "not the expected issuer"),
        _ => AuthError::Invalid(e.to_string()),
    }
}

fn grant_from(claims: Claims, cache: &PermissionCache) -> Result<Grant, AuthError> {
    let claim = |claim: &'static str| {
        move |e: fanout_protocol::NameError| AuthError::Claim {
            claim,
            reason: e.to_string(),
        }
    };
    let patterns = |claim: &'static str, list: &[String]| -> Result<Vec<RoomPattern>, AuthError> {
        list.iter()
            .map(|p| {
                RoomPattern::parse(p).map_err(|e| AuthError::Claim {
                    claim,
                    reason: e.to_string(),
                })
            })
            .collect()
    };
    // Checked in the claims' order, so that the first bad claim is named.
    let tenant = Name::new("tenant", &claims.tenant).map_err(claim("tenant"))?;
    let user = Name::new("user", &claims.sub).map_err(claim("sub"))?;
    let presence = claims.presence.unwrap_or(true);
    let key = (claims.tenant, claims.rooms, claims.publish, presence);
    let permissions = cache.get_or_parse(key, |c| {
        Ok(Permissions {
            tenant,
            rooms: patterns("rooms", &c.1)?,
            publish: patterns("publish", &c.2)?,
            presence: c.3,
        })
    })?;
    Ok(Grant {
        tenant: permissions.tenant.clone(),
        user,
        expires_at: claims.exp,
        permissions,
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
