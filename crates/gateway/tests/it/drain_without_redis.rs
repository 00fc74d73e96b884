//! Issue 14, item 4: **a drain does not depend on Redis**.
//!
//! Run them by name (each opens several thousand connections, ~20 s; they
//! take turns):
//!
//! ```sh
//! cargo test -p fanout-gateway --test it drain_without_redis -- --nocapture
//! ```
//!
//! A real `fanout` process (node A) holds `CONNS` WebSocket connections of
//! `USERS` users, subscribed to shared rooms (a third of them to three
//! rooms, a quarter with presence events); one in `ACTIVE_EVERY` keeps
//! switching rooms (one subscribe or unsubscribe at a time), the others are
//! idle. Node B, idle, shares the Redis. Just before A gets SIGTERM, Redis
//! is SIGKILLed (after a `SAVE`, so that it comes back with what it held:
//! the connections break at once) or, in the second test, SIGSTOPped (the
//! connections stay up and nothing answers: a hung Redis or a partition).
//! Asserted, each counted over every client and reported together:
//!
//! 1. every client receives a close frame with code 1012 no later than
//!    `readiness_delay + drain_window + CLOSE_MARGIN` after the signal
//!    (counted: 1012 in time / 1012 late / another code / no close frame);
//! 2. the node also *ends* every connection by then (+ its own close
//!    linger): a client that waits for the TCP close after the close
//!    handshake (Node's `ws` emits `close` only then, or after its 30 s close
//!    timeout) must not learn of the 1012 only when the process exits at the
//!    grace deadline, all at the same instant, which defeats the spread over
//!    the window;
//! 3. A exits within `shutdown.grace` (+ `EXIT_MARGIN` for process exit);
//! 4. once Redis is back with the data it had, nothing in it names A after
//!    B's sweeper ran (2 TTLs after A's heartbeat lapsed), none of A's users
//!    is present in A's rooms, and a user who had `max_connections_per_user`
//!    connections on A can open as many on B (nothing of A counts any more).
//!
//! Before the drain work of issue 14 (cc9fbad) both FAIL on 1 and 2: a
//! session released its connection by awaiting one registry call per room,
//! the registry actor ran one batch per `redis.command_timeout` while Redis
//! did not answer, and the session held its socket (and, when a request of
//! its client was in flight, its close frame) until those calls returned.
//! With the releases detached and the actor failing fast while Redis is
//! disconnected (87cc4c1), the killed case passes and the frozen one still
//! fails on 1: a session whose client has a subscribe or unsubscribe in
//! flight sends nothing until that registry call returns, and with a hung
//! Redis it waits a command timeout per batch ahead of it.
//!
//! The report prints, for idle and room-switching clients apart, when the
//! close frames came and when the connections ended, and A's warnings. Set
//! `DRAIN_WITHOUT_REDIS_LOG` (a `tracing` filter, e.g.
//! `info,fanout_gateway=debug`) to run A with more logging; A's log is
//! copied to `target/tmp/drain_without_redis-<fault>-a.log`.
//!
//! All addresses are loopback; every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fanout_protocol::Codec;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::cluster_support::{
    ClusterNode, HEARTBEAT, ProcessNode, READY_WAIT, any_room, redis_toml,
};
use crate::redis_support::{RedisServer, eventually, signal};
use crate::support::Event;

/// Connections held by the draining node.
const CONNS: usize = 4_000;
/// Users they belong to (`CONNS / USERS` connections each).
const USERS: usize = 400;
/// `limits.max_connections_per_user` of both nodes: exactly what each user
/// holds on A, so that one stray count of A refuses a connection on B.
const PER_USER: usize = CONNS / USERS;
/// Every `ACTIVE_EVERY`-th connection keeps switching rooms (subscribes to
/// and unsubscribes from a room of its own, one request at a time, each
/// after the previous one's reply and a pause), as a client navigating an
/// app does; the others are idle.
const ACTIVE_EVERY: usize = 40;
/// Pause between an active client's reply and its next request.
const TOGGLE_PAUSE: Duration = Duration::from_millis(100);
/// Most requests one active client sends (bounds the loop).
const MAX_TOGGLES: u32 = 400;
/// How long the server lingers for the client's close (`CLOSE_LINGER` in
/// session.rs): after it, a closed session drops its socket.
const SERVER_LINGER: Duration = Duration::from_secs(1);
/// Connections opened concurrently during the setup.
const OPENERS: usize = 48;
/// Longest time one connection may take to be welcomed and subscribed.
const OPEN_WAIT: Duration = Duration::from_secs(60);
/// Longest time the whole setup may take.
const SETUP_WAIT: Duration = Duration::from_secs(180);

const GRACE: Duration = Duration::from_secs(6);
const READINESS_DELAY: Duration = Duration::from_millis(500);
const DRAIN_WINDOW: Duration = Duration::from_secs(2);
/// Slack on top of `readiness_delay + drain_window` for a close frame to
/// arrive (scheduling on a shared 2-core machine, a debug build).
const CLOSE_MARGIN: Duration = Duration::from_millis(1500);
/// Slack on top of `grace` for the process to exit and be reaped.
const EXIT_MARGIN: Duration = Duration::from_millis(1500);
/// Clients still open this long after the node exited are counted as such.
const AFTER_EXIT: Duration = Duration::from_secs(3);

const PREFIX: &str = "fanout-drain-noredis";
const TENANT: &str = "acme";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The rooms of connection `i` (room, presence events): everyone is in one
/// of 250 rooms of 16; every third connection also in one of 40 rooms of
/// ~33 and one of 5 rooms of ~267; every fourth watches presence.
fn rooms_of(i: usize) -> Vec<(String, bool)> {
    let mut rooms = vec![(format!("r{}", i % 250), i.is_multiple_of(4))];
    if i.is_multiple_of(3) {
        rooms.push((format!("s{}", i % 40), false));
        rooms.push((format!("t{}", i % 5), i.is_multiple_of(12)));
    }
    rooms
}

async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| format!("bad json: {e}"));
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed during setup: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read failed during setup: {e}")),
            None => return Err("connection ended during setup".into()),
        }
    }
}

/// Connects with a header token, waits for `welcome`, subscribes to
/// `rooms` and waits for every ack.
async fn open(addr: SocketAddr, token: &str, rooms: &[(String, bool)]) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().map_err(|_| "header")?,
    );
    // Small buffers: thousands of these live in the test process.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4 * 1024;
    config.write_buffer_size = 0;
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        return Err(format!("expected welcome, got {welcome}"));
    }
    for (id, (room, presence)) in rooms.iter().enumerate() {
        let frame = json!({"type": "subscribe", "id": id + 1, "room": room,
            "presence_events": presence});
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let mut acked = 0;
    while acked < rooms.len() {
        let v = next_json(&mut ws).await?;
        match v["type"].as_str() {
            Some("ack") => acked += 1,
            Some("error") => return Err(format!("subscribe refused: {v}")),
            _ => {} // join events of presence watchers
        }
    }
    Ok(ws)
}

/// What one client saw.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// An active client (switching rooms).
    active: bool,
    /// Code of the server's close frame and when it arrived.
    close: Option<(u16, Instant)>,
    /// When the connection ended (the server closed or reset TCP).
    ended: Option<Instant>,
    /// The end was an error (a reset) rather than an orderly end.
    reset: bool,
    /// Active: when the request still unanswered at the end (or at the
    /// close frame) was sent.
    pending_since: Option<Instant>,
    /// Active: requests answered with an error frame.
    refused: u32,
    /// Active: the longest wait for a reply, and when that request was sent.
    slowest: Option<(Duration, Instant)>,
}

/// Reads until the connection ends or `stop`, answering the server's close
/// (tungstenite does) and reading on, as a well-behaved client does. An
/// active client (`toggle` = its own room) meanwhile subscribes to and
/// unsubscribes from that room, one request at a time.
async fn watch(mut ws: Ws, toggle: Option<String>, stop: CancellationToken) -> Seen {
    let mut seen = Seen {
        active: toggle.is_some(),
        ..Seen::default()
    };
    let mut next_request = Instant::now() + TOGGLE_PAUSE;
    let mut pending: Option<(i64, Instant)> = None;
    let mut subscribed = false;
    let mut sent = 0u32;
    let mut id = 1_000i64;
    loop {
        let may_send =
            toggle.is_some() && pending.is_none() && seen.close.is_none() && sent < MAX_TOGGLES;
        let due = async {
            if may_send {
                tokio::time::sleep_until(next_request).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let next = tokio::select! {
            () = stop.cancelled() => break,
            () = due => {
                id += 1;
                sent += 1;
                let room = toggle.as_deref().unwrap_or_default();
                let kind = if subscribed { "unsubscribe" } else { "subscribe" };
                let frame = json!({"type": kind, "id": id, "room": room});
                pending = Some((id, Instant::now()));
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    // The connection is going; the read below tells how.
                    pending = None;
                }
                continue;
            }
            next = ws.next() => next,
        };
        match next {
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                seen.close.get_or_insert((code, Instant::now()));
                seen.pending_since = pending.map(|(_, at)| at);
            }
            Some(Ok(Message::Text(t))) if pending.is_some() => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                let Some((want, at)) = pending else { continue };
                if v["id"] != want {
                    continue; // a presence event
                }
                let waited = at.elapsed();
                if seen.slowest.is_none_or(|(w, _)| waited > w) {
                    seen.slowest = Some((waited, at));
                }
                match v["type"].as_str() {
                    Some("ack") => subscribed = !subscribed,
                    _ => seen.refused += 1,
                }
                pending = None;
                next_request = Instant::now() + TOGGLE_PAUSE;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                use tokio_tungstenite::tungstenite::Error;
                seen.ended = Some(Instant::now());
                seen.reset = !matches!(e, Error::ConnectionClosed | Error::AlreadyClosed);
                break;
            }
            None => {
                seen.ended = Some(Instant::now());
                break;
            }
        }
    }
    if seen.close.is_none() {
        seen.pending_since = pending.map(|(_, at)| at);
    }
    seen
}

/// Milliseconds from `t0` to `t`.
fn ms(t0: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(t0).as_millis() as u64
}

/// "p0 p50 p90 p99 max" of `v` (ms), or "-" when empty.
fn spread(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min={} p50={} p90={} p99={} max={} (ms after SIGTERM)",
        v.len(),
        v[0],
        at(0.5),
        at(0.9),
        at(0.99),
        v[v.len() - 1]
    )
}

/// Counts per 500 ms bucket after the signal, "0.5s:12 1.0s:40 …".
fn histogram(v: &[u64]) -> String {
    let mut buckets = std::collections::BTreeMap::<u64, usize>::new();
    for t in v {
        *buckets.entry(t / 500).or_default() += 1;
    }
    buckets
        .iter()
        .map(|(b, n)| format!("<{:.1}s:{n}", (b + 1) as f64 / 2.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `s` without ANSI colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of the node's log worth reading in the report (warnings and the
/// drain's own lines), at most `max`, with a count per warning text.
fn notable_log_lines(node: &ProcessNode, max: usize) -> String {
    let text = strip_ansi(&std::fs::read_to_string(node.log_path()).unwrap_or_default());
    let mut lines = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for l in text.lines() {
        let warn = l.contains(" WARN ") || l.contains(" ERROR ");
        let drain = l.contains(" INFO ")
            && (l.contains("drain") || l.contains("stopped") || l.contains("shutdown"));
        if !(warn || drain) {
            continue;
        }
        if warn {
            // The message, without the timestamp and fields.
            let msg = l.split(": ").nth(1).unwrap_or(l);
            let msg = msg.split(" error=").next().unwrap_or(msg);
            let msg = msg.split(" took_ms=").next().unwrap_or(msg);
            let n = counts.entry(msg.to_owned()).or_default();
            *n += 1;
            if *n > 3 {
                continue;
            }
        }
        lines.push(l.to_owned());
    }
    let skipped = lines.len().saturating_sub(max);
    let mut out = lines[..lines.len().min(max)].join("\n");
    if skipped > 0 {
        out.push_str(&format!("\n… {skipped} more"));
    }
    out.push_str("\nwarnings by message:");
    for (msg, n) in counts {
        out.push_str(&format!("\n  {n} × {msg}"));
    }
    out
}

/// Every key under [`PREFIX`] that names `node` in its name or its
/// content (hash fields `node` / `node|user`, set and sorted-set members).
async fn traces_of(redis: &RedisServer, node: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in redis.command(&["KEYS", &format!("{PREFIX}:*")]).await {
        if key.contains(node) {
            found.push(format!("key {key}"));
            continue;
        }
        let kind = redis.command(&["TYPE", &key]).await;
        let items = match kind.first().map(String::as_str) {
            Some("hash") => redis.command(&["HKEYS", &key]).await,
            Some("zset") => redis.command(&["ZRANGE", &key, "0", "-1"]).await,
            Some("set") => redis.command(&["SMEMBERS", &key]).await,
            _ => Vec::new(),
        };
        for item in items {
            if item == node || item.starts_with(&format!("{node}|")) {
                found.push(format!("{key} ∋ {item}"));
            }
        }
    }
    found
}

/// Counts of what a group of clients saw.
#[derive(Debug, Default)]
struct Tally {
    clients: usize,
    close_in_time: usize,
    close_late: usize,
    other_codes: std::collections::BTreeMap<u16, usize>,
    no_close: usize,
    end_in_time: usize,
    end_late: usize,
    /// When the late ends came (ms after the signal).
    end_late_ms: Vec<u64>,
    still_open: usize,
    resets: usize,
    close_ms: Vec<u64>,
    end_ms: Vec<u64>,
    end_after_close_ms: Vec<u64>,
}

impl Tally {
    fn add(&mut self, s: &Seen, t0: Instant, close_by: Duration, end_by: Duration) {
        self.clients += 1;
        match s.close {
            Some((1012, at)) if at.duration_since(t0) <= close_by => self.close_in_time += 1,
            Some((1012, _)) => self.close_late += 1,
            Some((code, _)) => *self.other_codes.entry(code).or_default() += 1,
            None => self.no_close += 1,
        }
        if let Some((_, at)) = s.close {
            self.close_ms.push(ms(t0, at));
            if let Some(end) = s.ended {
                self.end_after_close_ms.push(ms(at, end));
            }
        }
        match s.ended {
            Some(end) if end.duration_since(t0) <= end_by => self.end_in_time += 1,
            Some(end) => {
                self.end_late += 1;
                self.end_late_ms.push(ms(t0, end));
            }
            None => self.still_open += 1,
        }
        if let Some(end) = s.ended {
            self.end_ms.push(ms(t0, end));
        }
        if s.reset {
            self.resets += 1;
        }
    }

    fn report(&self, what: &str, close_by: Duration, end_by: Duration) {
        eprintln!(
            "{what}: {} clients; close frame: {} 1012 within {close_by:?}, {} 1012 later, \
             other codes {:?}, {} none; connection end: {} within {end_by:?}, {} later, \
             {} still open {AFTER_EXIT:?} after the exit ({} by reset)",
            self.clients,
            self.close_in_time,
            self.close_late,
            self.other_codes,
            self.no_close,
            self.end_in_time,
            self.end_late,
            self.still_open,
            self.resets,
        );
        eprintln!("  close frame at:   {}", spread(self.close_ms.clone()));
        eprintln!("                    {}", histogram(&self.close_ms));
        eprintln!("  TCP end at:       {}", spread(self.end_ms.clone()));
        eprintln!("                    {}", histogram(&self.end_ms));
        eprintln!(
            "  end after close:  {}",
            spread(self.end_after_close_ms.clone()).replace(" (ms after SIGTERM)", " (ms)")
        );
    }
}

/// How Redis becomes unreachable just before the SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL (after a `SAVE`): the connections break at once; it comes
    /// back with what it held when it died.
    Killed,
    /// SIGSTOP: the connections stay up and nothing answers (a hung Redis,
    /// a partition without resets); SIGCONT brings it back intact.
    Frozen,
}

/// One scenario at a time: each loads the machine on its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_without_redis_killed_closes_every_client_with_1012_within_the_window() {
    drain_without_redis(Fault::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_without_redis_frozen_closes_every_client_with_1012_within_the_window() {
    drain_without_redis(Fault::Frozen).await;
}

async fn drain_without_redis(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start().await;
    let redis_pid = redis.pid().expect("redis-server runs");
    let log = std::env::var("DRAIN_WITHOUT_REDIS_LOG").unwrap_or_else(|_| "info".into());
    let common = format!(
        "[log]\nlevel = \"{log}\"\n\n[limits]\nmax_connections_per_user = {PER_USER}\n\n{}",
        redis_toml(&redis.url(), PREFIX)
    );
    let shutdown = format!(
        "[shutdown]\ngrace = \"{}ms\"\nreadiness_delay = \"{}ms\"\ndrain_window = \"{}ms\"\n\n",
        GRACE.as_millis(),
        READINESS_DELAY.as_millis(),
        DRAIN_WINDOW.as_millis()
    );
    let mut a = ProcessNode::spawn(&format!("{shutdown}{common}")).await;
    // B only sweeps (and, at the end, admits): it holds nothing of A's.
    let b = ProcessNode::spawn(&common).await;

    // ---- setup: CONNS clients on A ----
    let tokens: Vec<String> = (0..USERS)
        .map(|u| any_room(&format!("u{u}"), TENANT).mint())
        .collect();
    let tokens = Arc::new(tokens);
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(OPENERS));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(CONNS);
    let mut clients = JoinSet::new();
    let setup_started = Instant::now();
    for i in 0..CONNS {
        let (gate, tokens, stop, opened) = (
            gate.clone(),
            tokens.clone(),
            stop.clone(),
            opened_tx.clone(),
        );
        let addr = a.addr;
        let toggle = (i % ACTIVE_EVERY == ACTIVE_EVERY / 8).then(|| format!("x{i}"));
        clients.spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore");
            let rooms = rooms_of(i);
            let token = &tokens[i % USERS];
            let ws = match timeout(OPEN_WAIT, open(addr, token, &rooms)).await {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    let _ = opened.send(Err(format!("conn {i}: {e}"))).await;
                    return None;
                }
                Err(_) => {
                    let _ = opened
                        .send(Err(format!("conn {i}: not open in {OPEN_WAIT:?}")))
                        .await;
                    return None;
                }
            };
            drop(permit);
            let _ = opened.send(Ok(())).await;
            Some(watch(ws, toggle, stop).await)
        });
    }
    drop(opened_tx);
    let mut open_count = 0;
    let mut failures = Vec::new();
    let setup_deadline = Instant::now() + SETUP_WAIT;
    while open_count + failures.len() < CONNS {
        match tokio::time::timeout_at(setup_deadline, opened_rx.recv()).await {
            Ok(Some(Ok(()))) => open_count += 1,
            Ok(Some(Err(e))) => failures.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        failures.is_empty() && open_count == CONNS,
        "setup: {open_count} of {CONNS} connections opened in {:?}; {} failed, first: {:?}\n{}",
        setup_started.elapsed(),
        failures.len(),
        failures.first(),
        a.log()
    );
    let subscriptions: usize = (0..CONNS).map(|i| rooms_of(i).len()).sum();
    eprintln!(
        "setup: {CONNS} connections ({USERS} users, {subscriptions} subscriptions, {} switching \
         rooms) open in {:?}",
        CONNS / ACTIVE_EVERY,
        setup_started.elapsed()
    );
    // Let the active clients get going, then check what A holds.
    sleep(TOGGLE_PAUSE * 3).await;
    let held = a.stats().await["node"]["connections"].clone();
    assert_eq!(held, json!(CONNS), "node A holds every connection");

    // ---- Redis dies or hangs (keeping what it held), then A gets SIGTERM ----
    match fault {
        Fault::Killed => {
            redis.command(&["SAVE"]).await;
            redis.kill().await;
        }
        Fault::Frozen => signal(redis_pid, "STOP"),
    }
    let signalled = Instant::now();
    let status = a.terminate().await;
    let exited_after = signalled.elapsed();
    eprintln!("node A exited {exited_after:?} after SIGTERM ({status})");

    // Whatever is still open a while after the exit is counted as such.
    sleep(AFTER_EXIT).await;
    stop.cancel();
    let mut seen = Vec::with_capacity(CONNS);
    while let Some(joined) = clients.join_next().await {
        if let Some(s) = joined.expect("client task") {
            seen.push(s);
        }
    }
    let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("drain_without_redis-{fault:?}-a.log").to_lowercase());
    let _ = std::fs::copy(a.log_path(), &saved);

    // ---- what the clients saw ----
    let close_by = READINESS_DELAY + DRAIN_WINDOW + CLOSE_MARGIN;
    let end_by = close_by + SERVER_LINGER;
    let (mut all, mut idle, mut active) = (Tally::default(), Tally::default(), Tally::default());
    // Active clients whose request had been waiting over a second when the
    // close frame came (or the connection ended): the session was inside a
    // registry call, not at its loop.
    let mut stuck = 0;
    let mut refused = 0;
    let mut slowest: Option<(Duration, Instant)> = None;
    for s in &seen {
        all.add(s, signalled, close_by, end_by);
        if s.active {
            active.add(s, signalled, close_by, end_by);
            refused += s.refused;
            let until = s.close.map(|(_, at)| at).or(s.ended);
            if let (Some(since), Some(until)) = (s.pending_since, until)
                && until.duration_since(since) > Duration::from_secs(1)
            {
                stuck += 1;
            }
            if let Some(w) = s.slowest
                && slowest.is_none_or(|(m, _)| w.0 > m)
            {
                slowest = Some(w);
            }
        } else {
            idle.add(s, signalled, close_by, end_by);
        }
    }
    all.report("all", close_by, end_by);
    idle.report("idle", close_by, end_by);
    active.report("switching rooms", close_by, end_by);
    eprintln!(
        "  switching rooms: {stuck} had a request waiting > 1 s when the close frame came (or \
         the connection ended); {refused} requests answered with an error; slowest reply {}",
        slowest.map_or("-".into(), |(w, at)| format!(
            "{w:?} (sent {} ms {} SIGTERM)",
            ms(signalled, at).max(ms(at, signalled)),
            if at >= signalled { "after" } else { "before" }
        )),
    );
    eprintln!(
        "node A log ({}):\n{}",
        saved.display(),
        notable_log_lines(&a, 30)
    );

    // ---- Redis comes back with what it held; B sweeps A ----
    match fault {
        Fault::Killed => redis.restart().await,
        Fault::Frozen => signal(redis_pid, "CONT"),
    }
    let b_ready = eventually(READY_WAIT, async || b.readyz().await.0 == 200).await;
    assert!(
        b_ready,
        "node B not ready after Redis came back\n{}",
        b.log()
    );
    let ttl = HEARTBEAT * 3;
    // A's heartbeat lapsed long ago: B sweeps it at its first heartbeat.
    let sweep_bound = ttl * 2 + HEARTBEAT * 10;
    let mut traces = Vec::new();
    let swept_in = Instant::now();
    let swept = eventually(sweep_bound, async || {
        traces = traces_of(&redis, &a.id).await;
        traces.is_empty()
    })
    .await;
    eprintln!(
        "after Redis came back: {} entries naming {} left after {:?}",
        traces.len(),
        a.id,
        swept_in.elapsed()
    );
    // Nobody of A's is present in its rooms any more.
    let mut present = Vec::new();
    for room in ["r0", "s0", "t0"] {
        let members = b.presence(TENANT, room).await;
        if members != json!([]) {
            present.push(format!("{room}: {members}"));
        }
    }
    // Nothing of A's counts: a user who had PER_USER connections on A gets
    // as many on B.
    let mut admitted = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..PER_USER {
        let (c, first) = b.try_connect(Codec::Json, &any_room("u0", TENANT)).await;
        match first {
            Event::Frame(v) if v["type"] == "welcome" => admitted.push(c),
            other => refusals.push(format!("{other:?}")),
        }
    }

    // ---- verdict ----
    let mut failed = Vec::new();
    if all.close_in_time != CONNS {
        failed.push(format!(
            "{} of {CONNS} clients did not get 1012 within readiness_delay + drain_window + \
             {CLOSE_MARGIN:?} = {close_by:?}: {} got it later, {:?} got another code, {} got no \
             close frame (of the {} switching rooms: {} not in time)",
            CONNS - all.close_in_time,
            all.close_late,
            all.other_codes,
            all.no_close,
            active.clients,
            active.clients - active.close_in_time,
        ));
    }
    if all.end_in_time != CONNS {
        failed.push(format!(
            "{} of {CONNS} connections were not ended by the node within {end_by:?} (the close \
             frame's bound + the server's close linger): {} ended later ({}), {} were still open \
             {AFTER_EXIT:?} after the exit",
            CONNS - all.end_in_time,
            all.end_late,
            spread(all.end_late_ms.clone()),
            all.still_open,
        ));
    }
    if !status.success() {
        failed.push(format!("node A exited with {status}, not 0"));
    }
    if exited_after > GRACE + EXIT_MARGIN {
        failed.push(format!(
            "node A exited {exited_after:?} after SIGTERM; shutdown.grace is {GRACE:?}"
        ));
    }
    if !swept {
        failed.push(format!(
            "{} entries naming {} still in Redis {sweep_bound:?} after it came back: {:?}",
            traces.len(),
            a.id,
            &traces[..traces.len().min(10)]
        ));
    }
    if !present.is_empty() {
        failed.push(format!(
            "A's users still present after the sweep: {present:?}"
        ));
    }
    if !refusals.is_empty() {
        failed.push(format!(
            "user u0 was refused {} of {PER_USER} connections on B: {:?}",
            refusals.len(),
            refusals.first()
        ));
    }
    drop(admitted);
    assert!(
        failed.is_empty(),
        "a drain with Redis {fault:?}:\n- {}\n(node A log: {})",
        failed.join("\n- "),
        saved.display()
    );
}
