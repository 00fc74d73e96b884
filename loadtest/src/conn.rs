//! One client connection: open it (bound source address, upgrade, auth,
//! welcome, subscribes), then run it until told to stop or closed.
//!
//! A connection is one task from its first SYN to its close, with one
//! `select!` over the socket, the stop signal and an optional ping timer —
//! the same shape as a node's session, and for the same reason: reading
//! continuously is what answers the server's WebSocket pings (tungstenite
//! writes the pongs during reads) and what measures delivery latency.
//!
//! A client that reconnects keeps what it knows across its connections in a
//! [`Track`]: the accounting of its streams (so a message received once
//! before leaving and once in the replay is a duplicate, and one missed
//! while away is a loss) and the last position it saw in its room, which
//! its next subscribe sends as `since`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::{Codec, StreamPosition};
use futures_util::{SinkExt, StreamExt};
use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::IpBindAddressNoPort;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::AuthMode;
use crate::tally::{Expect, Streams, Tally};
use crate::target::Target;
use crate::wire::{self, Epoch, Incoming};

/// Read buffer per client socket: 4 KiB (clients receive the bulk of the
/// traffic), so that 20,000 client sockets cost 80 MB instead of the 2.5 GB
/// of tungstenite's default.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Write buffer threshold per client socket (client frames are tiny).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Time a stopping connection gives its close handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Everything needed to open one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnSpec {
    /// Index in the run (over all processes); shards the latency histograms.
    pub(crate) index: usize,
    /// The node to connect to.
    pub(crate) target: Arc<Target>,
    /// Source address of the socket.
    pub(crate) bind: IpAddr,
    /// Codec of the connection.
    pub(crate) codec: Codec,
    /// Where the token goes.
    pub(crate) auth: AuthMode,
    /// The token.
    pub(crate) token: String,
    /// Rooms to subscribe to before the connection counts as ready.
    pub(crate) rooms: Vec<String>,
    /// Position to resume from (`since` of every subscribe): set only by a
    /// reconnecting client, whose spec has one room.
    pub(crate) since: Option<StreamPosition>,
    /// Which streams it should receive.
    pub(crate) expect: Expect,
    /// Bound on connect + upgrade + welcome + subscribes.
    pub(crate) timeout: Duration,
}

/// Why a connection could not be opened; the `Display` text is what the
/// report counts, so it carries no addresses or ports.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Socket, bind or TCP connect failed.
    #[error("tcp connect: {0}")]
    Connect(std::io::ErrorKind),
    /// The WebSocket upgrade failed.
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// The server closed during the handshake (e.g. 4001, 4003, 1013).
    #[error("closed by server during setup: {0}")]
    Closed(u16),
    /// The server answered a subscribe with an error frame.
    #[error("subscribe refused: {0}")]
    Refused(u16),
    /// The socket ended or broke during setup.
    #[error("connection lost during setup")]
    Lost,
    /// A frame that should not come during setup, or could not be decoded.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Setup took longer than --connect-timeout.
    #[error("timed out")]
    Timeout,
}

/// How a running connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnEnd {
    /// We stopped it.
    Stopped,
    /// The server closed it, with this close code (0 when none was sent).
    ClosedByServer(u16),
    /// The socket broke.
    Broken,
    /// It never opened (counted by the pool as a connect failure).
    NeverOpened,
}

/// An open, subscribed connection.
pub(crate) struct Conn {
    ws: WebSocketStream<TcpStream>,
    codec: Codec,
    index: usize,
    expect: Expect,
    joined: Joined,
}

/// What the `ack` of a connection's first subscribe said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Joined {
    /// The room's position (rooms with history only): live messages start
    /// after it.
    pub(crate) position: Option<StreamPosition>,
    /// With `since`: whether every missed message follows the ack.
    pub(crate) recovered: Option<bool>,
}

/// What a client carries from one connection to the next.
#[derive(Debug)]
pub(crate) struct Track {
    /// Per-stream accounting, shared by all of the client's connections.
    streams: Streams,
    /// The last position seen in the room (from an `ack`, then from every
    /// message): the `since` of the next subscribe.
    pub(crate) position: Option<StreamPosition>,
    /// After a recovered `ack`: messages up to this offset are the replay.
    replay_to: u64,
    /// Messages that arrived as replay.
    pub(crate) replayed: u64,
}

impl Track {
    /// A client that has seen nothing yet.
    pub(crate) fn new(expect: Expect) -> Track {
        Track {
            streams: Streams::new(expect),
            position: None,
            replay_to: 0,
            replayed: 0,
        }
    }

    /// Takes in the `ack` of a (re)subscribe: where the room stands, and,
    /// recovered, which offsets are the replay. A client that was not
    /// recovered continues from the room's current position.
    pub(crate) fn joined(&mut self, joined: &Joined) {
        let Some(ack) = &joined.position else { return };
        if joined.recovered == Some(true) {
            self.replay_to = ack.offset;
        } else {
            self.replay_to = 0;
            self.position = Some(ack.clone());
        }
    }

    /// Notes the position of a message.
    fn saw(&mut self, offset: u64, epoch: &Epoch) {
        if offset <= self.replay_to {
            self.replayed += 1;
        }
        match &mut self.position {
            // Same stream: the furthest offset seen (never backwards).
            Some(p) if p.epoch == epoch.as_str() => p.offset = p.offset.max(offset),
            _ => {
                self.position = Some(StreamPosition {
                    offset,
                    epoch: epoch.as_str().to_owned(),
                });
            }
        }
    }
}

/// What a running connection reports into and listens to.
#[derive(Clone)]
pub(crate) struct RunCtx {
    /// Where deliveries are counted.
    pub(crate) tally: Arc<Tally>,
    /// Cancelled to close the connection.
    pub(crate) stop: CancellationToken,
    /// Application `ping` frames this often, if set.
    pub(crate) ping_every: Option<Duration>,
}

fn client_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = READ_BUFFER_BYTES;
    c.write_buffer_size = WRITE_BUFFER_BYTES;
    c
}

async fn tcp_connect(bind: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if bind.is_ipv4() {
        // Without this, `bind` to port 0 reserves an ephemeral port by
        // scanning the ports in use: O(sockets) per connect, which made
        // opening 10k connections cost the generator tens of CPU-seconds in
        // the kernel. With it the port is chosen at `connect`, by 4-tuple.
        setsockopt(&socket, IpBindAddressNoPort, &true).map_err(std::io::Error::from)?;
    }
    socket.bind(SocketAddr::new(bind, 0))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Conn {
    /// Opens, authenticates and subscribes, within `spec.timeout`.
    pub(crate) async fn open(spec: &ConnSpec) -> Result<Conn, OpenError> {
        tokio::time::timeout(spec.timeout, Self::open_inner(spec))
            .await
            .map_err(|_| OpenError::Timeout)?
    }

    async fn open_inner(spec: &ConnSpec) -> Result<Conn, OpenError> {
        let stream = tcp_connect(spec.bind, spec.target.addr)
            .await
            .map_err(|e| OpenError::Connect(e.kind()))?;
        let mut request = spec
            .target
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| OpenError::Upgrade(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(spec.codec.subprotocol()),
        );
        if spec.auth == AuthMode::Header {
            let bearer = HeaderValue::from_str(&format!("Bearer {}", spec.token))
                .map_err(|e| OpenError::Upgrade(e.to_string()))?;
            headers.insert("Authorization", bearer);
        }
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
                .await
                .map_err(|e| OpenError::Upgrade(short_ws_error(&e)))?;
        let mut conn = Conn {
            ws,
            codec: spec.codec,
            index: spec.index,
            expect: spec.expect,
            joined: Joined::default(),
        };
        if spec.auth == AuthMode::Frame {
            conn.send(&json!({"type": "auth", "token": spec.token}))
                .await?;
        }
        conn.await_reply("welcome", None).await?;
        for (i, room) in spec.rooms.iter().enumerate() {
            let id = i as i64 + 1;
            let mut subscribe = json!({"type": "subscribe", "id": id, "room": room});
            if let Some(since) = &spec.since {
                subscribe["since"] = json!({"offset": since.offset, "epoch": since.epoch});
            }
            conn.send(&subscribe).await?;
            let ack = conn.await_reply("ack", Some(id)).await?;
            if i == 0 {
                conn.joined = Joined {
                    position: ack
                        .offset
                        .zip(ack.epoch)
                        .map(|(offset, epoch)| StreamPosition {
                            offset,
                            epoch: epoch.as_str().to_owned(),
                        }),
                    recovered: ack.recovered,
                };
            }
        }
        Ok(conn)
    }

    /// What the `ack` of the first subscribe said.
    pub(crate) fn joined(&self) -> &Joined {
        &self.joined
    }

    async fn send(&mut self, frame: &serde_json::Value) -> Result<(), OpenError> {
        let msg =
            wire::encode(self.codec, frame).map_err(|e| OpenError::Protocol(e.to_string()))?;
        self.ws.send(msg).await.map_err(|_| OpenError::Lost)
    }

    /// Reads until the frame of type `kind` (with request id `id`, if given).
    async fn await_reply(&mut self, kind: &str, id: Option<i64>) -> Result<Incoming, OpenError> {
        loop {
            let msg = match self.ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => return Err(OpenError::Lost),
            };
            if let Message::Close(frame) = &msg {
                return Err(OpenError::Closed(
                    frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(0),
                ));
            }
            let Some(frame) = wire::decode(&msg).map_err(|e| OpenError::Protocol(e.to_string()))?
            else {
                continue;
            };
            if frame.kind == "error" && (id.is_none() || frame.id == id) {
                return Err(OpenError::Refused(frame.code.unwrap_or(0)));
            }
            if frame.kind == kind && (id.is_none() || frame.id == id) {
                return Ok(frame);
            }
            if frame.kind != "message" {
                return Err(OpenError::Protocol(format!(
                    "expected {kind}, got {}: {}",
                    frame.kind,
                    frame.message.unwrap_or_default()
                )));
            }
        }
    }

    /// Reads and accounts frames until `ctx.stop` or the server ends the connection.
    pub(crate) async fn run(self, ctx: RunCtx) -> ConnEnd {
        let mut track = Track::new(self.expect);
        self.run_tracked(ctx, &mut track).await
    }

    /// [`Conn::run`] for a client that reconnects: accounts into `track`,
    /// which outlives the connection.
    pub(crate) async fn run_tracked(mut self, ctx: RunCtx, track: &mut Track) -> ConnEnd {
        let far = Duration::from_secs(365 * 24 * 3600);
        let every = ctx.ping_every.unwrap_or(far);
        let mut next_ping = Instant::now() + every;
        let mut ping_id: i64 = 1 << 32;
        // Both futures live across iterations: recreating them per frame
        // would register and deregister a waiter on the stop token (one
        // mutex shared by every connection) and a timer for every message,
        // which at 10k connections made the generator, not the server, the
        // bottleneck.
        let stopped = ctx.stop.cancelled();
        let ping = tokio::time::sleep_until(next_ping);
        tokio::pin!(stopped, ping);
        loop {
            tokio::select! {
                () = &mut stopped => {
                    let _ = tokio::time::timeout(CLOSE_WAIT, self.ws.close(None)).await;
                    return ConnEnd::Stopped;
                }
                () = &mut ping => {
                    next_ping += every;
                    ping.as_mut().reset(next_ping);
                    ping_id += 1;
                    let frame = json!({"type": "ping", "id": ping_id});
                    if self.send(&frame).await.is_err() {
                        return ConnEnd::Broken;
                    }
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Close(frame))) => {
                        return ConnEnd::ClosedByServer(
                            frame.map(|f| u16::from(f.code)).unwrap_or(0),
                        );
                    }
                    Some(Ok(msg)) => self.account(&msg, track, &ctx.tally),
                    Some(Err(_)) | None => return ConnEnd::Broken,
                },
            }
        }
    }

    fn account(&self, msg: &Message, track: &mut Track, tally: &Tally) {
        match wire::decode(msg) {
            Ok(Some(Incoming {
                kind,
                data: Some(probe),
                offset,
                epoch,
                ..
            })) if kind == "message" => {
                let now = wire::now_micros();
                if let (Some(offset), Some(epoch)) = (offset, &epoch) {
                    track.saw(offset, epoch);
                }
                let arrival = track.streams.observe(&probe);
                tally.record(self.index, arrival, &probe, now);
            }
            // Pongs and acks of our own pings; control frames.
            Ok(Some(Incoming { kind, .. })) if kind == "pong" || kind == "ack" => {}
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => tally.record_unexpected(),
        }
    }
}

/// A tungstenite error without addresses, for counting.
fn short_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => format!("HTTP {}", resp.status().as_u16()),
        Error::Io(io) => io.kind().to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Arrival;
    use crate::wire::Probe;

    fn pos(offset: u64, epoch: &str) -> Option<StreamPosition> {
        Some(StreamPosition {
            offset,
            epoch: epoch.into(),
        })
    }

    #[test]
    fn a_track_resumes_from_the_last_position_and_counts_the_replay() {
        let mut t = Track::new(Expect::All);
        let abc = Epoch::new("abc").unwrap();
        // First subscribe: the room stands at 4; live messages follow.
        t.joined(&Joined {
            position: pos(4, "abc"),
            recovered: None,
        });
        assert_eq!(t.position, pos(4, "abc"));
        t.saw(5, &abc);
        t.saw(6, &abc);
        assert_eq!(t.position, pos(6, "abc"));
        // Back with since 6 and recovered while the room is at 9: 7 to 9
        // are the replay, and the position moves only as they arrive.
        t.joined(&Joined {
            position: pos(9, "abc"),
            recovered: Some(true),
        });
        assert_eq!(t.position, pos(6, "abc"));
        for offset in 7..=10 {
            t.saw(offset, &abc);
        }
        assert_eq!((t.replayed, t.position.clone()), (3, pos(10, "abc")));
        // Not recovered (a new epoch): go on from where the room stands.
        t.joined(&Joined {
            position: pos(2, "xyz"),
            recovered: Some(false),
        });
        assert_eq!(t.position, pos(2, "xyz"));
        t.saw(3, &Epoch::new("xyz").unwrap());
        assert_eq!((t.replayed, t.position.clone()), (3, pos(3, "xyz")));
    }

    #[test]
    fn a_message_seen_before_leaving_and_again_in_the_replay_is_a_duplicate() {
        let mut t = Track::new(Expect::All);
        let p = |q| Probe { s: 1, q, t: 0 };
        assert_eq!(t.streams.observe(&p(0)), Some(Arrival::New));
        assert_eq!(t.streams.observe(&p(1)), Some(Arrival::New));
        // The next connection of the same client replays 1, then 2 is new.
        assert_eq!(t.streams.observe(&p(1)), Some(Arrival::Duplicate));
        assert_eq!(t.streams.observe(&p(2)), Some(Arrival::New));
    }
}
