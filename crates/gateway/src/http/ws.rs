//! The WebSocket upgrade of `GET /ws`.
//!
//! The HTTP side of the handshake is done here with hyper's upgrade
//! machinery, and the upgraded socket goes to `tokio-tungstenite` wrapped in
//! [`LeanIo`], with our own [`WebSocketConfig`]: tungstenite's buffers are
//! set tiny (its defaults allocate 128 KiB per socket for reading, 12.5 GiB
//! per 100k connections) and the wrapper buffers reads and writes only
//! while they hold bytes (see `session::lean_io` for why); the frame limit
//! closes with 1009.

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
use crate::session::lean_io::{self, LeanIo};
use crate::session::{self, Upgrade};

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

/// The task of one upgraded connection: what every open WebSocket keeps
/// in memory for its whole life (the session tests bound its size).
// Not an `async fn`: as one, its future keeps every argument in its own
// slot for the whole task (1,408 B instead of 1,272 B, one more 128 B
// step of the task cell for every connection).
#[allow(clippy::manual_async_fn)]
pub(crate) fn connection_task(
    node: Node,
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
    upgrade: Upgrade,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let peer = upgrade.peer;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    LeanIo::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::run(node, ws, upgrade).await;
            }
            Err(e) => debug!(error = %e, %peer, "upgrade failed"),
        }
    }
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
    config.read_buffer_size = lean_io::TUNGSTENITE_READ_BUFFER;
    // Every frame goes straight to the wrapper, which batches the writes.
    config.write_buffer_size = 0;
    config.max_message_size = Some(limits.max_frame_bytes);
    config.max_frame_size = Some(limits.max_frame_bytes);

    let echo = match chosen {
        Ok(Some(codec)) => Some(codec.subprotocol()),
        _ => None,
    };
    node.sessions()
        .spawn(connection_task(node.clone(), on_upgrade, config, upgrade));

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

#[cfg(test)]
mod tests {
    use super::*;

    /// What tokio allocates for the task of a future of `future_bytes`
    /// spawned through the node's `TaskTracker` (which adds 8 B): the
    /// future plus the task's header, scheduler handle, id, stage tag and
    /// trailer (at most 112 B with tokio 1.54), in a cell aligned to 128 B
    /// on x86-64.
    fn task_cell_bytes(future_bytes: usize) -> usize {
        (future_bytes + 8 + 112).div_ceil(128) * 128
    }

    /// Every open WebSocket keeps this task for its whole life, so its size
    /// is in every idle connection's budget (docs/benchmarks.md). The
    /// handshake, the handling of a client frame, the timer's work, the
    /// close and the cleanup are boxed and allocated only while they run;
    /// this fails if a refactor inlines one of them again, or if anything
    /// else grows the future past the 128-byte step of its task cell. The
    /// task cell was 1,664 B before issue 15 (as massif saw it); the future
    /// is 1,272 B since, a 1,408 B cell. The size is the same in debug and
    /// release builds.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let node = Node::embedded_for_tests();
        let on_upgrade = hyper::upgrade::on(axum::http::Request::new(()));
        let upgrade = Upgrade {
            codec: fanout_protocol::Codec::Json,
            header_token: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            unsupported_subprotocol: false,
        };
        let task = connection_task(node, on_upgrade, WebSocketConfig::default(), upgrade);
        let size = std::mem::size_of_val(&task);
        let cell = task_cell_bytes(size);
        eprintln!("connection task: future {size} B, task cell about {cell} B");
        assert!(
            cell <= 1408,
            "the connection task grew to {size} bytes (a {cell} B task)"
        );
    }
}
