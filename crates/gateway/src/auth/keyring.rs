//! A key set (the default one, or a tenant's) and which of its keys a
//! token may be verified with.
//!
//! The rule, by the token header's `kid`:
//!
//! - **a `kid`** selects the key with that id — configured (`keys`) or from
//!   the JWKS (fetched again, rate-limited, when it is not there) — and
//!   only that key. A `kid` that names no key is refused; the key without a
//!   `kid` is not a fallback for it. Exception, so that single-key setups
//!   work as before: a set with no key that has an id (no `keys`, no
//!   `jwks_url`) verifies every token with its one key, whatever `kid` says.
//! - **no `kid`**: every key of the set is tried, the one without a `kid`
//!   first, then `keys` in order, then the JWKS keys, until one verifies the
//!   signature. So issuers that never set `kid` can rotate too (list the old
//!   and the new key); the cost is bounded by the configured keys and
//!   [`super::jwks::MAX_JWKS_KEYS`].
//!
//! Either way a key is tried only if its one algorithm is the token's `alg`.

use std::sync::Arc;

use super::error::AuthError;
use super::jwks::Jwks;
use super::key::VerifyKey;

/// The keys of one set.
pub(super) struct KeyRing {
    /// The key without a `kid`.
    pub(super) unnamed: Option<Arc<VerifyKey>>,
    /// Keys with a `kid`, in configuration order.
    pub(super) named: Vec<(String, Arc<VerifyKey>)>,
    /// Keys from a JWKS.
    pub(super) jwks: Option<Arc<Jwks>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("unnamed", &self.unnamed.as_ref().map(|k| k.algorithm))
            .field(
                "named",
                &self.named.iter().map(|(kid, _)| kid).collect::<Vec<_>>(),
            )
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl KeyRing {
    /// The keys a token with this `kid` may be verified with, in the order
    /// to try them. When they would come from the JWKS and it does not have
    /// them (or was never fetched), it is fetched again first (rate-limited;
    /// waits at most about `jwks_timeout`).
    pub(super) async fn candidates(
        &self,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerifyKey>>, AuthError> {
        if let Some(jwks) = &self.jwks {
            let missing = match kid {
                Some(kid) => !self.named.iter().any(|(n, _)| n == kid) && jwks.find(kid).is_empty(),
                None => !jwks.loaded(),
            };
            if missing {
                jwks.refetch().await;
            }
        }
        self.candidates_now(kid)
    }

    /// [`KeyRing::candidates`] with the keys at hand: never waits; a `kid`
    /// the JWKS lacks only asks for a fetch (rate-limited) for later tokens.
    pub(super) fn candidates_now(
        &self,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerifyKey>>, AuthError> {
        match kid {
            Some(_) if self.named.is_empty() && self.jwks.is_none() => {
                Ok(self.unnamed.iter().cloned().collect())
            }
            Some(kid) => {
                if let Some((_, key)) = self.named.iter().find(|(name, _)| name == kid) {
                    return Ok(vec![key.clone()]);
                }
                if let Some(jwks) = &self.jwks {
                    let keys = jwks.find(kid);
                    if !keys.is_empty() {
                        return Ok(keys);
                    }
                    jwks.request();
                }
                Err(AuthError::unknown_kid(kid))
            }
            None => {
                let mut keys: Vec<_> = self
                    .unnamed
                    .iter()
                    .cloned()
                    .chain(self.named.iter().map(|(_, key)| key.clone()))
                    .collect();
                if let Some(jwks) = &self.jwks {
                    if !jwks.loaded() {
                        jwks.request();
                    }
                    keys.extend(jwks.all());
                }
                Ok(keys)
            }
        }
    }
}
