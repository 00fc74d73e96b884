//! Authentication (docs/protocol.md §2): Bearer header and first-frame `auth`,
//! HS256 / RS256 / ES256, per-tenant keys, refused tokens (always after a
//! completed handshake, with close 4001), expiry while connected and `refresh`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fanout_gateway::Config;
use fanout_gateway::config::{JwtAlgorithm, KeyConfig};
use fanout_protocol::Codec;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{Client, Event, SECRET, TestServer, WAIT, now_secs};

/// A tenant with its own RS256 key (the second RSA pair).
const RSA_TENANT: &str = "globex";
/// A tenant with its own HS256 secret.
const HS_TENANT: &str = "initech";
const HS_TENANT_SECRET: &str = "initech-own-secret-0123456789";

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub(crate) fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

pub(crate) fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("test-only-rsa-private.pem")).unwrap()
}

pub(crate) fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read_fixture("test-only-rsa2-private.pem")).unwrap()
}

pub(crate) fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture("test-only-ec-p256-private.pem")).unwrap()
}

pub(crate) fn hs_key(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}

/// Valid claims for an hour.
pub(crate) fn claims(sub: &str, tenant: &str) -> Value {
    json!({"sub": sub, "tenant": tenant, "exp": now_secs() + 3600, "rooms": ["lobby"], "publish": ["lobby"]})
}

pub(crate) fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("sign")
}

pub(crate) fn default_token(sub: &str, tenant: &str) -> String {
    sign(Algorithm::HS256, &hs_key(SECRET), &claims(sub, tenant))
}

/// Default key RS256 with the first RSA public key.
fn rs256_default(c: &mut Config) {
    c.auth.secret = None;
    c.auth.algorithm = Some(JwtAlgorithm::RS256);
    c.auth.public_key_file = Some(fixture("test-only-rsa-public.pem"));
}

/// Connects with a header token and expects the welcome.
pub(crate) async fn welcomed(server: &TestServer, token: &str) -> (Client, Value) {
    let mut c = Client::connect(&server.ws_url(), None, Some(token)).await;
    let welcome = c.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (c, welcome)
}

/// Connects with a header token (the handshake must succeed: `connect`
/// panics otherwise) and expects close 4001 as the very first event.
pub(crate) async fn refused(server: &TestServer, token: &str, what: &str) {
    let mut c = Client::connect(&server.ws_url(), None, Some(token)).await;
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, _)))) => {}
        other => panic!("{what}: expected close 4001, got {other:?}"),
    }
}

#[tokio::test]
async fn bearer_header_token_is_accepted_and_welcome_names_the_identity() {
    let server = TestServer::spawn().await;
    let (_c, welcome) = welcomed(&server, &default_token("u42", "acme")).await;
    assert_eq!(welcome["tenant"], "acme");
    assert_eq!(welcome["user"], "u42");
    assert_eq!(welcome["node"], server.node.id());
    assert!(!welcome["conn"].as_str().unwrap().is_empty(), "{welcome}");
    assert_eq!(welcome["ping_interval"], 25);
}

#[tokio::test]
async fn first_frame_auth_is_accepted_in_both_codecs() {
    let server = TestServer::spawn().await;
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut c = Client::connect(&server.ws_url(), Some(codec), None).await;
        c.send(json!({"type":"auth","token": default_token("u1", "acme")}))
            .await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{codec:?}: {welcome}");
        assert_eq!(welcome["user"], "u1");
        let pong = c.request(json!({"type":"ping"}), 3).await;
        assert_eq!(pong, json!({"type":"pong","id":3}));
    }
}

#[tokio::test]
async fn no_auth_within_auth_timeout_closes_4001() {
    let server =
        TestServer::spawn_with(|c| c.session.auth_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut silent = Client::connect(&server.ws_url(), None, None).await;
    match silent.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, _)))) => {}
        other => panic!("expected close 4001, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A first frame that is not `auth` is refused the same way, at once.
    let mut wrong = Client::connect(&server.ws_url(), None, None).await;
    wrong.send(json!({"type":"ping","id":1})).await;
    match wrong.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, _)))) => {}
        other => panic!("expected close 4001, got {other:?}"),
    }
}

#[tokio::test]
async fn hs256_rs256_es256_are_each_accepted_when_configured() {
    let hs = TestServer::spawn_with(|c| c.auth.algorithm = Some(JwtAlgorithm::HS256)).await;
    welcomed(&hs, &default_token("u1", "acme")).await;

    let rs = TestServer::spawn_with(rs256_default).await;
    let (_c, w) = welcomed(
        &rs,
        &sign(Algorithm::RS256, &rsa_key(), &claims("u2", "acme")),
    )
    .await;
    assert_eq!(w["user"], "u2");

    let es = TestServer::spawn_with(|c| {
        c.auth.secret = None;
        c.auth.algorithm = Some(JwtAlgorithm::ES256);
        c.auth.public_key_file = Some(fixture("test-only-ec-p256-public.pem"));
    })
    .await;
    let (_c, w) = welcomed(
        &es,
        &sign(Algorithm::ES256, &ec_key(), &claims("u3", "acme")),
    )
    .await;
    assert_eq!(w["user"], "u3");
    // Each node accepts only its own algorithm.
    refused(
        &es,
        &sign(Algorithm::RS256, &rsa_key(), &claims("u3", "acme")),
        "RS256 on ES256",
    )
    .await;
    refused(
        &rs,
        &sign(Algorithm::ES256, &ec_key(), &claims("u2", "acme")),
        "ES256 on RS256",
    )
    .await;
}

#[tokio::test]
async fn a_tenant_with_its_own_key_is_verified_with_that_key_only() {
    let server = TestServer::spawn_with(|c| {
        c.auth.tenants.insert(
            RSA_TENANT.into(),
            KeyConfig {
                algorithm: Some(JwtAlgorithm::RS256),
                secret: None,
                public_key_file: Some(fixture("test-only-rsa2-public.pem")),
            }
            .into(),
        );
        c.auth.tenants.insert(
            HS_TENANT.into(),
            KeyConfig {
                algorithm: Some(JwtAlgorithm::HS256),
                secret: Some(HS_TENANT_SECRET.into()),
                public_key_file: None,
            }
            .into(),
        );
    })
    .await;
    let (_a, w) = welcomed(
        &server,
        &sign(Algorithm::RS256, &rsa2_key(), &claims("u1", RSA_TENANT)),
    )
    .await;
    assert_eq!(w["tenant"], RSA_TENANT);
    let (_b, w) = welcomed(
        &server,
        &sign(
            Algorithm::HS256,
            &hs_key(HS_TENANT_SECRET),
            &claims("u1", HS_TENANT),
        ),
    )
    .await;
    assert_eq!(w["tenant"], HS_TENANT);
    // Tenants without their own key still use the default.
    welcomed(&server, &default_token("u1", "acme")).await;

    // The default key no longer works for tenants that have their own.
    refused(
        &server,
        &default_token("u1", RSA_TENANT),
        "default key, RSA tenant",
    )
    .await;
    refused(
        &server,
        &default_token("u1", HS_TENANT),
        "default key, HS tenant",
    )
    .await;
    // Another tenant's key is not the default either.
    let t = sign(
        Algorithm::HS256,
        &hs_key(HS_TENANT_SECRET),
        &claims("u1", "acme"),
    );
    refused(&server, &t, "tenant key used for a default tenant").await;
    let t = sign(Algorithm::RS256, &rsa_key(), &claims("u1", RSA_TENANT));
    refused(&server, &t, "other RSA key for the RSA tenant").await;
}

#[tokio::test]
async fn forged_tokens_complete_the_handshake_then_close_4001() {
    let server = TestServer::spawn_with(rs256_default).await;
    let c = claims("mallory", "acme");

    // alg: none, hand-built: header.payload. with an empty signature.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(c.to_string());
    refused(&server, &format!("{header}.{payload}."), "alg none").await;
    refused(
        &server,
        &format!("{header}.{payload}"),
        "alg none, two parts",
    )
    .await;

    // Right algorithm, wrong key.
    refused(
        &server,
        &sign(Algorithm::RS256, &rsa2_key(), &c),
        "wrong RSA key",
    )
    .await;
    // HS256 when RS256 is configured.
    refused(
        &server,
        &sign(Algorithm::HS256, &hs_key(SECRET), &c),
        "HS256",
    )
    .await;
    // The classic confusion: the RSA *public* key used as an HMAC secret.
    let public_pem = read_fixture("test-only-rsa-public.pem");
    let t = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), &c);
    refused(&server, &t, "public key as HMAC secret").await;
    // A valid signature over a tampered payload.
    let good = sign(Algorithm::RS256, &rsa_key(), &c);
    let parts: Vec<&str> = good.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(claims("admin", "acme").to_string());
    refused(
        &server,
        &format!("{}.{evil}.{}", parts[0], parts[2]),
        "tampered",
    )
    .await;
    // Not a JWT at all.
    refused(&server, "not-a-jwt", "garbage").await;

    // The genuine token still works.
    welcomed(&server, &good).await;
}

#[tokio::test]
async fn missing_or_invalid_claims_and_expired_tokens_close_4001() {
    let server = TestServer::spawn().await;
    let key = hs_key(SECRET);
    let exp = now_secs() + 3600;
    let cases = [
        ("missing sub", json!({"tenant":"acme","exp":exp})),
        ("missing tenant", json!({"sub":"u1","exp":exp})),
        ("missing exp", json!({"sub":"u1","tenant":"acme"})),
        (
            "expired",
            json!({"sub":"u1","tenant":"acme","exp":now_secs() - 120}),
        ),
        (
            "sub with a space",
            json!({"sub":"a b","tenant":"acme","exp":exp}),
        ),
        (
            "tenant with a slash",
            json!({"sub":"u1","tenant":"ac/me","exp":exp}),
        ),
        ("empty sub", json!({"sub":"","tenant":"acme","exp":exp})),
        (
            "sub too long",
            json!({"sub":"x".repeat(129),"tenant":"acme","exp":exp}),
        ),
        (
            "invalid room pattern",
            json!({"sub":"u1","tenant":"acme","exp":exp,"rooms":["a b"]}),
        ),
        (
            "exp not a number",
            json!({"sub":"u1","tenant":"acme","exp":"soon"}),
        ),
    ];
    for (what, claims) in cases {
        refused(&server, &sign(Algorithm::HS256, &key, &claims), what).await;
    }
    // The same token through the first-frame path.
    let mut c = Client::connect(&server.ws_url(), None, None).await;
    let expired = json!({"sub":"u1","tenant":"acme","exp":now_secs() - 120});
    c.send(json!({"type":"auth","token": sign(Algorithm::HS256, &key, &expired)}))
        .await;
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, _)))) => {}
        other => panic!("first-frame expired token: expected close 4001, got {other:?}"),
    }
    // Control: a 128-character sub is fine.
    let ok = json!({"sub":"x".repeat(128),"tenant":"acme","exp":exp});
    welcomed(&server, &sign(Algorithm::HS256, &key, &ok)).await;
}

/// A token for `sub`@`tenant` that expires `secs` seconds from now (in whole
/// seconds since the epoch), and the instant it expires at.
fn short_token(sub: &str, tenant: &str, secs: u64) -> (String, Instant) {
    let exp = now_secs() + secs;
    let mut c = claims(sub, tenant);
    c["exp"] = exp.into();
    let left = Duration::from_secs(exp).saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    );
    (
        sign(Algorithm::HS256, &hs_key(SECRET), &c),
        Instant::now() + left,
    )
}

#[tokio::test]
async fn a_token_expiring_while_connected_closes_4001() {
    let server = TestServer::spawn().await;
    let (token, expires) = short_token("u1", "acme", 2);
    let (mut c, _) = welcomed(&server, &token).await;
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, reason)))) => {
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("expected close 4001 at expiry, got {other:?}"),
    }
    assert!(
        Instant::now() + Duration::from_millis(100) >= expires,
        "closed before the token expired"
    );
}

#[tokio::test]
async fn refresh_with_a_later_token_keeps_the_connection_past_the_old_expiry() {
    let server = TestServer::spawn().await;
    let (token, expires) = short_token("u1", "acme", 2);
    let (mut c, _) = welcomed(&server, &token).await;
    let ack = c
        .request(
            json!({"type":"refresh","token": default_token("u1", "acme")}),
            5,
        )
        .await;
    assert_eq!(ack, json!({"type":"ack","id":5}));
    // Nothing happens at the old expiry ...
    let past = (expires + Duration::from_millis(700)).saturating_duration_since(Instant::now());
    c.expect_silence(past).await;
    // ... and the connection still answers.
    let pong = c.request(json!({"type":"ping"}), 6).await;
    assert_eq!(pong, json!({"type":"pong","id":6}));
}

#[tokio::test]
async fn refresh_for_another_user_or_tenant_is_refused_and_the_old_expiry_holds() {
    let server = TestServer::spawn().await;
    let (token, expires) = short_token("u1", "acme", 2);
    let (mut c, _) = welcomed(&server, &token).await;
    let refusals = [
        (7, default_token("u2", "acme"), 403),
        (8, default_token("u1", "globex"), 403),
        (9, "not-a-jwt".to_owned(), 403),
    ];
    for (id, token, code) in refusals {
        let reply = c
            .request(json!({"type":"refresh","token": token}), id)
            .await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
    }
    // Still connected until the old expiry, then 4001.
    let pong = c.request(json!({"type":"ping"}), 10).await;
    assert_eq!(pong["type"], "pong");
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((4001, _)))) => {}
        other => panic!("expected close 4001 at the old expiry, got {other:?}"),
    }
    assert!(Instant::now() + Duration::from_millis(100) >= expires);
}
