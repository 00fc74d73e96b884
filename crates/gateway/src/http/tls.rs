//! Native TLS on the main listener (rustls), for nodes without a proxy that
//! terminates TLS in front of them.
//!
//! The handshake must not run in the accept loop: one client that opens a
//! TCP connection and never sends a ClientHello would stall every accept
//! behind it. [`TlsListener`] therefore hands each accepted socket to the
//! connection task wrapped in a [`LazyTls`] stream, which performs the
//! handshake on its first read or write (inside the task that serves the
//! connection), bounded by [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::serve::Listener;
use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::listener::GuardedListener;
use crate::config::TlsConfig;

/// Longest time a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("tls.{field}: cannot read {path}: {source}")]
    Read {
        /// `cert_file` or `key_file`.
        field: &'static str,
        /// The path as configured.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("tls.{field}: {path} holds no {what} in PEM form")]
    Empty {
        /// `cert_file` or `key_file`.
        field: &'static str,
        /// The path as configured.
        path: String,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("tls: certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the acceptor from the configured PEM files.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = read_certs(config)?;
    let key = read_key(config)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // WebSockets upgrade over HTTP/1.1; the node serves nothing else.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn pem_error(
    field: &'static str,
    path: &std::path::Path,
    what: &'static str,
    e: pem::Error,
) -> TlsError {
    let path = path.display().to_string();
    match e {
        pem::Error::NoItemsFound => TlsError::Empty { field, path, what },
        pem::Error::Io(source) => TlsError::Read {
            field,
            path,
            source,
        },
        other => TlsError::Read {
            field,
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        },
    }
}

fn read_certs(config: &TlsConfig) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = &config.cert_file;
    let err = |e| pem_error("cert_file", path, "certificate", e);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(err(pem::Error::NoItemsFound));
    }
    Ok(certs)
}

fn read_key(config: &TlsConfig) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = &config.key_file;
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error("key_file", path, "private key", e))
}

/// A [`GuardedListener`] whose sockets speak TLS.
pub struct TlsListener {
    inner: GuardedListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    /// Wraps `inner`; handshakes happen in the connection tasks.
    pub fn new(inner: GuardedListener, acceptor: TlsAcceptor) -> Self {
        Self { inner, acceptor }
    }
}

impl Listener for TlsListener {
    type Io = LazyTls;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LazyTls, SocketAddr) {
        let (tcp, addr) = self.inner.accept().await;
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp));
        (LazyTls::Handshaking(Box::pin(handshake)), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

type Handshake = Pin<Box<Timeout<tokio_rustls::Accept<TcpStream>>>>;

/// A server TLS stream whose handshake runs on first use.
pub enum LazyTls {
    /// Waiting for the handshake to finish.
    Handshaking(Handshake),
    /// Ready: plaintext in, TLS records out.
    Ready(Box<TlsStream<TcpStream>>),
    /// The handshake failed or timed out; every call errors.
    Failed,
}

impl LazyTls {
    /// Drives the handshake; `Ready(Ok)` once the stream is usable.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                LazyTls::Ready(_) => return Poll::Ready(Ok(())),
                LazyTls::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "TLS handshake failed",
                    )));
                }
                LazyTls::Handshaking(handshake) => {
                    let outcome = ready!(handshake.as_mut().poll(cx));
                    match outcome {
                        Ok(Ok(stream)) => *self = LazyTls::Ready(Box::new(stream)),
                        Ok(Err(e)) => {
                            *self = LazyTls::Failed;
                            return Poll::Ready(Err(e));
                        }
                        Err(_) => {
                            *self = LazyTls::Failed;
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "TLS handshake timed out",
                            )));
                        }
                    }
                }
            }
        }
    }

    fn stream(&mut self) -> Pin<&mut TlsStream<TcpStream>> {
        match self {
            LazyTls::Ready(s) => Pin::new(s.as_mut()),
            // poll_handshake returned Ready(Ok) just before every call.
            _ => unreachable!("TLS stream used before its handshake completed"),
        }
    }
}

impl AsyncRead for LazyTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for LazyTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        this.stream().poll_shutdown(cx)
    }
}
