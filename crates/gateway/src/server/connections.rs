//! Serving HTTP/1.1 on a listener with every connection bounded in time and
//! the connections in HTTP bounded in number (`[http]`).
//!
//! A connection is "in HTTP" from its accept until it is upgraded to a
//! WebSocket or closed. While it is:
//!
//! - the request head must be complete within `http.header_read_timeout`,
//!   counted from the accept (TLS handshake included) on a new connection
//!   and from the first byte of the next request on a keep-alive one: a
//!   client that trickles header bytes (slowloris) is closed then;
//! - a keep-alive connection with no request in progress and no byte of the
//!   next one is closed after `http.keepalive_timeout`; so is one whose
//!   client stops reading a response for that long;
//! - at most `http.max_connections` connections are served normally. One
//!   accepted beyond the cap is not refused outright: it may be a
//!   WebSocket upgrade, and WebSockets must keep reaching the node while
//!   plain HTTP clients hold the cap. It is served one request, within
//!   [`OVER_CAPACITY_DEADLINE`] of its accept, and only `/ws` and the ops
//!   endpoints (`/healthz`, `/readyz`, `/metrics`); any other request
//!   answers 503 `overloaded` with `Retry-After: 1`. So HTTP holds at most
//!   the cap plus the descriptors of connections younger than that deadline.
//!
//! Upgraded connections are the sessions' business (their own auth, ping,
//! idle and write timeouts), and do not count against the cap.
//!
//! hyper's own `header_read_timeout` is not used: it runs from the end of
//! one response to the end of the next request head, so it would also
//! close every keep-alive connection idle for longer than the header
//! timeout. Instead the socket is wrapped in [`Watched`], which notes when
//! bytes move, the service notes when a request starts and ends, and the
//! connection's task closes it when the deadline of its current phase
//! passes.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::serve::Listener;
use fanout_protocol::api::{ErrorBody, ErrorResponse};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::HttpConfig;
use crate::http::listener::PeerAddr;
use crate::metrics as m;

/// A connection accepted beyond `http.max_connections` must have sent its
/// request and had its answer (or its upgrade) within this of its accept.
/// Long enough for a TLS handshake and one request over a slow mobile
/// network (a few round trips); short enough that such connections cannot
/// pile up.
const OVER_CAPACITY_DEADLINE: Duration = Duration::from_secs(2);

/// Paths served on a connection beyond the cap.
fn served_over_capacity(path: &str) -> bool {
    matches!(path, "/ws" | "/healthz" | "/readyz" | "/metrics")
}

/// Serves `router` on `listener` until `stop`, then lets the open HTTP
/// connections finish their requests (idle ones close at once) and returns.
pub(super) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpConfig,
    stop: CancellationToken,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let limits = Arc::new(limits);
    let in_cap = Arc::new(AtomicUsize::new(0));
    let tasks = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let slot = Slot::take(&in_cap, limits.max_connections);
        tasks.spawn(serve_connection(
            io,
            peer,
            router.clone(),
            limits.clone(),
            slot,
            stop.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// One of the `http.max_connections` places, held while a connection is in HTTP.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a connection is, for its deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the rest of a request head, since the accept (a new
    /// connection) or since the first byte of the request.
    Head(Instant),
    /// A request is being served: no deadline (the handlers bound their work).
    Request,
    /// Between requests on a keep-alive connection, since the last response
    /// ended or its last bytes were written.
    Idle(Instant),
}

/// Why a connection was closed by the node.
#[derive(Debug, Clone, Copy)]
enum Limit {
    HeaderTimeout,
    IdleTimeout,
    OverCapacity,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::HeaderTimeout => "header_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::OverCapacity => "max_connections",
        }
    }
}

/// A connection's phase, shared by its socket wrapper, its service and its task.
struct ConnState {
    phase: Mutex<Phase>,
    /// Set when the connection is upgraded: the socket wrapper lets go of
    /// this state and only passes bytes on from then on.
    upgraded: AtomicBool,
}

impl ConnState {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_some(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
        }
    }

    fn wrote_some(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Idle(Instant::now());
        }
    }

    fn request_started(&self) {
        *self.phase() = Phase::Request;
    }

    fn request_ended(&self, upgraded: bool) {
        *self.phase() = Phase::Idle(Instant::now());
        if upgraded {
            self.upgraded.store(true, Ordering::Release);
        }
    }

    /// The next deadline, and the limit that sets it.
    fn deadline(&self, limits: &HttpConfig) -> Option<(Instant, Limit)> {
        match *self.phase() {
            Phase::Head(since) => Some((since + limits.header_read_timeout, Limit::HeaderTimeout)),
            Phase::Idle(since) => Some((since + limits.keepalive_timeout, Limit::IdleTimeout)),
            Phase::Request => None,
        }
    }
}

/// Serves one connection until it closes, is upgraded, or overruns a deadline.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    limits: Arc<HttpConfig>,
    slot: Option<Slot>,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Instant::now();
    let over_capacity = slot.is_none();
    let state = Arc::new(ConnState {
        phase: Mutex::new(Phase::Head(accepted)),
        upgraded: AtomicBool::new(false),
    });
    m::http_connection_opened();
    let router = TowerToHyperService::new(router);
    let service_state = state.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        service_state.request_started();
        let state = service_state.clone();
        let call = if over_capacity && !served_over_capacity(req.uri().path()) {
            None
        } else {
            req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
            Some(router.call(req))
        };
        async move {
            let mut response = match call {
                Some(call) => match call.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                None => {
                    m::http_limited(Limit::OverCapacity.label());
                    over_capacity_response()
                }
            };
            let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            if over_capacity && !upgraded {
                // One request only; hyper closes the connection after this
                // answer. (Not `keep_alive(false)` on the connection: that
                // would also replace the `Connection: upgrade` of a 101.)
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            state.request_ended(upgraded);
            Ok::<_, Infallible>(response)
        }
    });
    let builder = http1::Builder::new();
    let io = TokioIo::new(Watched {
        io,
        state: Some(state.clone()),
    });
    let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
    let mut stopped = pin!(stop.cancelled_owned());
    let mut shutting_down = false;
    let mut timer = pin!(tokio::time::sleep_until(accepted));
    let outcome = poll_fn(|cx| {
        if !shutting_down && stopped.as_mut().poll(cx).is_ready() {
            // Idle connections close at once; a request in progress finishes.
            conn.as_mut().graceful_shutdown();
            shutting_down = true;
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(Closed::Hyper));
        }
        // The phase only changes while `conn` is polled (its socket and its
        // service run in this task), so the deadline is current here.
        let mut deadline = state.deadline(&limits);
        if over_capacity {
            let cap = (accepted + OVER_CAPACITY_DEADLINE, Limit::OverCapacity);
            deadline = Some(deadline.map_or(cap, |d| std::cmp::min_by_key(d, cap, |d| d.0)));
        }
        let Some((when, limit)) = deadline else {
            return Poll::Pending;
        };
        if timer.deadline() != when {
            timer.as_mut().reset(when);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Closed::Limit(limit))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match outcome {
        Ok(()) => {}
        Err(Closed::Hyper(e)) => debug!(error = %e, %peer, "HTTP connection ended with an error"),
        Err(Closed::Limit(limit)) => {
            // Returning drops `conn`, which closes the socket.
            m::http_limited(limit.label());
            debug!(%peer, limit = limit.label(), "HTTP connection closed by a limit");
        }
    }
    m::http_connection_closed();
    drop(slot);
}

/// Why [`serve_connection`] stopped serving a connection early.
enum Closed {
    Hyper(hyper::Error),
    Limit(Limit),
}

/// 503 for a request other than `/ws` and the ops endpoints on a connection
/// beyond the cap.
fn over_capacity_response() -> Response<Body> {
    let body = ErrorResponse {
        error: ErrorBody {
            code: "overloaded".into(),
            message: "too many HTTP connections to this node; retry".into(),
        },
        ids: None,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Body::from(json));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A socket that tells its connection's state when bytes move, until the
/// connection is upgraded; then it only passes bytes on.
struct Watched<I> {
    io: I,
    state: Option<Arc<ConnState>>,
}

impl<I> Watched<I> {
    fn note(&mut self, read: bool) {
        let Some(state) = &self.state else { return };
        if state.upgraded.load(Ordering::Acquire) {
            // A WebSocket now: nothing to watch, and no state to keep alive.
            self.state = None;
        } else if read {
            state.read_some();
        } else {
            state.wrote_some();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.note(true);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.note(false);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.note(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
