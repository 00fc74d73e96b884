//! The accept loop: never a hot loop, even out of file descriptors.
//!
//! When the process runs out of descriptors, `accept` fails with `EMFILE`
//! immediately and keeps failing while the kernel's backlog holds pending
//! connections; retrying at once would spin a core. Each failure is counted
//! (`fanout_accept_errors_total{kind}`), logged, and followed by a backoff
//! that doubles from 10 ms to 1 s and resets on the next success.
//! Connections the peer reset before we accepted them are not errors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::metrics as m;

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A TCP listener with counted, backed-off accept errors and `TCP_NODELAY`.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

/// The peer address of a connection, as handlers extract it
/// (`ConnectInfo<PeerAddr>`, set by the server for every request).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// `EMFILE` (process limit) or `ENFILE` (system limit).
fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

impl Listener for GuardedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small frames should leave at once, not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return (stream, addr);
                }
                Err(e) if is_peer_gone(&e) => continue,
                Err(e) => {
                    let kind = if is_fd_exhaustion(&e) {
                        "fd_exhausted"
                    } else {
                        "other"
                    };
                    m::accept_error(kind);
                    warn!(error = %e, kind, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
