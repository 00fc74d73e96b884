//! `fanout-floor`: the least a broadcast server must do, to measure fanout against.
//!
//! Plain tokio-tungstenite with the buffer settings the node used before it
//! wrapped its sockets (1 KiB read, 16 KiB write), no auth, no routing, no limits beyond a bounded queue per
//! socket: `GET /ws` upgrades and sends `welcome`; a `subscribe` frame puts
//! the socket in the one room (answered with `ack`); `POST /v1/publish`
//! encodes the `message` frame once per codec and hands a clone of those
//! bytes to every socket in the room, whose task feeds and flushes it. It
//! speaks just enough of the protocol that `fanout-loadtest fanout` runs
//! against it unchanged, so fanout's throughput over the floor's says how
//! much of the machine the product's features cost.
//!
//! It is a binary beside the generator rather than a `cargo bench` target:
//! it has to run as its own long-lived process, measured from outside by
//! the same scenario (and by pid, like a node), while criterion benches are
//! short in-process loops.

mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fanout_protocol::api::{PublishRequest, PublishResponse};
use fanout_protocol::{Codec, Encoded, MessageFrame, Scope, ServerFrame};
use hyper::upgrade::OnUpgrade;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Frames one socket may have queued; beyond, it is dropped (the floor's
/// whole slow-consumer policy).
const QUEUE_FRAMES: usize = 1024;

/// Why the floor refused to start.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// Not a loopback address: the floor has no auth at all.
    #[error("the floor server has no authentication and only listens on loopback, not {0}")]
    NotLoopback(SocketAddr),
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A member of the room: its queue and its codec.
struct Member {
    tx: mpsc::Sender<Message>,
    codec: Codec,
}

/// The floor's whole state: one room.
#[derive(Default)]
struct Floor {
    /// Socket id → member. A std mutex: held only to clone senders in or out.
    room: Mutex<HashMap<u64, Member>>,
    next_id: AtomicU64,
}

/// A bound floor server.
pub struct FloorServer {
    listener: TcpListener,
    state: Arc<Floor>,
}

impl FloorServer {
    /// Binds `addr` (loopback only).
    pub async fn bind(addr: SocketAddr) -> Result<FloorServer, FloorError> {
        if !addr.ip().is_loopback() {
            return Err(FloorError::NotLoopback(addr));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| FloorError::Bind(addr, e))?;
        Ok(FloorServer {
            listener,
            state: Arc::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let app = Router::new()
            .route("/ws", get(upgrade))
            .route("/v1/publish", post(publish))
            .with_state(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

fn to_message(e: Encoded) -> Message {
    match e {
        Encoded::Text(t) => Message::Text(t.into()),
        Encoded::Binary(b) => Message::Binary(b.into()),
    }
}

/// `POST /v1/publish`: encode once per codec, clone to every member.
async fn publish(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<PublishRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected a publish body").into_response();
    };
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed).to_string();
    let ts = crate::wire::now_micros() / 1000;
    let frame = ServerFrame::Message(MessageFrame {
        scope: Scope::Room,
        room: req.room.as_deref(),
        event: &req.event,
        data: &req.data,
        id: &id,
        ts,
        offset: None,
        epoch: None,
    });
    let (Ok(json), Ok(msgpack)) = (Codec::Json.encode(&frame), Codec::MsgPack.encode(&frame))
    else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let encoded = [to_message(json), to_message(msgpack)];
    {
        let mut room = floor.room.lock().unwrap_or_else(|p| p.into_inner());
        room.retain(|_, m| m.tx.try_send(encoded[m.codec.index()].clone()).is_ok());
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(PublishResponse {
            id,
            offset: None,
            epoch: None,
        }),
    )
        .into_response()
}

/// `GET /ws`: the upgrade, done by hand so the socket gets our buffer sizes.
async fn upgrade(State(floor): State<Arc<Floor>>, mut req: Request) -> Response {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let codec = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(Codec::from_subprotocol);
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return (StatusCode::BAD_REQUEST, "connection cannot be upgraded").into_response();
    };
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(session::run(
        floor,
        on_upgrade,
        id,
        codec.unwrap_or(Codec::Json),
    ));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(c) = codec {
        resp = resp.header(SEC_WEBSOCKET_PROTOCOL, c.subprotocol());
    }
    resp.body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
