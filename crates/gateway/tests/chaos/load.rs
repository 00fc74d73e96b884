//! The load the faults hit: who is connected where, who publishes what,
//! and everything each side saw.
//!
//! **Layout.** Two tenants. `acme` has 30 connections (`c0`…`c29`) of 20
//! users (`u0`…`u9` hold two connections each, on different nodes; `u20`…
//! `u29` one), in rooms of 1, 5 and 30 members, each once without history
//! (`solo`, `five`, `crowd`) and once with (`h:solo`, `h:five`, `h:crowd`).
//! `globex` has 6 connections of 4 users in `team` and `h:team` (5 each)
//! and one connection in no room. Some members watch presence
//! (`presence_events`). `c25`…`c29` are *transient*: a connection of theirs
//! that a fault ends is not replaced until the next churn step, so their
//! users really leave (their watchers must see `leave`).
//!
//! **Publishers.** One per stream, a publish every [`PUBLISH_PERIOD`] through
//! `POST /v1/publish` on its home node (the next live one while it is
//! down), each carrying `{"s": stream, "q": seq}`: a stream per room, user
//! sends to `u0`, `u20` and `w1`, tenant sends to both tenants. Every
//! attempt is logged with its answer.
//!
//! **Clients.** One task per connection slot: connect (to its preferred
//! node, or the next live one), subscribe its rooms (in rooms with history
//! with `since` = the last position it saw), take a presence snapshot of
//! the rooms it watches, ping; then read until the connection ends or the
//! controller says otherwise, and reconnect. Every life, ack, message and
//! presence event is logged for the checker.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fanout_protocol::Codec;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cluster_support::any_room;
use crate::support::API_KEY;

/// Interval of every publisher.
pub const PUBLISH_PERIOD: Duration = Duration::from_millis(200);
/// Bound of one step of a client (connect, a reply).
const STEP: Duration = Duration::from_secs(4);
/// Upper bound of the lives of one client (a client that is never stopped still ends).
const MAX_LIVES: usize = 20_000;
/// Upper bound of one publisher's attempts, per second of the run.
const MAX_SEQ_PER_SEC: u64 = 10;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------- nodes ----

/// A node a client or a publisher may use right now.
#[derive(Debug, Clone)]
pub struct LiveNode {
    pub slot: usize,
    pub id: String,
    pub addr: SocketAddr,
}

/// The nodes a load balancer would send traffic to: a node leaves before
/// it is killed or drained and comes back once its successor is ready.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<Mutex<[Option<LiveNode>; 3]>>);

impl Live {
    pub fn set(&self, slot: usize, node: Option<LiveNode>) {
        lock(&self.0)[slot] = node;
    }

    pub fn get(&self, slot: usize) -> Option<LiveNode> {
        lock(&self.0)[slot].clone()
    }

    /// Every live node, by slot.
    pub fn all(&self) -> Vec<LiveNode> {
        lock(&self.0).iter().flatten().cloned().collect()
    }

    /// The `k`-th live node counting from `preferred` (0: `preferred`
    /// itself when it is live).
    pub fn pick(&self, preferred: usize, k: usize) -> Option<LiveNode> {
        let nodes = lock(&self.0);
        let order: Vec<&LiveNode> = (0..3)
            .filter_map(|i| nodes[(preferred + i) % 3].as_ref())
            .collect();
        (!order.is_empty()).then(|| order[k % order.len()].clone())
    }
}

// --------------------------------------------------------------- layout ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSpec {
    pub tenant: &'static str,
    pub name: &'static str,
    pub history: bool,
}

#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub name: String,
    pub tenant: &'static str,
    pub user: String,
    /// The node slot it connects to when that node is live.
    pub slot: usize,
    /// Rooms, and whether it watches their presence.
    pub rooms: Vec<(&'static str, bool)>,
    pub transient: bool,
    pub codec: Codec,
}

impl ClientSpec {
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|(r, _)| *r == room)
    }
}

pub const ROOMS: [RoomSpec; 8] = [
    RoomSpec {
        tenant: "acme",
        name: "solo",
        history: false,
    },
    RoomSpec {
        tenant: "acme",
        name: "h:solo",
        history: true,
    },
    RoomSpec {
        tenant: "acme",
        name: "five",
        history: false,
    },
    RoomSpec {
        tenant: "acme",
        name: "h:five",
        history: true,
    },
    RoomSpec {
        tenant: "acme",
        name: "crowd",
        history: false,
    },
    RoomSpec {
        tenant: "acme",
        name: "h:crowd",
        history: true,
    },
    RoomSpec {
        tenant: "globex",
        name: "team",
        history: false,
    },
    RoomSpec {
        tenant: "globex",
        name: "h:team",
        history: true,
    },
];

/// The connections of the load (see the module doc).
pub fn clients() -> Vec<ClientSpec> {
    let mut out = Vec::new();
    for i in 0..30usize {
        let user = if i < 20 {
            format!("u{}", i % 10)
        } else {
            format!("u{i}")
        };
        let mut rooms = vec![("crowd", i == 21 || i == 22), ("h:crowd", i == 23)];
        if i < 5 {
            rooms.push(("five", i == 2));
            rooms.push(("h:five", i == 3));
        }
        if i == 20 {
            rooms.push(("solo", false));
            rooms.push(("h:solo", false));
        }
        out.push(ClientSpec {
            name: format!("c{i}"),
            tenant: "acme",
            user,
            slot: i % 3,
            rooms,
            transient: i >= 25,
            codec: if i % 4 == 3 {
                Codec::MsgPack
            } else {
                Codec::Json
            },
        });
    }
    for i in 0..6usize {
        let rooms = if i < 5 {
            vec![("team", i == 2), ("h:team", false)]
        } else {
            Vec::new()
        };
        out.push(ClientSpec {
            name: format!("g{i}"),
            tenant: "globex",
            user: format!("w{}", i % 4),
            slot: (i + 1) % 3,
            rooms,
            transient: false,
            codec: if i == 1 { Codec::MsgPack } else { Codec::Json },
        });
    }
    out
}

/// What a publisher sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Room(&'static str, &'static str),
    User(&'static str, &'static str),
    Tenant(&'static str),
}

#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub target: Target,
    pub history: bool,
    pub home: usize,
}

impl StreamSpec {
    /// Whether a connection of `spec` is in this stream's audience
    /// (rooms: once its subscribe was acknowledged).
    pub fn reaches(&self, spec: &ClientSpec) -> bool {
        match &self.target {
            Target::Room(t, r) => spec.tenant == *t && spec.in_room(r),
            Target::User(t, u) => spec.tenant == *t && spec.user == *u,
            Target::Tenant(t) => spec.tenant == *t,
        }
    }
}

pub fn streams() -> Vec<StreamSpec> {
    let mut out: Vec<StreamSpec> = ROOMS
        .iter()
        .enumerate()
        .map(|(i, r)| StreamSpec {
            name: format!("room:{}/{}", r.tenant, r.name),
            target: Target::Room(r.tenant, r.name),
            history: r.history,
            home: i % 3,
        })
        .collect();
    for (i, (t, u)) in [("acme", "u0"), ("acme", "u20"), ("globex", "w1")]
        .into_iter()
        .enumerate()
    {
        out.push(StreamSpec {
            name: format!("user:{t}/{u}"),
            target: Target::User(t, u),
            history: false,
            home: (i + 2) % 3,
        });
    }
    for (i, t) in ["acme", "globex"].into_iter().enumerate() {
        out.push(StreamSpec {
            name: format!("tenant:{t}"),
            target: Target::Tenant(t),
            history: false,
            home: (i + 1) % 3,
        });
    }
    out
}

// ----------------------------------------------------------- publishers ----

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 202, with the position in a room with history.
    Accepted { pos: Option<(String, u64)> },
    /// Refused for sure: never delivered. The status (0: no connection) and why.
    Refused(u16, String),
    /// Unknown: a timeout ("may still be delivered") or the node died mid-request.
    InDoubt(String),
}

#[derive(Debug, Clone)]
pub struct PubRecord {
    pub seq: u64,
    pub via: String,
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

pub struct Publisher {
    pub log: Arc<Mutex<Vec<PubRecord>>>,
    task: JoinHandle<()>,
}

pub struct Publishers {
    pub list: Vec<Publisher>,
    stop: Arc<AtomicBool>,
}

impl Publishers {
    /// Starts a publisher per stream; each stops by itself after
    /// `max_run` worth of publishes.
    pub fn start(live: &Live, max_run: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_seq = max_run.as_secs().max(1) * MAX_SEQ_PER_SEC;
        let list = streams()
            .into_iter()
            .map(|spec| {
                let log = Arc::new(Mutex::new(Vec::new()));
                let task = tokio::spawn(publish_loop(
                    spec.clone(),
                    live.clone(),
                    log.clone(),
                    stop.clone(),
                    max_seq,
                ));
                Publisher { log, task }
            })
            .collect();
        Self { list, stop }
    }

    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for p in &mut self.list {
            (&mut p.task).await.expect("a publisher task panicked");
        }
    }
}

fn body_of(spec: &StreamSpec, seq: u64) -> Value {
    let data = json!({"s": spec.name, "q": seq});
    match &spec.target {
        Target::Room(t, r) => json!({"tenant": t, "room": r, "event": "chaos", "data": data}),
        Target::User(t, u) => json!({"tenant": t, "user": u, "event": "chaos", "data": data}),
        Target::Tenant(t) => json!({"tenant": t, "event": "chaos", "data": data}),
    }
}

async fn publish_loop(
    spec: StreamSpec,
    live: Live,
    log: Arc<Mutex<Vec<PubRecord>>>,
    stop: Arc<AtomicBool>,
    max_seq: u64,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut tick = tokio::time::interval(PUBLISH_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 1;
    while seq <= max_seq && !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let Some(node) = live.pick(spec.home, 0) else {
            continue;
        };
        let started = Instant::now();
        let sent = http
            .post(format!("http://{}/v1/publish", node.addr))
            .bearer_auth(API_KEY)
            .json(&body_of(&spec, seq))
            .send()
            .await;
        let outcome = match sent {
            Err(e) if e.is_connect() => Outcome::Refused(0, format!("connect: {e}")),
            Err(e) => Outcome::InDoubt(format!("no answer: {e}")),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                match status {
                    202 => Outcome::Accepted {
                        pos: body["epoch"]
                            .as_str()
                            .zip(body["offset"].as_u64())
                            .map(|(e, o)| (e.to_owned(), o)),
                    },
                    503 => {
                        let msg = body["error"]["message"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        if msg.contains("may still be delivered") {
                            Outcome::InDoubt(msg)
                        } else {
                            Outcome::Refused(503, msg)
                        }
                    }
                    other => Outcome::Refused(other, body.to_string()),
                }
            }
        };
        lock(&log).push(PubRecord {
            seq,
            via: node.id,
            started,
            ended: Instant::now(),
            outcome,
        });
        seq += 1;
    }
}

// -------------------------------------------------------------- clients ----

/// How a life ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server closed with this code and reason.
    Code(u16, String),
    /// The connection broke without a close frame (a killed node).
    Dropped,
    /// The test closed it (churn, probes, the end).
    ByTest,
}

#[derive(Debug, Clone)]
pub struct Ack {
    pub at: Instant,
    pub since: Option<(String, u64)>,
    pub epoch: Option<String>,
    pub offset: Option<u64>,
    pub recovered: Option<bool>,
}

/// One connection of a client.
#[derive(Debug, Clone)]
pub struct Life {
    pub node: String,
    pub slot: usize,
    /// Room → its subscribe's ack.
    pub acks: BTreeMap<String, Ack>,
    /// When everything was subscribed and a ping answered.
    pub ready: Option<Instant>,
    pub ended: Option<(Instant, Ended)>,
}

#[derive(Debug, Clone)]
pub struct Recv {
    pub life: usize,
    pub stream: String,
    pub seq: u64,
    pub room: Option<String>,
    pub offset: Option<u64>,
    pub epoch: Option<String>,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct PresenceEvent {
    pub life: usize,
    pub room: String,
    pub user: String,
    pub joined: bool,
    pub at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Ready,
    Away,
    Stopped,
}

/// What a client watches in one room: the view its presence snapshot and
/// the events since make (`None` until the snapshot arrived).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub view: Option<BTreeSet<String>>,
    /// When the snapshot was answered, and who it named.
    pub snapshot: Option<(Instant, BTreeSet<String>)>,
    pending: Vec<(String, bool)>,
}

#[derive(Debug)]
pub struct ClientLog {
    pub lives: Vec<Life>,
    pub msgs: Vec<Recv>,
    pub events: Vec<PresenceEvent>,
    /// Anything a correct cluster never does to this client.
    pub errors: Vec<(Instant, String)>,
    /// Failed connection attempts (normal while nodes die), for diagnosis.
    pub failures: Vec<(Instant, String)>,
    pub state: State,
    pub state_since: Instant,
    pub watches: BTreeMap<String, Watch>,
}

impl ClientLog {
    fn new() -> Self {
        Self {
            lives: Vec::new(),
            msgs: Vec::new(),
            events: Vec::new(),
            errors: Vec::new(),
            failures: Vec::new(),
            state: State::Connecting,
            state_since: Instant::now(),
            watches: BTreeMap::new(),
        }
    }

    fn set_state(&mut self, s: State) {
        if self.state != s {
            self.state = s;
            self.state_since = Instant::now();
        }
    }

    /// The current life, if the client is ready.
    pub fn ready_life(&self) -> Option<&Life> {
        (self.state == State::Ready)
            .then(|| self.lives.last())
            .flatten()
    }

    fn event(&mut self, life: usize, room: &str, user: &str, joined: bool) {
        self.events.push(PresenceEvent {
            life,
            room: room.to_owned(),
            user: user.to_owned(),
            joined,
            at: Instant::now(),
        });
        if let Some(w) = self.watches.get_mut(room) {
            match &mut w.view {
                Some(view) => apply(view, user, joined),
                None => w.pending.push((user.to_owned(), joined)),
            }
        }
    }

    fn snapshot(&mut self, room: &str, members: &Value) {
        let w = self.watches.entry(room.to_owned()).or_default();
        let snapshot: BTreeSet<String> = members
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["user"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut view = snapshot.clone();
        w.snapshot = Some((Instant::now(), snapshot));
        // Events that arrived between the ack and the snapshot are applied
        // on top of it: set operations, so one the snapshot already
        // reflects changes nothing.
        for (user, joined) in w.pending.drain(..) {
            apply(&mut view, &user, joined);
        }
        w.view = Some(view);
    }
}

fn apply(view: &mut BTreeSet<String>, user: &str, joined: bool) {
    if joined {
        view.insert(user.to_owned());
    } else {
        view.remove(user);
    }
}

/// What the controller tells a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Close cleanly (1000) and stay away until `Return`.
    Leave,
    /// Come back (after `Leave`, or after a transient lost its connection).
    Return,
    /// Close cleanly and reconnect at once, to the preferred node.
    Move,
    Stop,
}

pub struct ClientHandle {
    pub spec: Arc<ClientSpec>,
    pub log: Arc<Mutex<ClientLog>>,
    tx: mpsc::UnboundedSender<Cmd>,
    task: Option<JoinHandle<()>>,
}

impl ClientHandle {
    pub fn start(spec: ClientSpec, live: &Live) -> Self {
        let spec = Arc::new(spec);
        let log = Arc::new(Mutex::new(ClientLog::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(client_loop(spec.clone(), live.clone(), log.clone(), rx));
        Self {
            spec,
            log,
            tx,
            task: Some(task),
        }
    }

    pub fn send(&self, cmd: Cmd) {
        let _ = self.tx.send(cmd);
    }

    pub fn state(&self) -> State {
        lock(&self.log).state
    }

    pub async fn stop(&mut self) {
        self.send(Cmd::Stop);
        if let Some(task) = self.task.take() {
            let _ = timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// An open connection of a client.
struct Conn {
    ws: Ws,
    codec: Codec,
    life: usize,
    next_id: i64,
}

enum Frame {
    Json(Value),
    Closed(Ended),
}

fn encode(codec: Codec, v: &Value) -> Message {
    match codec {
        Codec::Json => Message::Text(v.to_string().into()),
        Codec::MsgPack => {
            Message::Binary(rmp_serde::to_vec_named(v).expect("msgpack encode").into())
        }
    }
}

fn decode(msg: Message) -> Option<Frame> {
    match msg {
        Message::Text(t) => serde_json::from_str(&t).ok().map(Frame::Json),
        Message::Binary(b) => rmp_serde::from_slice(&b).ok().map(Frame::Json),
        Message::Close(f) => Some(Frame::Closed(match f {
            Some(CloseFrame { code, reason }) => Ended::Code(u16::from(code), reason.to_string()),
            None => Ended::Code(1005, String::new()),
        })),
        _ => None,
    }
}

/// The next frame or the end, within `wait` (`None`: nothing in time).
async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Frame> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None | Some(Err(_))) => return Some(Frame::Closed(Ended::Dropped)),
            Ok(Some(Ok(msg))) => {
                if let Some(f) = decode(msg) {
                    return Some(f);
                }
            }
        }
    }
}

/// A WebSocket to `addr` with a header token for `user` of `tenant`.
pub async fn connect(
    addr: SocketAddr,
    tenant: &str,
    user: &str,
    codec: Codec,
) -> Result<Ws, String> {
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let token = any_room(user, tenant).mint();
    let headers = req.headers_mut();
    headers.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?,
    );
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(codec.subprotocol()),
    );
    match timeout(STEP, tokio_tungstenite::connect_async(req)).await {
        Err(_) => Err("handshake timed out".into()),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// Waits for `welcome`; the close code (and reason) when closed instead.
async fn welcome(ws: &mut Ws) -> Result<Value, String> {
    match next_frame(ws, STEP).await {
        Some(Frame::Json(w)) if w["type"] == "welcome" => Ok(w),
        Some(Frame::Json(other)) => Err(format!("first frame is not welcome: {other}")),
        Some(Frame::Closed(Ended::Code(code, reason))) => Err(format!("closed {code} {reason}")),
        Some(Frame::Closed(e)) => Err(format!("closed at welcome: {e:?}")),
        None => Err("no welcome in time".into()),
    }
}

/// Closes cleanly: 1000, then waits (bounded) for the server's close.
pub async fn close(ws: &mut Ws) {
    let _ = timeout(Duration::from_secs(1), async {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

struct Task {
    spec: Arc<ClientSpec>,
    log: Arc<Mutex<ClientLog>>,
    /// Per room with history: the last (epoch, offset) this client saw.
    positions: BTreeMap<String, (String, u64)>,
}

impl Task {
    fn handle(&mut self, life: usize, v: &Value) {
        match v["type"].as_str() {
            Some("message") => self.message(life, v),
            Some(kind @ ("join" | "leave")) => {
                let (room, user) = (
                    v["room"].as_str().unwrap_or_default(),
                    v["user"].as_str().unwrap_or_default(),
                );
                lock(&self.log).event(life, room, user, kind == "join");
            }
            _ => lock(&self.log)
                .errors
                .push((Instant::now(), format!("unexpected frame: {v}"))),
        }
    }

    fn message(&mut self, life: usize, v: &Value) {
        let mut log = lock(&self.log);
        let (Some(stream), Some(seq)) = (v["data"]["s"].as_str(), v["data"]["q"].as_u64()) else {
            log.errors
                .push((Instant::now(), format!("a message of no stream: {v}")));
            return;
        };
        let room = v["room"].as_str().map(str::to_owned);
        let (offset, epoch) = (v["offset"].as_u64(), v["epoch"].as_str().map(str::to_owned));
        if let (Some(r), Some(o), Some(e)) = (&room, offset, &epoch) {
            self.positions.insert(r.clone(), (e.clone(), o));
        }
        log.msgs.push(Recv {
            life,
            stream: stream.to_owned(),
            seq,
            room,
            offset,
            epoch,
            at: Instant::now(),
        });
    }

    /// Sends a request and returns its reply, handling whatever arrives first.
    async fn request(&mut self, conn: &mut Conn, mut frame: Value) -> Result<Value, String> {
        conn.next_id += 1;
        let id = conn.next_id;
        frame["id"] = id.into();
        conn.ws
            .send(encode(conn.codec, &frame))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match next_frame(&mut conn.ws, left).await {
                None => return Err(format!("no reply to {frame} in time")),
                Some(Frame::Closed(e)) => return Err(format!("closed awaiting a reply: {e:?}")),
                Some(Frame::Json(v)) => {
                    if v["id"] == id && v["type"] != "message" {
                        return Ok(v);
                    }
                    self.handle(conn.life, &v);
                }
            }
        }
    }

    /// Connects to `node`, subscribes everything, takes presence
    /// snapshots, pings. On failure the connection is closed and the
    /// reason returned (the life, if one began, is ended).
    async fn open(&mut self, node: &LiveNode) -> Result<Conn, String> {
        let spec = self.spec.clone();
        let mut ws = connect(node.addr, spec.tenant, &spec.user, spec.codec).await?;
        welcome(&mut ws).await?;
        let life = {
            let mut log = lock(&self.log);
            log.lives.push(Life {
                node: node.id.clone(),
                slot: node.slot,
                acks: BTreeMap::new(),
                ready: None,
                ended: None,
            });
            log.watches.clear();
            for (room, watch) in &spec.rooms {
                if *watch {
                    log.watches.insert((*room).to_owned(), Watch::default());
                }
            }
            log.lives.len() - 1
        };
        let mut conn = Conn {
            ws,
            codec: spec.codec,
            life,
            next_id: 0,
        };
        match self.subscribe_all(&mut conn).await {
            Ok(()) => {
                let mut log = lock(&self.log);
                log.lives[life].ready = Some(Instant::now());
                log.set_state(State::Ready);
                Ok(conn)
            }
            Err(e) => {
                close(&mut conn.ws).await;
                lock(&self.log).lives[life].ended = Some((Instant::now(), Ended::ByTest));
                Err(e)
            }
        }
    }

    async fn subscribe_all(&mut self, conn: &mut Conn) -> Result<(), String> {
        let spec = self.spec.clone();
        for (room, watch) in &spec.rooms {
            let mut frame = json!({"type": "subscribe", "room": room});
            if *watch {
                frame["presence_events"] = true.into();
            }
            let since = self.positions.get(*room).cloned();
            if let Some((epoch, offset)) = &since {
                frame["since"] = json!({"offset": offset, "epoch": epoch});
            }
            let ack = self.request(conn, frame).await?;
            if ack["type"] != "ack" {
                return Err(format!("subscribe {room}: {ack}"));
            }
            let epoch = ack["epoch"].as_str().map(str::to_owned);
            let offset = ack["offset"].as_u64();
            let recovered = ack["recovered"].as_bool();
            if let (Some(e), Some(o)) = (&epoch, offset)
                && recovered != Some(true)
            {
                // First subscribe, or not recovered: the stream goes on from here.
                self.positions.insert((*room).to_owned(), (e.clone(), o));
            }
            lock(&self.log).lives[conn.life].acks.insert(
                (*room).to_owned(),
                Ack {
                    at: Instant::now(),
                    since,
                    epoch,
                    offset,
                    recovered,
                },
            );
            if *watch {
                let reply = self
                    .request(conn, json!({"type": "presence", "room": room}))
                    .await?;
                if reply["type"] != "presence" {
                    return Err(format!("presence {room}: {reply}"));
                }
                lock(&self.log).snapshot(room, &reply["members"]);
            }
        }
        let pong = self.request(conn, json!({"type": "ping"})).await?;
        if pong["type"] != "pong" {
            return Err(format!("ping: {pong}"));
        }
        Ok(())
    }

    /// Reads until the connection ends or a command comes.
    async fn read(
        &mut self,
        conn: &mut Conn,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<Ended, Cmd> {
        loop {
            tokio::select! {
                cmd = rx.recv() => return Err(cmd.unwrap_or(Cmd::Stop)),
                msg = conn.ws.next() => match msg {
                    None | Some(Err(_)) => return Ok(Ended::Dropped),
                    Some(Ok(msg)) => match decode(msg) {
                        Some(Frame::Closed(e)) => {
                            // Complete the closing handshake (bounded).
                            let _ = timeout(Duration::from_millis(500), conn.ws.close(None)).await;
                            return Ok(e);
                        }
                        Some(Frame::Json(v)) => self.handle(conn.life, &v),
                        None => {}
                    },
                },
            }
        }
    }
}

async fn client_loop(
    spec: Arc<ClientSpec>,
    live: Live,
    log: Arc<Mutex<ClientLog>>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut task = Task {
        spec: spec.clone(),
        log: log.clone(),
        positions: BTreeMap::new(),
    };
    let mut away = false;
    let mut attempt = 0usize;
    let mut pick = 0usize;
    for _ in 0..MAX_LIVES {
        if away {
            lock(&log).set_state(State::Away);
            match rx.recv().await {
                Some(Cmd::Return) => away = false,
                Some(Cmd::Stop) | None => break,
                Some(_) => {}
            }
            continue;
        }
        match rx.try_recv() {
            Ok(Cmd::Stop) => break,
            Ok(Cmd::Leave) => {
                away = true;
                continue;
            }
            Ok(Cmd::Move) => pick = 0,
            _ => {}
        }
        lock(&log).set_state(State::Connecting);
        let Some(node) = live.pick(spec.slot, pick) else {
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut conn = match task.open(&node).await {
            Ok(conn) => {
                attempt = 0;
                conn
            }
            Err(e) => {
                {
                    let mut log = lock(&log);
                    if e.starts_with("closed 4003") {
                        log.errors.push((
                            Instant::now(),
                            format!(
                                "refused 4003 by {} (limit 3, the user holds at most 2)",
                                node.id
                            ),
                        ));
                    }
                    log.failures
                        .push((Instant::now(), format!("{}: {e}", node.id)));
                }
                attempt += 1;
                pick += 1;
                sleep(Duration::from_millis((50 * attempt as u64).min(500))).await;
                continue;
            }
        };
        let ended = task.read(&mut conn, &mut rx).await;
        let (how, next) = match ended {
            Ok(e) => {
                let stay_away = spec.transient && !matches!(e, Ended::Code(4010, _));
                (e, if stay_away { Some(Cmd::Leave) } else { None })
            }
            Err(cmd) => {
                close(&mut conn.ws).await;
                (Ended::ByTest, Some(cmd))
            }
        };
        lock(&log).lives[conn.life].ended = Some((Instant::now(), how));
        match next {
            Some(Cmd::Stop) => break,
            Some(Cmd::Leave) => away = true,
            Some(Cmd::Move) => pick = 0,
            _ => {}
        }
        // A node that closed us is not asked again first.
        if next.is_none() {
            pick += 1;
        }
    }
    lock(&log).set_state(State::Stopped);
}

// ------------------------------------------------- probes and the flood ----

/// Opens connections of `user` on `node` one after another until one is
/// refused; returns how many were welcomed (at most `max`) and the close
/// code of the refusal, then closes them all.
pub async fn admission_probe(
    node: &LiveNode,
    tenant: &str,
    user: &str,
    max: usize,
) -> Result<(usize, Option<String>), String> {
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..=max {
        let mut ws = connect(node.addr, tenant, user, Codec::Json).await?;
        match welcome(&mut ws).await {
            Ok(_) => open.push(ws),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let admitted = open.len();
    for mut ws in open {
        close(&mut ws).await;
    }
    Ok((admitted, refused))
}

/// A client that subscribes `room` and then reads nothing, through a
/// socket with a small receive buffer (the kernel's buffers would
/// otherwise hide a stopped reader for megabytes).
pub async fn stalled_reader(
    node: &LiveNode,
    user: &str,
    room: &str,
    rcvbuf: u32,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(rcvbuf)
        .map_err(|e| e.to_string())?;
    let tcp = timeout(STEP, socket.connect(node.addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut req = format!("ws://{}/ws", node.addr)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let token = any_room(user, "acme").mint();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?,
    );
    let (mut ws, _) = timeout(
        STEP,
        tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    welcome(&mut ws).await?;
    subscribe_plain(&mut ws, room).await?;
    Ok(ws)
}

/// Subscribes and waits for the ack, skipping anything else.
pub async fn subscribe_plain(ws: &mut Ws, room: &str) -> Result<(), String> {
    ws.send(Message::Text(
        json!({"type": "subscribe", "id": 1, "room": room})
            .to_string()
            .into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Some(Frame::Json(v)) if v["id"] == 1 && v["type"] == "ack" => return Ok(()),
            Some(Frame::Json(v)) if v["id"] == 1 => return Err(format!("subscribe {room}: {v}")),
            Some(Frame::Json(_)) => {}
            other => return Err(format!("subscribe {room}: {:?}", other.map(|_| "closed"))),
        }
    }
}

/// Reads `ws` until the close; returns the `data.f` of every message of
/// `room` on the way and the close (`None`: nothing within `wait`).
pub async fn read_until_close(
    ws: &mut Ws,
    room: &str,
    wait: Duration,
) -> (Vec<u64>, Option<Ended>) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            None => return (got, None),
            Some(Frame::Closed(e)) => return (got, Some(e)),
            Some(Frame::Json(v)) => {
                if v["type"] == "message"
                    && v["room"] == room
                    && let Some(f) = v["data"]["f"].as_u64()
                {
                    got.push(f);
                }
            }
        }
    }
}

/// Reads a bulk connection until it ends (bounded by `wait`); `active`
/// connections keep switching rooms meanwhile (a subscribe or an
/// unsubscribe every 50 ms, not waiting for the answer). Returns the close
/// frame and when it came, and when the connection ended.
pub async fn bulk_reader(
    mut ws: Ws,
    active: bool,
    wait: Duration,
) -> (Option<(Ended, Instant)>, Instant) {
    let deadline = Instant::now() + wait;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut flip = 0u64;
    let mut close = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return (close, Instant::now()),
            _ = tick.tick(), if active && close.is_none() => {
                flip += 1;
                let kind = if flip.is_multiple_of(2) { "unsubscribe" } else { "subscribe" };
                let frame = json!({"type": kind, "id": flip + 10, "room": "bulk-switch"});
                if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                    return (close, Instant::now());
                }
            }
            msg = ws.next() => match msg {
                None | Some(Err(_)) => return (close, Instant::now()),
                Some(Ok(msg)) => {
                    if let Some(Frame::Closed(e)) = decode(msg)
                        && close.is_none()
                    {
                        close = Some((e, Instant::now()));
                    }
                }
            },
        }
    }
}

/// Reads `ws` until `n` messages of `room` arrived, a close, or `wait`.
pub async fn read_flood(
    ws: &mut Ws,
    room: &str,
    n: usize,
    wait: Duration,
) -> (Vec<u64>, Option<Ended>) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            None => return (got, None),
            Some(Frame::Closed(e)) => return (got, Some(e)),
            Some(Frame::Json(v)) => {
                if v["type"] == "message"
                    && v["room"] == room
                    && let Some(f) = v["data"]["f"].as_u64()
                {
                    got.push(f);
                }
            }
        }
    }
    (got, None)
}

/// Publishes `1..=n` into `room` as `{"f": seq, "pad": …}` of `pad` bytes,
/// `batch` per `POST /v1/publish/batch`, `pause` between batches.
pub async fn flood(
    node: &LiveNode,
    room: &str,
    n: u64,
    pad: usize,
    batch: u64,
    pause: Duration,
) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let pad = "x".repeat(pad);
    let mut seq = 1;
    while seq <= n {
        let last = (seq + batch - 1).min(n);
        let messages: Vec<Value> = (seq..=last)
            .map(|f| json!({"tenant": "acme", "room": room, "event": "flood", "data": {"f": f, "pad": pad}}))
            .collect();
        let resp = http
            .post(format!("http://{}/v1/publish/batch", node.addr))
            .bearer_auth(API_KEY)
            .json(&json!({"messages": messages}))
            .send()
            .await
            .map_err(|e| format!("flood batch at {seq}: {e}"))?;
        let status = resp.status().as_u16();
        if status != 202 {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("flood batch at {seq}: {status} {body}"));
        }
        seq = last + 1;
        sleep(pause).await;
    }
    Ok(())
}
