//! Keys from a JWKS document (RFC 7517), fetched, cached and refreshed.
//!
//! One task per JWKS URL does every fetch: at start, every `jwks_refresh`
//! (every `jwks_min_refetch` while fetches fail), and when a verification
//! asks because a token names a `kid` the cached set does not have. Those
//! requests are rate-limited: at most one fetch per `jwks_min_refetch`
//! (counting failed fetches); a token that arrives while a fetch is under
//! way waits for it, one that arrives during the rate limit is refused at
//! once. The wait is bounded by `jwks_timeout`, which also bounds the fetch
//! (connect, response, body), so a connecting client never waits longer for
//! the network. Because the task fetches, a client that disconnects while
//! waiting cannot cancel a fetch others wait for.
//!
//! Failures never let a token in: a failed fetch keeps the keys of the last
//! good one (tokens signed with them still verify), and a `kid` that is in
//! none of them is refused. Only public keys are taken from a JWKS: RSA
//! (RS256) and EC P-256 (ES256) keys for signatures; symmetric (`oct`) keys,
//! encryption keys and other algorithms are skipped, so a published
//! document can never hold a key that signs. Responses larger than
//! [`MAX_JWKS_BYTES`] are refused, and at most [`MAX_JWKS_KEYS`] keys are kept.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::error::KeyError;
use super::key::VerifyKey;

/// Largest JWKS response read; a larger one is a failed fetch.
pub(super) const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Most keys kept from one JWKS; further ones are skipped.
pub(super) const MAX_JWKS_KEYS: usize = 64;

/// The three durations of `[auth]` that govern fetching.
#[derive(Debug, Clone, Copy)]
pub(super) struct JwksTiming {
    /// Periodic refresh.
    pub(super) refresh: Duration,
    /// At most one fetch per this on request (and the retry interval after a failure).
    pub(super) min_refetch: Duration,
    /// Bound of one fetch, and of a verification's wait for one.
    pub(super) timeout: Duration,
}

/// A JWKS: its cached keys and the task that fetches them. The task stops
/// when this is dropped.
pub(super) struct Jwks {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}

struct Shared {
    url: String,
    timing: JwksTiming,
    keys: Mutex<Arc<Snapshot>>,
    state: Mutex<FetchState>,
    /// Asks the task for a fetch (after `state.in_flight` was set).
    wake: Notify,
    /// Bumped after every fetch, good or failed.
    fetched: watch::Sender<u64>,
}

/// The keys of the last good fetch.
#[derive(Default)]
struct Snapshot {
    /// Whether any fetch succeeded yet.
    loaded: bool,
    keys: Vec<JwkKey>,
}

struct JwkKey {
    kid: Option<String>,
    key: Arc<VerifyKey>,
}

#[derive(Default)]
struct FetchState {
    in_flight: bool,
    last_attempt: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Jwks {
    /// Checks the URL, builds the HTTP client and starts the fetch task
    /// (which fetches at once). Needs a Tokio runtime.
    pub(super) fn start(url: &str, timing: JwksTiming) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError::Jwks {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let plain_loopback = match parsed.scheme() {
            "https" if !host.is_empty() => false,
            "http" if loopback => true,
            _ => {
                return Err(fail(
                    "an https:// URL is required (http:// only on a loopback host)".into(),
                ));
            }
        };
        let mut client = reqwest::Client::builder()
            .timeout(timing.timeout)
            .connect_timeout(timing.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fanout/", env!("CARGO_PKG_VERSION")))
            .https_only(!plain_loopback);
        if plain_loopback {
            client = client.no_proxy();
        }
        let client = client.build().map_err(|e| fail(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| fail("fetching a JWKS needs a Tokio runtime".into()))?;
        let (fetched, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            timing,
            keys: Mutex::new(Arc::new(Snapshot::default())),
            state: Mutex::new(FetchState::default()),
            wake: Notify::new(),
            fetched,
        });
        let stop = CancellationToken::new();
        runtime.spawn(refresher(shared.clone(), client, parsed, stop.clone()));
        Ok(Self {
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// Whether a fetch succeeded yet.
    pub(super) fn loaded(&self) -> bool {
        self.snapshot().loaded
    }

    /// Every key of the last good fetch.
    pub(super) fn all(&self) -> Vec<Arc<VerifyKey>> {
        self.snapshot().keys.iter().map(|k| k.key.clone()).collect()
    }

    /// The keys with id `kid` in the last good fetch.
    pub(super) fn find(&self, kid: &str) -> Vec<Arc<VerifyKey>> {
        self.snapshot()
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .map(|k| k.key.clone())
            .collect()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.shared.keys).clone()
    }

    /// Asks for a fetch unless one is under way or the last one started
    /// less than `jwks_min_refetch` ago. Returns what to wait on when a
    /// fetch is under way or was just asked for; never waits itself.
    pub(super) fn request(&self) -> Option<watch::Receiver<u64>> {
        let fetched = self.shared.fetched.subscribe();
        let mut state = lock(&self.shared.state);
        if state.in_flight {
            return Some(fetched);
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.shared.timing.min_refetch)
        {
            return None;
        }
        state.in_flight = true;
        state.last_attempt = Some(Instant::now());
        self.shared.wake.notify_one();
        Some(fetched)
    }

    /// [`Jwks::request`], then waits for that fetch, at most about `jwks_timeout`.
    pub(super) async fn refetch(&self) {
        if let Some(mut fetched) = self.request() {
            // The fetch is bounded by the timeout; the margin covers the
            // task's own scheduling.
            let bound = self.shared.timing.timeout + Duration::from_millis(250);
            let _ = tokio::time::timeout(bound, fetched.changed()).await;
        }
    }
}

/// The fetch task: at start, periodically, and when asked.
async fn refresher(
    shared: Arc<Shared>,
    client: reqwest::Client,
    url: reqwest::Url,
    stop: CancellationToken,
) {
    let timing = shared.timing;
    let mut next = Instant::now();
    loop {
        let asked = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => false,
            () = shared.wake.notified() => true,
        };
        {
            let mut state = lock(&shared.state);
            if asked && !state.in_flight {
                // A wake-up left over from a request a periodic fetch served.
                continue;
            }
            state.in_flight = true;
            state.last_attempt = Some(Instant::now());
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = tokio::time::timeout(timing.timeout, fetch(&client, &url)) => {
                outcome.unwrap_or_else(|_| Err(format!("no complete answer within {:?}", timing.timeout)))
            }
        };
        let good = match outcome {
            Ok(keys) => {
                debug!(url = %shared.url, keys = keys.len(), "JWKS fetched");
                *lock(&shared.keys) = Arc::new(Snapshot { loaded: true, keys });
                true
            }
            Err(reason) => {
                warn!(url = %shared.url, %reason, "JWKS fetch failed; the keys of the last good fetch stay in use");
                false
            }
        };
        lock(&shared.state).in_flight = false;
        shared.fetched.send_modify(|n| *n = n.wrapping_add(1));
        next = Instant::now()
            + if good {
                timing.refresh
            } else {
                timing.min_refetch
            };
    }
}

/// One GET of the document, its size bounded, parsed.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<JwkKey>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP status {}", response.status()));
    }
    let too_big = || format!("the response is larger than {MAX_JWKS_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body)
}

/// The usable keys of a JWKS document; an unusable key is skipped, a
/// document that is not a JWKS is an error.
fn parse(body: &[u8]) -> Result<Vec<JwkKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let listed = doc.keys.len();
    let keys: Vec<JwkKey> = doc
        .keys
        .into_iter()
        .filter_map(usable)
        .take(MAX_JWKS_KEYS)
        .collect();
    if keys.len() < listed {
        debug!(
            listed,
            kept = keys.len(),
            "JWKS keys skipped (not RS256/ES256 signature keys, or beyond {MAX_JWKS_KEYS})"
        );
    }
    Ok(keys)
}

/// A JWK as a verification key, if it is a public RS256 or ES256 signature key.
fn usable(value: serde_json::Value) -> Option<JwkKey> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(JwkKey {
        kid: jwk.common.key_id,
        key: Arc::new(VerifyKey { key, algorithm }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_signature_keys_of_the_accepted_algorithms_are_kept() {
        let fixture = |name: &str| {
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures")
                    .join(name),
            )
            .unwrap()
        };
        let jwk = |key: jsonwebtoken::EncodingKey, alg, kid: &str| {
            let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
            jwk["kid"] = kid.into();
            jwk.as_object_mut().unwrap().remove("alg");
            jwk
        };
        let rsa = jwk(
            jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("test-only-rsa-private.pem")).unwrap(),
            Algorithm::RS256,
            "r",
        );
        let ec = jwk(
            jsonwebtoken::EncodingKey::from_ec_pem(&fixture("test-only-ec-p256-private.pem"))
                .unwrap(),
            Algorithm::ES256,
            "e",
        );
        let mut enc = rsa.clone();
        enc["use"] = "enc".into();
        enc["kid"] = "enc".into();
        let mut p384 = ec.clone();
        p384["crv"] = "P-384".into();
        let mut rs512 = rsa.clone();
        rs512["alg"] = "RS512".into();
        let oct = serde_json::json!({"kty":"oct","kid":"o","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"});
        let okp = serde_json::json!({"kty":"OKP","kid":"k","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let weird = serde_json::json!({"kty":"XYZ","kid":"w"});
        let doc = serde_json::json!({"keys":[rsa, ec, enc, p384, rs512, oct, okp, weird]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        let kept: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.as_deref().unwrap(), k.key.algorithm))
            .collect();
        assert_eq!(kept, [("r", Algorithm::RS256), ("e", Algorithm::ES256)]);
        assert!(parse(b"{\"not\":\"a jwks\"}").is_err());
        assert!(parse(b"<html>").is_err());
        assert!(parse(b"{\"keys\":[]}").unwrap().is_empty());
    }
}
