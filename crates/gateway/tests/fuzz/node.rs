//! A node for the decoders that need one: the HTTP API (its router, called
//! in-process without a socket) and the token verifier.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fanout_gateway::auth::TokenVerifier;
use fanout_gateway::config::{ApiKeyConfig, HistoryRule};
use fanout_gateway::{Config, Server};
use serde_json::Value;
use tower::ServiceExt;

/// HS256 secret of the fuzz node's tokens.
pub const SECRET: &str = "fuzz-secret-0123456789abcdef";
/// Unscoped API key of the fuzz node.
pub const API_KEY: &str = "fuzz-api-key-0123456789";
/// `limits.max_message_bytes` of the fuzz node (small, so limits are reached).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// `limits.max_http_body_bytes` of the fuzz node.
pub const MAX_HTTP_BODY_BYTES: usize = 16 * 1024;
/// `limits.max_batch_messages` of the fuzz node.
pub const MAX_BATCH_MESSAGES: usize = 8;
/// Rooms matching this pattern keep history on the fuzz node.
pub const HISTORY_ROOMS: &str = "h:*";

/// The fuzz node's configuration.
pub fn config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![ApiKeyConfig {
            key: API_KEY.into(),
            tenant: None,
        }],
        ..Config::default()
    };
    c.auth.secret = Some(SECRET.into());
    c.limits.max_message_bytes = MAX_MESSAGE_BYTES;
    c.limits.max_http_body_bytes = MAX_HTTP_BODY_BYTES;
    c.limits.max_batch_messages = MAX_BATCH_MESSAGES;
    c.history.push(HistoryRule {
        tenant: "*".into(),
        rooms: HISTORY_ROOMS.into(),
        size: 16,
        ttl: Duration::from_secs(60),
    });
    c.validate().expect("the fuzz node's config is valid");
    c
}

/// The verifier of the fuzz node's tokens (no node needed).
pub fn verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let c = config();
        TokenVerifier::new(&c.auth, c.is_dev_mode()).expect("verifier")
    })
}

/// A node on its own single-threaded runtime; requests go straight to its
/// router (no socket), one at a time.
pub struct FuzzNode {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _server: Server,
}

/// One API answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl FuzzNode {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(Server::bind(config()))
            .expect("fuzz node starts");
        let router = fanout_gateway::http::router(server.node().clone());
        Self {
            rt,
            router,
            _server: server,
        }
    }

    /// `POST path` with `body` as `content_type`, with the API key.
    pub fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let req = Request::post(path)
            .header("authorization", format!("Bearer {API_KEY}"))
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        self.send(req)
    }

    /// `GET uri` with the API key.
    pub fn get(&self, uri: axum::http::Uri) -> Answer {
        let req = Request::get(uri)
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(Body::empty())
            .unwrap();
        self.send(req)
    }

    /// Sends one request; every answer of the API is a JSON body.
    fn send(&self, req: Request<Body>) -> Answer {
        self.rt.block_on(async {
            let res = self.router.clone().oneshot(req).await.expect("infallible");
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .expect("answer body");
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: the answer is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            Answer { status, body }
        })
    }
}

impl Answer {
    /// The `error.code` of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}
