//! A TCP proxy between one node and Redis, so that the chaos suite can
//! break the network under a node without touching either process.
//!
//! Every connection accepted on the proxy's loopback port is paired with a
//! new connection to Redis and bytes are pumped both ways. Two faults:
//!
//! - [`Proxy::stall`]: for a while no byte moves in either direction, on
//!   open connections and on connections opened meanwhile (they reach
//!   Redis once the stall ends) — a network that stops delivering without
//!   closing anything, as a congested link or a partition does;
//! - [`Proxy::cut`]: every open connection is reset (RST on both sides), as
//!   a NAT or a firewall dropping its state does. New connections work at
//!   once.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// How long the proxy waits for Redis to accept a connection.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(1);
/// Bytes moved per read.
const CHUNK: usize = 16 * 1024;

struct Shared {
    upstream: u16,
    /// No byte moves before this instant.
    stalled_until: Mutex<Option<Instant>>,
    /// Bumped by every cut; each connection watches it.
    cuts: watch::Sender<u64>,
    stop: CancellationToken,
}

impl Shared {
    async fn wait_unstalled(&self) {
        loop {
            let until = *self
                .stalled_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match until {
                Some(t) if t > Instant::now() => sleep_until(t).await,
                _ => return,
            }
        }
    }
}

/// A proxy on 127.0.0.1:<free port> to Redis on 127.0.0.1:`upstream`;
/// stops (and drops every connection) on drop.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream,
            stalled_until: Mutex::new(None),
            cuts: watch::channel(0).0,
            stop: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Self { port, shared }
    }

    /// `redis://127.0.0.1:<proxy port>`: what the node is configured with.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Nothing moves for `d` from now (a later stall extends an earlier one).
    pub fn stall(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut stalled = self
            .shared
            .stalled_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stalled = Some(stalled.map_or(until, |t| t.max(until)));
    }

    /// Resets every open connection.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((inbound, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(serve(inbound, shared.clone()));
    }
}

/// Pairs one inbound connection with one to Redis and pumps both ways
/// until either side closes, a cut, or the proxy stops.
async fn serve(inbound: TcpStream, shared: Arc<Shared>) {
    let mut cuts = shared.cuts.subscribe();
    cuts.mark_unchanged();
    // A stalled network does not carry the handshake either.
    tokio::select! {
        () = shared.wait_unstalled() => {}
        () = shared.stop.cancelled() => return,
        _ = cuts.changed() => { reset(&inbound); return; }
    }
    let upstream = match tokio::time::timeout(
        UPSTREAM_CONNECT,
        TcpStream::connect(("127.0.0.1", shared.upstream)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        // Redis is down: the node sees its connection refused, as it would.
        _ => {
            reset(&inbound);
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let cut = tokio::select! {
        _ = pump(&mut in_r, &mut up_w, &shared) => false,
        _ = pump(&mut up_r, &mut in_w, &shared) => false,
        _ = cuts.changed() => true,
        () = shared.stop.cancelled() => true,
    };
    if cut {
        reset(in_r.as_ref());
        reset(up_r.as_ref());
    }
    // Dropping the halves closes both sockets (FIN, or RST after a cut).
}

/// Makes the socket's close a reset instead of an orderly FIN.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    shared: &Shared,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        shared.wait_unstalled().await;
        to.write_all(&buf[..n]).await?;
    }
}
