//! A rolling restart of a 3-node cluster under a sequence-numbered publish
//! stream into a room with history: every client closed with 1012 by a
//! draining node is subscribed again within 5 s, resubscribes with the last
//! position it saw, and — across all its connections — receives every
//! message exactly once and in order, those published while it was
//! reconnecting included. The publisher retries with idempotency keys, so
//! every message is accepted exactly once too.
//!
//! The load balancer is played by the test: a node leaves the list that
//! clients and the publisher pick from before it gets SIGTERM (as an LB does
//! once `/readyz` turns 503), and its replacement joins the list once ready.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::cluster_support::{
    ClusterNode, PREFIX, ProcessNode, any_room, redis_toml, wait_for_cluster,
};
use crate::redis_support::RedisServer;
use crate::support::API_KEY;

const ROOM: &str = "chat:rolling";
const CLIENTS: usize = 30;
/// The longest a client may be without a subscribed connection.
const RECONNECT_BOUND: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The nodes a load balancer would send traffic to right now.
type Live = Arc<Mutex<Vec<SocketAddr>>>;

fn live_nodes(live: &Live) -> Vec<SocketAddr> {
    live.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One connection of a client, from its subscribe ack to its end.
#[derive(Debug)]
struct Life {
    node: SocketAddr,
    subscribed_at: Instant,
    /// The ack's `recovered` (absent on the first subscribe).
    recovered: Option<bool>,
    seqs: Vec<u64>,
    ended_at: Instant,
    /// The close code, `None` when the test stopped the client.
    close: Option<u16>,
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// A client's position in the room's stream: epoch and offset.
type Position = (String, u64);

/// Connects to `addr`, waits for `welcome`, subscribes (from `since`);
/// returns the socket and the ack, `None` on any failure.
async fn open(addr: SocketAddr, user: &str, since: Option<&Position>) -> Option<(Ws, Value)> {
    let mut request = format!("ws://{addr}/ws").into_client_request().ok()?;
    let bearer = format!("Bearer {}", any_room(user, "acme").mint());
    request
        .headers_mut()
        .insert("Authorization", bearer.parse().ok()?);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .ok()?
    .ok()?;
    if next_json(&mut ws).await?["type"] != "welcome" {
        return None;
    }
    let mut subscribe = json!({"type": "subscribe", "id": 1, "room": ROOM});
    if let Some((epoch, offset)) = since {
        subscribe["since"] = json!({"offset": offset, "epoch": epoch});
    }
    ws.send(Message::text(subscribe.to_string())).await.ok()?;
    let ack = next_json(&mut ws).await?;
    (ack["type"] == "ack" && ack["id"] == 1).then_some((ws, ack))
}

/// A client that reconnects whenever it is closed, until `stop`.
async fn client(index: usize, live: Live, stop: CancellationToken) -> Vec<Life> {
    let user = format!("u{index}");
    let mut lives = Vec::new();
    let mut pick = index;
    let mut position: Option<Position> = None;
    while !stop.is_cancelled() {
        let nodes = live_nodes(&live);
        let node = nodes[pick % nodes.len()];
        pick += 1;
        let Some((mut ws, ack)) = open(node, &user, position.as_ref()).await else {
            sleep(Duration::from_millis(50)).await;
            continue;
        };
        let subscribed_at = Instant::now();
        let recovered = ack["recovered"].as_bool();
        if position.is_none() {
            position = Some((
                ack["epoch"].as_str().expect("ack epoch").to_owned(),
                ack["offset"].as_u64().expect("ack offset"),
            ));
        }
        let mut seqs = Vec::new();
        let close = loop {
            tokio::select! {
                () = stop.cancelled() => break None,
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("json frame");
                        if v["type"] == "message" {
                            seqs.push(v["data"]["seq"].as_u64().expect("data.seq"));
                            position = Some((
                                v["epoch"].as_str().expect("epoch").to_owned(),
                                v["offset"].as_u64().expect("offset"),
                            ));
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break Some(frame.map(|f| u16::from(f.code)).unwrap_or(0));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break Some(0),
                },
            }
        };
        lives.push(Life {
            node,
            subscribed_at,
            recovered,
            seqs,
            ended_at: Instant::now(),
            close,
        });
    }
    lives
}

/// Publishes seq 1, 2, 3, … every 20 ms through a live node, each with the
/// idempotency key `seq-<n>`. Whatever goes wrong (a 503 from a draining
/// node, a timeout, a lost connection) the same seq is retried on the next
/// node until it is accepted: the key makes the retry of a publish that did
/// go through answer its first id instead of delivering it again. Returns the
/// accepted seqs with their message ids, and how many retries there were.
async fn publisher(live: Live, stop: CancellationToken) -> (Vec<(u64, String)>, usize) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let mut accepted = Vec::new();
    let mut retries = 0;
    let mut seq = 1u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut next = 0usize;
    while !stop.is_cancelled() {
        tick.tick().await;
        loop {
            let nodes = live_nodes(&live);
            let node = nodes[next % nodes.len()];
            next += 1;
            let body = json!({"tenant": "acme", "room": ROOM, "event": "seq",
                "data": {"seq": seq}, "idempotency_key": format!("seq-{seq}")});
            let sent = http
                .post(node.http_url("/v1/publish"))
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().as_u16() == 202 => {
                    let reply: Value = r.json().await.expect("publish answer");
                    accepted.push((seq, reply["id"].as_str().expect("id").to_owned()));
                    break;
                }
                _ => {
                    retries += 1;
                    assert!(
                        retries < 1000,
                        "the publisher cannot get seq {seq} accepted"
                    );
                    sleep(Duration::from_millis(20)).await;
                }
            }
        }
        seq += 1;
    }
    (accepted, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_reconnects_every_client_within_5s_and_each_gets_every_message_once_in_order()
 {
    let redis = RedisServer::start().await;
    let toml = format!(
        "{}\n[shutdown]\ngrace = \"4s\"\nreadiness_delay = \"200ms\"\ndrain_window = \"1s\"\n\n\
         [[history]]\ntenant = \"*\"\nrooms = \"chat:*\"\nsize = 5000\nttl = \"5m\"\n",
        redis_toml(&redis.url(), PREFIX)
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(ProcessNode::spawn(&toml).await);
    }
    for n in &nodes {
        wait_for_cluster(&n.addr, 3).await;
    }
    let live: Live = Arc::new(Mutex::new(nodes.iter().map(|n| n.addr).collect()));
    let stop_clients = CancellationToken::new();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, live.clone(), stop_clients.clone())))
        .collect();
    // Everyone subscribed before the stream starts.
    let started = Instant::now();
    loop {
        let subscribed: u64 = {
            let mut n = 0;
            for node in live_nodes(&live) {
                n += node.stats().await["node"]["connections"]
                    .as_u64()
                    .unwrap_or(0);
            }
            n
        };
        if subscribed >= CLIENTS as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "clients did not connect"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let stop_publisher = CancellationToken::new();
    let publishing = tokio::spawn(publisher(live.clone(), stop_publisher.clone()));
    sleep(Duration::from_millis(500)).await;

    for _ in 0..3 {
        let mut old = nodes.remove(0);
        live.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a| *a != old.addr);
        let status = old.terminate().await;
        assert!(
            status.success(),
            "node {} exited with {status}\n{}",
            old.id,
            old.log()
        );
        let fresh = ProcessNode::spawn(&toml).await;
        wait_for_cluster(&fresh.addr, 3).await;
        live.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(fresh.addr);
        nodes.push(fresh);
        sleep(Duration::from_millis(700)).await;
    }

    stop_publisher.cancel();
    let (accepted, retries) = publishing.await.expect("publisher");
    sleep(Duration::from_millis(500)).await;
    stop_clients.cancel();
    let mut all = Vec::new();
    for c in clients {
        all.push(c.await.expect("client task"));
    }

    assert!(
        accepted.len() > 100,
        "only {} publishes accepted",
        accepted.len()
    );
    for (i, lives) in all.iter().enumerate() {
        assert!(
            lives.len() >= 2,
            "client {i} was never moved by the restart: {lives:?}"
        );
        assert_eq!(
            lives.last().map(|l| l.close),
            Some(None),
            "client {i} was not connected when the test stopped: {lives:?}"
        );
        // Closed by a draining node with 1012, and back within the bound.
        for pair in lives.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert_eq!(
                before.close,
                Some(1012),
                "client {i} on {}: {before:?}",
                before.node
            );
            let gap = after.subscribed_at - before.ended_at;
            assert!(
                gap <= RECONNECT_BOUND,
                "client {i} took {gap:?} to subscribe again after leaving {}",
                before.node
            );
        }
        // Every resubscribe recovered…
        for life in &lives[1..] {
            assert_eq!(
                life.recovered,
                Some(true),
                "client {i} did not recover on {}: {life:?}",
                life.node
            );
        }
        // …and across all its connections the client saw every accepted
        // message exactly once, in order, from the first to the last.
        let seen: Vec<u64> = lives.iter().flat_map(|l| l.seqs.iter().copied()).collect();
        let want: Vec<u64> = accepted.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seen, want,
            "client {i}: not every message exactly once and in order (publisher retried {retries} times)"
        );
    }
}
