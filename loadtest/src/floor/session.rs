//! One floor socket: `welcome`, then one loop over its queue (feed every
//! queued frame, one flush) and its reads (`subscribe` joins the room,
//! everything else is acknowledged) — the node's session shape, minus
//! auth, limits and timers.

use std::sync::Arc;

use fanout_protocol::{ClientFrame, Codec, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{Floor, Member, QUEUE_FRAMES, to_message};

/// The read buffer the node gave tungstenite before it wrapped its sockets
/// (issue 15, `session::lean_io`): the floor stays the plain library, with
/// the smallest buffers it was measured with.
const READ_BUFFER_BYTES: usize = 1024;
/// The write buffer the node gave tungstenite before it batched writes itself.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// The node's default frame limit.
const MAX_FRAME_BYTES: usize = 64 * 1024;

fn config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = READ_BUFFER_BYTES;
    c.write_buffer_size = WRITE_BUFFER_BYTES;
    c.max_message_size = Some(MAX_FRAME_BYTES);
    c.max_frame_size = Some(MAX_FRAME_BYTES);
    c
}

fn encode(codec: Codec, frame: &ServerFrame<'_>) -> Option<Message> {
    codec.encode(frame).ok().map(to_message)
}

/// Runs one upgraded socket until it closes.
pub(super) async fn run(floor: Arc<Floor>, on_upgrade: OnUpgrade, socket: u64, codec: Codec) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
            .await;
    let conn = socket.to_string();
    let welcome = ServerFrame::Welcome {
        conn: &conn,
        node: "floor",
        tenant: "floor",
        user: "floor",
        ping_interval: 0,
    };
    let Some(welcome) = encode(codec, &welcome) else {
        return;
    };
    if ws.send(welcome).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE_FRAMES);
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            queued = rx.recv() => {
                let Some(first) = queued else { break };
                if ws.feed(first).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if ws.feed(more).await.is_err() {
                        break;
                    }
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
            read = ws.next() => {
                let bytes = match read {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let reply = match codec.decode(&bytes) {
                    Ok(ClientFrame::Subscribe { id, .. }) => {
                        if let Some(tx) = tx.take() {
                            floor
                                .room
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(socket, Member { tx, codec });
                        }
                        ServerFrame::ack(id)
                    }
                    Ok(ClientFrame::Ping { id }) => ServerFrame::Pong { id },
                    Ok(ClientFrame::Auth { .. }) => continue,
                    Ok(ClientFrame::Unsubscribe { id, .. }
                    | ClientFrame::Publish { id, .. }
                    | ClientFrame::Presence { id, .. }
                    | ClientFrame::History { id, .. }
                    | ClientFrame::Refresh { id, .. }) => ServerFrame::ack(id),
                    Err(_) => continue,
                };
                let Some(reply) = encode(codec, &reply) else { break };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        }
    }
    floor
        .room
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&socket);
}
