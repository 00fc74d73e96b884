//! Tokens checked fully (issue 13, item 4): `nbf` with `auth.leeway`,
//! expected `aud` and `iss` (global and per tenant), several keys selected
//! by `kid` for rotation, and keys from a JWKS served by a local HTTP server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fanout_gateway::Config;
use fanout_gateway::config::{AuthConfig, JwtAlgorithm, NamedKeyConfig, TenantAuthConfig};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::{
    claims, ec_key, fixture, hs_key, read_fixture, rsa_key, rsa2_key, sign, welcomed,
};
use crate::support::{Client, Event, SECRET, TestServer, WAIT, now_secs};

/// Connects with a header token, expects close 4001 first and returns its reason.
async fn refused_because(server: &TestServer, token: &str, what: &str) -> String {
    let mut c = Client::connect(&server.ws_url(), None, Some(token)).await;
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, reason)))) => reason,
        other => panic!("{what}: expected close 4001, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused_unless_within_the_leeway() {
    let strict = TestServer::spawn().await;
    let mut early = claims("u1", "acme");
    early["nbf"] = (now_secs() + 120).into();
    let early = sign(Algorithm::HS256, &hs_key(SECRET), &early);
    let reason = refused_because(&strict, &early, "nbf in 2 minutes, no leeway").await;
    assert!(reason.contains("nbf"), "{reason}");
    // nbf in the past (or now) is fine.
    let mut past = claims("u1", "acme");
    past["nbf"] = (now_secs() - 5).into();
    welcomed(&strict, &sign(Algorithm::HS256, &hs_key(SECRET), &past)).await;

    // With 60 s of leeway, 30 s early is accepted and 120 s early is not.
    let lenient = TestServer::spawn_with(|c| c.auth.leeway = Duration::from_secs(60)).await;
    let mut soon = claims("u1", "acme");
    soon["nbf"] = (now_secs() + 30).into();
    welcomed(&lenient, &sign(Algorithm::HS256, &hs_key(SECRET), &soon)).await;
    refused_because(&lenient, &early, "nbf in 2 minutes, 60 s leeway").await;

    // `refresh` checks nbf too.
    let (mut c, _) = welcomed(&strict, &crate::auth::default_token("u1", "acme")).await;
    let mut later = claims("u1", "acme");
    later["exp"] = (now_secs() + 7200).into();
    later["nbf"] = (now_secs() + 120).into();
    let reply = c
        .request(
            json!({"type":"refresh","token": sign(Algorithm::HS256, &hs_key(SECRET), &later)}),
            1,
        )
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], 403, "{reply}");
}

/// A token whose header names `kid` (or none).
fn sign_kid(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("sign")
}

#[tokio::test]
async fn expected_audience_and_issuer_are_checked_globally_and_per_tenant() {
    const ISS: &str = "https://idp.test/";
    let server = TestServer::spawn_with(|c| {
        c.auth.audience = Some("fanout".into());
        c.auth.issuer = Some(ISS.into());
        // Own key and own audience; the global issuer still applies.
        c.auth.tenants.insert(
            "globex".into(),
            TenantAuthConfig {
                secret: Some(TENANT_SECRET.into()),
                audience: Some("globex-fanout".into()),
                ..TenantAuthConfig::default()
            },
        );
        // The default keys, with its own issuer; the global audience applies.
        c.auth.tenants.insert(
            "initech".into(),
            TenantAuthConfig {
                issuer: Some("https://initech.test/".into()),
                ..TenantAuthConfig::default()
            },
        );
    })
    .await;
    let token = |tenant: &str, secret: &str, extra: Value| {
        let mut c = claims("u1", tenant);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(Algorithm::HS256, &hs_key(secret), &c)
    };
    // Default policy.
    welcomed(
        &server,
        &token("acme", SECRET, json!({"aud":"fanout","iss":ISS})),
    )
    .await;
    welcomed(
        &server,
        &token("acme", SECRET, json!({"aud":["other","fanout"],"iss":ISS})),
    )
    .await;
    for (what, extra, claim) in [
        ("wrong aud", json!({"aud":"other","iss":ISS}), "aud"),
        ("no aud", json!({"iss":ISS}), "aud"),
        (
            "wrong iss",
            json!({"aud":"fanout","iss":"https://evil.test/"}),
            "iss",
        ),
        ("no iss", json!({"aud":"fanout"}), "iss"),
    ] {
        let reason = refused_because(&server, &token("acme", SECRET, extra), what).await;
        assert!(reason.contains(&format!("`{claim}`")), "{what}: {reason}");
    }
    // A tenant's own audience replaces the global one.
    let globex = |aud: &str| token("globex", TENANT_SECRET, json!({"aud":aud,"iss":ISS}));
    welcomed(&server, &globex("globex-fanout")).await;
    let reason = refused_because(&server, &globex("fanout"), "globex, global aud").await;
    assert!(reason.contains("`aud`"), "{reason}");
    // Its own key only, whatever the claims say.
    let reason = refused_because(
        &server,
        &token("globex", SECRET, json!({"aud":"globex-fanout","iss":ISS})),
        "globex, default key",
    )
    .await;
    assert!(reason.starts_with("invalid token"), "{reason}");
    // A tenant entry with only an issuer: default key, own issuer, global audience.
    let initech = |iss: &str| token("initech", SECRET, json!({"aud":"fanout","iss":iss}));
    welcomed(&server, &initech("https://initech.test/")).await;
    let reason = refused_because(&server, &initech(ISS), "initech, global iss").await;
    assert!(reason.contains("`iss`"), "{reason}");

    // With no audience configured, a token that names one is refused
    // (RFC 7519 §4.1.3: the node does not identify itself with it).
    let plain = TestServer::spawn().await;
    let reason = refused_because(
        &plain,
        &token("acme", SECRET, json!({"aud":"fanout"})),
        "aud, none expected",
    )
    .await;
    assert!(reason.contains("`aud`"), "{reason}");
    welcomed(&plain, &token("acme", SECRET, json!({"iss":"anyone"}))).await;
}

const TENANT_SECRET: &str = "tenant-own-secret-0123456789";
const OLD_SECRET: &str = "old-secret-0123456789abcdef";
const NEW_SECRET: &str = "new-secret-0123456789abcdef";

fn named(kid: &str, secret: &str) -> NamedKeyConfig {
    NamedKeyConfig {
        kid: kid.into(),
        algorithm: Some(JwtAlgorithm::HS256),
        secret: Some(secret.into()),
        public_key_file: None,
    }
}

fn named_rsa(kid: &str) -> NamedKeyConfig {
    NamedKeyConfig {
        kid: kid.into(),
        algorithm: Some(JwtAlgorithm::RS256),
        secret: None,
        public_key_file: Some(fixture("test-only-rsa-public.pem")),
    }
}

#[tokio::test]
async fn keys_are_chosen_by_kid_so_that_they_rotate_without_downtime() {
    let c = claims("u1", "acme");
    let old = sign_kid(Algorithm::HS256, &hs_key(OLD_SECRET), Some("2024"), &c);
    let new_hs = sign_kid(Algorithm::HS256, &hs_key(NEW_SECRET), Some("2025"), &c);
    let new_rs = sign_kid(Algorithm::RS256, &rsa_key(), Some("2025-rsa"), &c);

    // During the rotation both keys are listed (and the key without a kid stays).
    let both = TestServer::spawn_with(|c| {
        c.auth.keys = vec![
            named("2024", OLD_SECRET),
            named("2025", NEW_SECRET),
            named_rsa("2025-rsa"),
        ];
        c.auth.tenants.insert(
            "globex".into(),
            TenantAuthConfig {
                keys: vec![named("g1", TENANT_SECRET)],
                ..TenantAuthConfig::default()
            },
        );
    })
    .await;
    welcomed(&both, &old).await;
    welcomed(&both, &new_hs).await;
    welcomed(&both, &new_rs).await;
    // A kid selects that key only: another listed key's signature is refused.
    let swapped = sign_kid(Algorithm::HS256, &hs_key(NEW_SECRET), Some("2024"), &c);
    let reason = refused_because(&both, &swapped, "kid 2024, signed with 2025").await;
    assert!(reason.starts_with("invalid token"), "{reason}");
    // A key verifies only its own algorithm.
    let hs_on_rsa = sign_kid(Algorithm::HS256, &hs_key(NEW_SECRET), Some("2025-rsa"), &c);
    let reason = refused_because(&both, &hs_on_rsa, "HS256 token naming an RS256 key").await;
    assert!(reason.starts_with("invalid token"), "{reason}");
    // An unknown kid is refused, and the key without a kid is no fallback.
    for (kid, secret) in [("2023", OLD_SECRET), ("nope", SECRET)] {
        let t = sign_kid(Algorithm::HS256, &hs_key(secret), Some(kid), &c);
        let reason = refused_because(&both, &t, kid).await;
        assert!(reason.contains("kid"), "{reason}");
    }
    // Without a kid every key is tried: the key without a kid, and listed ones.
    welcomed(
        &both,
        &sign_kid(Algorithm::HS256, &hs_key(SECRET), None, &c),
    )
    .await;
    welcomed(
        &both,
        &sign_kid(Algorithm::HS256, &hs_key(OLD_SECRET), None, &c),
    )
    .await;
    welcomed(&both, &sign_kid(Algorithm::RS256, &rsa_key(), None, &c)).await;
    let stranger = sign_kid(Algorithm::HS256, &hs_key(TENANT_SECRET), None, &c);
    refused_because(&both, &stranger, "no kid, no key of ours").await;
    // A tenant's kids are its own.
    let g = claims("u1", "globex");
    welcomed(
        &both,
        &sign_kid(Algorithm::HS256, &hs_key(TENANT_SECRET), Some("g1"), &g),
    )
    .await;
    refused_because(
        &both,
        &sign_kid(Algorithm::HS256, &hs_key(OLD_SECRET), Some("2024"), &g),
        "a default kid for a tenant with its own keys",
    )
    .await;
    refused_because(
        &both,
        &sign_kid(Algorithm::HS256, &hs_key(TENANT_SECRET), Some("g1"), &c),
        "a tenant's kid for a default tenant",
    )
    .await;

    // After the old key is removed, its tokens are refused; the new ones still work.
    let after = TestServer::spawn_with(|c| {
        c.auth.keys = vec![named("2025", NEW_SECRET), named_rsa("2025-rsa")];
    })
    .await;
    let reason = refused_because(&after, &old, "removed key").await;
    assert!(reason.contains("kid"), "{reason}");
    welcomed(&after, &new_hs).await;
    welcomed(&after, &new_rs).await;

    // With no key that has an id, the one key verifies tokens whatever
    // their kid says (as before kids were read).
    let single = TestServer::spawn().await;
    welcomed(
        &single,
        &sign_kid(Algorithm::HS256, &hs_key(SECRET), Some("whatever"), &c),
    )
    .await;
}

// ---- JWKS -------------------------------------------------------------------

/// What the test JWKS server answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The current document.
    Serve,
    /// HTTP 500.
    Fail,
    /// Not JSON.
    Garbage,
    /// A valid document padded past the node's size limit, sent chunked
    /// (no Content-Length).
    Huge,
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct JwksState {
    requests: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
}

/// A JWKS endpoint on 127.0.0.1:<free port>, counting the requests it got.
/// Every answer closes its connection, so stopping the server makes the
/// node's next fetch fail.
struct JwksServer {
    url: String,
    state: JwksState,
    task: JoinHandle<()>,
}

async fn serve_jwks(State(s): State<JwksState>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *s.mode.lock().unwrap();
    let doc = json!({"keys": *s.keys.lock().unwrap()});
    let close = [(header::CONNECTION, "close")];
    match mode {
        Mode::Serve => (close, Json(doc)).into_response(),
        Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, close, "down").into_response(),
        Mode::Garbage => (close, "<html>not a jwks</html>").into_response(),
        Mode::Huge => {
            let mut doc = doc;
            doc["padding"] = "x".repeat(600 * 1024).into();
            let bytes = bytes::Bytes::from(doc.to_string());
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
                .chunks(16 * 1024)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            (close, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Mode::Hang => std::future::pending().await,
    }
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Self {
        let state = JwksState {
            requests: Arc::new(AtomicUsize::new(0)),
            keys: Arc::new(Mutex::new(keys)),
            mode: Arc::new(Mutex::new(Mode::Serve)),
        };
        let app = Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, task }
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Waits (bounded) until the server has had `n` requests.
    async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.requests() < n {
            assert!(
                Instant::now() < deadline,
                "JWKS requests: {}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The public JWK of a test private key, with `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    jwk["kid"] = kid.into();
    jwk["use"] = "sig".into();
    jwk
}

/// A node whose default keys come from `url` only.
async fn jwks_node(url: &str, tweak: impl FnOnce(&mut AuthConfig)) -> TestServer {
    let url = url.to_owned();
    TestServer::spawn_with(move |c| {
        c.auth.secret = None;
        c.auth.jwks_url = Some(url);
        tweak(&mut c.auth);
    })
    .await
}

#[tokio::test]
async fn tokens_are_verified_with_keys_from_the_jwks_fetched_once() {
    let jwks = JwksServer::start(vec![
        jwk(&rsa_key(), Algorithm::RS256, "r1"),
        jwk(&ec_key(), Algorithm::ES256, "e1"),
        // A symmetric key in a published document must never verify anything.
        json!({"kty":"oct","kid":"o1","k": URL_SAFE_NO_PAD.encode(SECRET)}),
    ])
    .await;
    let tenant_jwks = JwksServer::start(vec![jwk(&rsa2_key(), Algorithm::RS256, "g1")]).await;
    let tenant_url = tenant_jwks.url.clone();
    let server = jwks_node(&jwks.url, |auth| {
        auth.tenants.insert(
            "globex".into(),
            TenantAuthConfig {
                jwks_url: Some(tenant_url),
                ..TenantAuthConfig::default()
            },
        );
    })
    .await;
    let c = claims("u1", "acme");
    let (_a, w) = welcomed(
        &server,
        &sign_kid(Algorithm::RS256, &rsa_key(), Some("r1"), &c),
    )
    .await;
    assert_eq!(w["user"], "u1");
    welcomed(
        &server,
        &sign_kid(Algorithm::ES256, &ec_key(), Some("e1"), &c),
    )
    .await;
    // Without a kid, the JWKS keys are tried.
    welcomed(&server, &sign_kid(Algorithm::RS256, &rsa_key(), None, &c)).await;
    for (what, token) in [
        (
            "right kid, other key",
            sign_kid(Algorithm::RS256, &rsa2_key(), Some("r1"), &c),
        ),
        (
            "an EC key's kid on an RS256 token",
            sign_kid(Algorithm::RS256, &rsa_key(), Some("e1"), &c),
        ),
        (
            "the oct key of the document",
            sign_kid(Algorithm::HS256, &hs_key(SECRET), Some("o1"), &c),
        ),
        (
            "the RSA public key as an HMAC secret",
            sign_kid(
                Algorithm::HS256,
                &EncodingKey::from_secret(&read_fixture("test-only-rsa-public.pem")),
                Some("r1"),
                &c,
            ),
        ),
        (
            "no kid, no key of the document",
            sign_kid(Algorithm::RS256, &rsa2_key(), None, &c),
        ),
        (
            "the tenant's kid for a default tenant",
            sign_kid(Algorithm::RS256, &rsa2_key(), Some("g1"), &c),
        ),
    ] {
        refused_because(&server, &token, what).await;
    }
    // A tenant with its own JWKS: its keys, and only its keys.
    let g = claims("u2", "globex");
    welcomed(
        &server,
        &sign_kid(Algorithm::RS256, &rsa2_key(), Some("g1"), &g),
    )
    .await;
    refused_because(
        &server,
        &sign_kid(Algorithm::RS256, &rsa_key(), Some("r1"), &g),
        "a default JWKS kid for the tenant",
    )
    .await;
    // Each document was fetched once: at start, never per token (the
    // unknown kids came within jwks_min_refetch of that fetch).
    assert_eq!(jwks.requests(), 1);
    assert_eq!(tenant_jwks.requests(), 1);
}

#[tokio::test]
async fn a_new_kid_refetches_the_jwks_at_most_once_per_min_refetch() {
    const MIN_REFETCH: Duration = Duration::from_secs(3);
    let jwks = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "r1")]).await;
    let started = Instant::now();
    let server = jwks_node(&jwks.url, |auth| auth.jwks_min_refetch = MIN_REFETCH).await;
    let c = claims("u1", "acme");
    welcomed(
        &server,
        &sign_kid(Algorithm::RS256, &rsa_key(), Some("r1"), &c),
    )
    .await;
    jwks.wait_for_requests(1).await;
    let first_fetch_seen = Instant::now();

    // The issuer rotates: r2 appears. Within jwks_min_refetch of the last
    // fetch, new kids are refused at once and fetch nothing.
    jwks.set_keys(vec![
        jwk(&rsa_key(), Algorithm::RS256, "r1"),
        jwk(&rsa2_key(), Algorithm::RS256, "r2"),
    ]);
    let r2 = sign_kid(Algorithm::RS256, &rsa2_key(), Some("r2"), &c);
    let nope = sign_kid(Algorithm::RS256, &rsa2_key(), Some("nope"), &c);
    let burst = (0..10).map(|i| {
        let token = if i % 2 == 0 { &r2 } else { &nope };
        refused_because(&server, token, "new kid within min_refetch")
    });
    futures_util::future::join_all(burst).await;
    assert!(
        started.elapsed() < MIN_REFETCH,
        "the burst must fall within min_refetch of the first fetch; the machine was too slow"
    );
    assert_eq!(jwks.requests(), 1, "no refetch within min_refetch");

    // After it, one new kid refetches once; tokens arriving meanwhile wait
    // for that fetch rather than starting their own.
    tokio::time::sleep_until(first_fetch_seen + MIN_REFETCH + Duration::from_millis(100)).await;
    let _clients = futures_util::future::join_all((0..5).map(|_| welcomed(&server, &r2))).await;
    assert_eq!(jwks.requests(), 2, "one refetch for five tokens");
    // And right after it, unknown kids fetch nothing again.
    for _ in 0..5 {
        refused_because(&server, &nope, "unknown kid right after a refetch").await;
    }
    assert_eq!(jwks.requests(), 2);
}

#[tokio::test]
async fn the_jwks_is_refreshed_periodically_and_removed_keys_stop_working() {
    let jwks = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "r1")]).await;
    let server = jwks_node(&jwks.url, |auth| {
        auth.jwks_refresh = Duration::from_secs(1);
        auth.jwks_min_refetch = Duration::from_secs(60);
    })
    .await;
    let c = claims("u1", "acme");
    let r1 = sign_kid(Algorithm::RS256, &rsa_key(), Some("r1"), &c);
    welcomed(&server, &r1).await;
    // r1 is retired and r2 published; no token asks, the refresh finds it.
    jwks.set_keys(vec![jwk(&rsa2_key(), Algorithm::RS256, "r2")]);
    jwks.wait_for_requests(2).await;
    welcomed(
        &server,
        &sign_kid(Algorithm::RS256, &rsa2_key(), Some("r2"), &c),
    )
    .await;
    let reason = refused_because(&server, &r1, "retired key").await;
    assert!(reason.contains("kid"), "{reason}");
}

#[tokio::test]
async fn a_refresh_never_waits_for_the_jwks_and_its_retry_succeeds() {
    let jwks = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "r1")]).await;
    let server = jwks_node(&jwks.url, |auth| {
        auth.jwks_min_refetch = Duration::from_secs(1);
    })
    .await;
    let c = claims("u1", "acme");
    let (mut client, _) = welcomed(
        &server,
        &sign_kid(Algorithm::RS256, &rsa_key(), Some("r1"), &c),
    )
    .await;
    jwks.set_keys(vec![
        jwk(&rsa_key(), Algorithm::RS256, "r1"),
        jwk(&rsa2_key(), Algorithm::RS256, "r2"),
    ]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = c.clone();
    later["exp"] = (now_secs() + 7200).into();
    let r2 = sign_kid(Algorithm::RS256, &rsa2_key(), Some("r2"), &later);
    // The live connection does not wait for the fetch: refused at once ...
    let asked = Instant::now();
    let reply = client
        .request(json!({"type":"refresh","token": r2.clone()}), 1)
        .await;
    assert_eq!(reply["code"], 403, "{reply}");
    assert!(asked.elapsed() < Duration::from_millis(500));
    // ... but the fetch was started, and a retry succeeds.
    jwks.wait_for_requests(2).await;
    let deadline = Instant::now() + WAIT;
    let mut id = 2;
    loop {
        let reply = client
            .request(json!({"type":"refresh","token": r2.clone()}), id)
            .await;
        if reply["type"] == "ack" {
            break;
        }
        assert!(Instant::now() < deadline, "refresh still refused: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        id += 1;
    }
    assert_eq!(jwks.requests(), 2);
}

#[tokio::test]
async fn a_jwks_that_cannot_be_fetched_never_lets_a_token_in() {
    let c = claims("u1", "acme");
    let r1 = sign_kid(Algorithm::RS256, &rsa_key(), Some("r1"), &c);
    let no_kid = sign_kid(Algorithm::RS256, &rsa_key(), None, &c);

    // Nothing listens at the URL.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = jwks_node(&format!("http://127.0.0.1:{port}/jwks.json"), |_| {}).await;
    refused_because(&dead, &r1, "no JWKS server").await;
    refused_because(&dead, &no_kid, "no JWKS server, no kid").await;

    // A server answering 500, something that is not a JWKS, or a JWKS
    // beyond the size limit (the key it holds is not taken).
    for mode in [Mode::Fail, Mode::Garbage, Mode::Huge] {
        let jwks = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "r1")]).await;
        jwks.set_mode(mode);
        let server = jwks_node(&jwks.url, |_| {}).await;
        jwks.wait_for_requests(1).await;
        refused_because(&server, &r1, &format!("{mode:?}")).await;
        refused_because(&server, &no_kid, &format!("{mode:?}, no kid")).await;
    }

    // A server that never answers: the client waits for the fetch under
    // way, bounded by jwks_timeout, then is refused.
    let jwks = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "r1")]).await;
    jwks.set_mode(Mode::Hang);
    let timeout = Duration::from_millis(500);
    let server = jwks_node(&jwks.url, |auth| auth.jwks_timeout = timeout).await;
    let asked = Instant::now();
    refused_because(&server, &r1, "hanging JWKS").await;
    assert!(
        asked.elapsed() < timeout + Duration::from_millis(1500),
        "refused after {:?}",
        asked.elapsed()
    );

    // A server that goes down: keys already fetched keep verifying their
    // tokens, a new kid is refused.
    let jwks = JwksServer::start(vec![jwk(&rsa_key(), Algorithm::RS256, "r1")]).await;
    let server = jwks_node(&jwks.url, |auth| {
        auth.jwks_min_refetch = Duration::from_secs(1);
    })
    .await;
    welcomed(&server, &r1).await;
    let url = jwks.url.clone();
    drop(jwks);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    welcomed(&server, &r1).await;
    let r2 = sign_kid(Algorithm::RS256, &rsa2_key(), Some("r2"), &c);
    let reason = refused_because(&server, &r2, "new kid, JWKS down").await;
    assert!(reason.contains("kid"), "{reason}");
    // (The server really is gone.)
    assert!(
        reqwest::get(&url).await.is_err(),
        "the JWKS server still answers"
    );
}

#[test]
fn key_configuration_is_checked_and_errors_name_the_field() {
    let ok = |toml: &str| Config::from_toml_str(toml).unwrap();
    let err = |toml: &str| Config::from_toml_str(toml).unwrap_err().to_string();
    let c = ok(
        "[auth]\nsecret = \"0123456789abcdef\"\n[[auth.keys]]\nkid = \"a\"\nsecret = \"0123456789abcdef\"\n",
    );
    assert_eq!(c.auth.keys[0].kid, "a");
    ok(
        "[auth]\njwks_url = \"https://idp.example/jwks.json\"\naudience = \"fanout\"\nissuer = \"https://idp.example/\"\n",
    );
    ok("[auth]\njwks_url = \"http://127.0.0.1:9999/jwks.json\"\n");
    ok("[auth]\njwks_url = \"http://[::1]:9999/jwks.json\"\n");
    ok("[auth]\njwks_url = \"http://localhost/jwks.json\"\n");
    for (toml, field) in [
        (
            "[auth]\njwks_url = \"http://idp.example/jwks.json\"\n",
            "auth.jwks_url",
        ),
        (
            "[auth]\njwks_url = \"http://127.0.0.1.evil.test/jwks.json\"\n",
            "auth.jwks_url",
        ),
        (
            "[auth]\njwks_url = \"http://user@127.0.0.1/jwks.json\"\n",
            "auth.jwks_url",
        ),
        (
            "[auth]\njwks_url = \"ftp://idp.example/\"\n",
            "auth.jwks_url",
        ),
        (
            "[auth]\nsecret = \"0123456789abcdef\"\n[[auth.keys]]\nsecret = \"0123456789abcdef\"\n",
            "kid",
        ),
        (
            "[auth]\nsecret = \"0123456789abcdef\"\n[[auth.keys]]\nkid = \"\"\nsecret = \"0123456789abcdef\"\n",
            "auth.keys",
        ),
        (
            "[[auth.keys]]\nkid = \"a\"\nsecret = \"0123456789abcdef\"\n[[auth.keys]]\nkid = \"a\"\nsecret = \"fedcba9876543210\"\n",
            "auth.keys",
        ),
        (
            "[[auth.keys]]\nkid = \"a\"\nsecret = \"short\"\n",
            "auth.keys",
        ),
        ("[[auth.keys]]\nkid = \"a\"\n", "auth.keys"),
        (
            "[auth]\nsecret = \"0123456789abcdef\"\naudience = \"\"\n",
            "auth.audience",
        ),
        (
            "[auth]\nsecret = \"0123456789abcdef\"\njwks_min_refetch = \"0s\"\n",
            "auth.jwks_min_refetch",
        ),
        (
            "[auth]\nsecret = \"0123456789abcdef\"\njwks_timeout = \"0s\"\n",
            "auth.jwks_timeout",
        ),
        ("[auth.tenants.acme]\n", "auth.tenants"),
        // A tenant entry with only an issuer needs default keys to use.
        (
            "[auth.tenants.acme]\nissuer = \"x\"\n[[api_keys]]\nkey = \"0123456789abcdef\"\n",
            "auth.tenants",
        ),
        (
            "[auth.tenants.acme]\njwks_url = \"http://idp.example/\"\n",
            "auth.tenants.jwks_url",
        ),
        (
            "[auth]\njwks_urls = \"https://idp.example/\"\n",
            "jwks_urls",
        ),
    ] {
        let e = err(toml);
        assert!(e.contains(field), "{toml}: {e}");
    }
    ok(
        "[auth]\nsecret = \"0123456789abcdef\"\n[auth.tenants.acme]\nissuer = \"https://acme.example/\"\n",
    );
}
