//! The WebSocket upgrade of `GET /ws`.
//!
//! The HTTP side of the handshake is done here with hyper's upgrade
//! machinery, and the upgraded socket goes straight to `tokio-tungstenite`
//! with our own [`WebSocketConfig`]: we choose the buffer sizes (the library
//! defaults allocate 128 KiB per socket for reading, 12.5 GiB per 100k
//! connections) and the frame limit that closes with 1009.

use axum::extract::{ConnectInfo, Request, State};

use super::listener::PeerAddr;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fanout_protocol::Codec;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::debug;

use super::ApiError;
use super::extract::bearer;
use crate::node::{Node, NodeError};
use crate::session::{self, Upgrade};

/// Read buffer per socket, allocated up front by tungstenite and held for the
/// life of the connection, so it is most of an idle connection's memory
/// (tungstenite's default, 128 KiB, would cost 12.5 GiB per 100k sockets).
/// It bounds how much one `read` call takes, not the frame size: client
/// frames are small (auth, subscribe, ping), and a larger one grows the
/// buffer to its length and arrives in several reads. 1 KiB holds an auth
/// frame with a typical JWT in one read; see docs/benchmarks.md for the
/// memory measured per connection.
const READ_BUFFER_BYTES: usize = 1024;
/// Bytes tungstenite gathers before writing to the socket; `flush` always writes.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

fn header_has_token(headers: &HeaderMap, name: axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The codec for the offered subprotocols: the first one fanout speaks, in
/// the client's order of preference. `Err` when some were offered but none fits.
fn choose_codec(headers: &HeaderMap) -> Result<Option<Codec>, ()> {
    let offers: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if offers.is_empty() {
        return Ok(None);
    }
    offers
        .iter()
        .find_map(|o| Codec::from_subprotocol(o))
        .map(Some)
        .ok_or(())
}

fn bad_upgrade(message: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// `GET /ws`.
pub(crate) async fn upgrade(
    State(node): State<Node>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    mut req: Request,
) -> Response {
    if node.is_draining() {
        return ApiError::from(NodeError::Draining).into_response();
    }
    let headers = req.headers();
    if !header_has_token(headers, UPGRADE, "websocket")
        || !header_has_token(headers, CONNECTION, "upgrade")
    {
        return bad_upgrade("expected a WebSocket upgrade request (Upgrade: websocket)");
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"))],
            "unsupported WebSocket version; use 13",
        )
            .into_response();
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return bad_upgrade("missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let chosen = choose_codec(headers);
    let upgrade = Upgrade {
        codec: chosen.ok().flatten().unwrap_or(Codec::Json),
        header_token: bearer(headers).map(str::to_owned),
        peer,
        unsupported_subprotocol: chosen.is_err(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return bad_upgrade("connection cannot be upgraded");
    };

    let limits = &node.config().limits;
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER_BYTES;
    config.write_buffer_size = WRITE_BUFFER_BYTES;
    config.max_message_size = Some(limits.max_frame_bytes);
    config.max_frame_size = Some(limits.max_frame_bytes);

    let echo = match chosen {
        Ok(Some(codec)) => Some(codec.subprotocol()),
        _ => None,
    };
    let task_node = node.clone();
    node.sessions().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(task_node, ws, upgrade).await;
            }
            Err(e) => debug!(error = %e, %peer, "upgrade failed"),
        }
    });

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = echo {
        response = response.header(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
