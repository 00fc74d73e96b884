//! Limits that protect the node and other clients (docs/protocol.md §3, §4):
//! frame size, rooms per connection, connections per user and tenant,
//! publish rate, malformed frames, invalid names, and hostile input.

use std::time::Duration;

use fanout_protocol::Codec;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::{Client, Event, TestServer, TokenSpec, WAIT};

fn error_code(reply: &Value) -> i64 {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_i64().unwrap()
}

/// The first event must be a close with `code` (no welcome, no frame).
async fn expect_closed_with(c: &mut Client, code: u16) -> String {
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((got, reason)))) if got == code => reason,
        other => panic!("expected close {code}, got {other:?}"),
    }
}

/// Connects with a header token; returns the client and its first event.
async fn connect(server: &TestServer, sub: &str, tenant: &str) -> (Client, Event) {
    let token = TokenSpec::new(sub, tenant, &["lobby"]).mint();
    let mut c = Client::connect(&server.ws_url(), None, Some(&token)).await;
    let first = c.next_event(WAIT).await.expect("an event");
    (c, first)
}

fn is_welcome(e: &Event) -> bool {
    matches!(e, Event::Frame(v) if v["type"] == "welcome")
}

/// Closes cleanly and waits (bounded) until the node has let go of it.
async fn disconnect(server: &TestServer, mut c: Client, remaining: usize) {
    c.ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, c.ws.next()).await {}
    let deadline = Instant::now() + WAIT;
    while server.node.connection_count() != remaining {
        assert!(Instant::now() < deadline, "connection not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_closes_1009() {
    let server = TestServer::spawn_with(|c| c.limits.max_frame_bytes = 1024).await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    // Just under the limit is fine.
    let pad = "x".repeat(900);
    let frame = json!({"type":"publish","id":1,"room":"lobby","event":"e","data":pad});
    assert!(frame.to_string().len() < 1024);
    c.send(frame).await;
    assert_eq!(c.recv().await, json!({"type":"ack","id":1}));
    // Over it closes the connection.
    let pad = "x".repeat(2048);
    c.send(json!({"type":"publish","id":2,"room":"lobby","event":"e","data":pad}))
        .await;
    expect_closed_with(&mut c, 1009).await;
}

#[tokio::test]
async fn max_rooms_per_connection_refuses_the_next_subscribe() {
    let server = TestServer::spawn_with(|c| c.limits.max_rooms_per_connection = 2).await;
    let mut c = server.client("u1", "acme", &["r*"]).await;
    c.subscribe("r1").await;
    c.subscribe("r2").await;
    let reply = c.request(json!({"type":"subscribe","room":"r3"}), 3).await;
    assert_eq!((error_code(&reply), reply["id"].as_i64()), (403, Some(3)));
    // Re-subscribing to a room already held is not a new room.
    c.subscribe("r2").await;
    // Leaving one makes room for another.
    let ack = c
        .request(json!({"type":"unsubscribe","room":"r1"}), 4)
        .await;
    assert_eq!(ack["type"], "ack");
    c.subscribe("r3").await;
    server.publish_room("acme", "r3", "e", json!(3)).await;
    assert_eq!(c.recv_type("message").await["data"], 3);
}

#[tokio::test]
async fn max_connections_per_user_closes_the_extra_one_4003() {
    let server = TestServer::spawn_with(|c| c.limits.max_connections_per_user = 2).await;
    let (a, first) = connect(&server, "alice", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
    let (_b, first) = connect(&server, "alice", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
    let (_c, first) = connect(&server, "alice", "acme").await;
    assert!(matches!(first, Event::Closed(Some((4003, _)))), "{first:?}");
    // Other users are not affected.
    let (_bob, first) = connect(&server, "bob", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
    // Once one of alice's connections is gone, a new one is admitted.
    disconnect(&server, a, 2).await;
    let (_d, first) = connect(&server, "alice", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
}

#[tokio::test]
async fn max_connections_per_tenant_closes_the_extra_one_4003() {
    let server = TestServer::spawn_with(|c| c.limits.max_connections_per_tenant = 2).await;
    let (a, first) = connect(&server, "u1", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
    let (_b, first) = connect(&server, "u2", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
    let (_c, first) = connect(&server, "u3", "acme").await;
    assert!(matches!(first, Event::Closed(Some((4003, _)))), "{first:?}");
    // Another tenant has its own allowance.
    let (_g, first) = connect(&server, "u3", "globex").await;
    assert!(is_welcome(&first), "{first:?}");
    disconnect(&server, a, 2).await;
    let (_d, first) = connect(&server, "u3", "acme").await;
    assert!(is_welcome(&first), "{first:?}");
}

#[tokio::test]
async fn publish_rate_gives_429_then_closes_4008_after_the_strikes() {
    let server = TestServer::spawn_with(|c| {
        c.limits.publish_rate = 0.2;
        c.limits.publish_burst = 3;
        c.limits.rate_limit_strikes = 3;
    })
    .await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    let publish = json!({"type":"publish","room":"lobby","event":"e","data":1});
    for id in 1..=3 {
        let r = c.request(publish.clone(), id).await;
        assert_eq!(r, json!({"type":"ack","id":id}), "within the burst");
    }
    for id in 4..=5 {
        let r = c.request(publish.clone(), id).await;
        assert_eq!((error_code(&r), r["id"].as_i64()), (429, Some(id)));
    }
    // Other requests have their own budget; one that passes ends the run
    // of strikes (they count consecutive refusals).
    assert_eq!(c.request(json!({"type":"ping"}), 6).await["type"], "pong");
    for id in 7..=8 {
        let r = c.request(publish.clone(), id).await;
        assert_eq!((error_code(&r), r["id"].as_i64()), (429, Some(id)));
    }
    c.send(publish.clone()).await;
    expect_closed_with(&mut c, 4008).await;
}

/// Every request is budgeted, not only publishes: a logged-in client that
/// loops subscribe/unsubscribe (each a join and a leave for every presence
/// watcher) or presence queries (each a whole-room read) is answered 429
/// and then closed 4008, and the watchers of its room keep every message
/// (the join/leave events it can cause are capped, so their queues never
/// overflow into 4009).
#[tokio::test]
async fn a_client_flooding_requests_is_stopped_and_the_watchers_of_its_room_keep_every_frame() {
    let server = TestServer::spawn_with(|c| {
        c.limits.max_rooms_per_connection = 6;
        c.limits.request_rate = 10.0;
        c.limits.request_burst = 20;
        c.limits.membership_rate = 2.0;
        c.limits.membership_burst = 6;
        c.limits.rate_limit_strikes = 50;
        // A small queue: an uncapped flood of events would overflow it.
        c.limits.send_queue_messages = 64;
    })
    .await;
    let mut watcher = server.client("w", "acme", &["lobby"]).await;
    let ack = watcher
        .request(
            json!({"type":"subscribe","room":"lobby","presence_events":true}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack");

    // The flooder loops subscribe/unsubscribe without waiting for answers.
    let mut flooder = server.client("f", "acme", &["lobby"]).await;
    let started = std::time::Instant::now();
    let mut id = 0;
    let mut closed = None;
    let mut refused = 0;
    'flood: for _ in 0..2_000 {
        for kind in ["subscribe", "unsubscribe"] {
            id += 1;
            flooder
                .send(json!({"type":kind,"id":id,"room":"lobby"}))
                .await;
        }
        while let Some(event) = flooder.next_event(Duration::from_millis(1)).await {
            match event {
                Event::Frame(f) if f["type"] == "error" && f["code"] == 429 => refused += 1,
                Event::Frame(_) => {}
                Event::Closed(c) => {
                    closed = c;
                    break 'flood;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    if closed.is_none() {
        while let Some(event) = flooder.next_event(Duration::from_secs(2)).await {
            match event {
                Event::Frame(f) if f["type"] == "error" && f["code"] == 429 => refused += 1,
                Event::Frame(_) => {}
                Event::Closed(c) => {
                    closed = c;
                    break;
                }
            }
        }
    }
    let flood_time = started.elapsed();
    assert!(refused > 0, "the flood was never answered 429");
    assert_eq!(
        closed.as_ref().map(|c| c.0),
        Some(4008),
        "the flooder must be closed 4008: {closed:?}"
    );

    // The watcher: still connected, every message published now arrives,
    // and it saw no more join/leave events than the membership budget allows.
    for n in 0..20 {
        server
            .publish_room("acme", "lobby", "e", json!({ "n": n }))
            .await;
    }
    let mut events = 0;
    let mut messages = Vec::new();
    while messages.len() < 20 {
        match watcher.next_event(Duration::from_secs(5)).await {
            Some(Event::Frame(f)) if f["type"] == "message" => {
                messages.push(f["data"]["n"].clone())
            }
            Some(Event::Frame(f)) if f["type"] == "join" || f["type"] == "leave" => events += 1,
            other => panic!(
                "the watcher lost messages ({} of 20): {other:?}",
                messages.len()
            ),
        }
    }
    assert_eq!(messages, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    let allowed = 6.0 + 2.0 * flood_time.as_secs_f64() + 2.0;
    assert!(
        (events as f64) <= allowed,
        "{events} join/leave events in {flood_time:?}; the cap allows {allowed}"
    );

    // Presence queries are budgeted too.
    let mut asker = server.client("p", "acme", &["lobby"]).await;
    let mut got_429 = false;
    for id in 1..=40 {
        let r = asker
            .request(json!({"type":"presence","room":"lobby"}), id)
            .await;
        if r["type"] == "error" && r["code"] == 429 {
            got_429 = true;
            break;
        }
    }
    assert!(got_429, "40 presence queries at once were all served");
}

#[tokio::test]
async fn malformed_frames_are_400_with_the_id_and_repeated_ones_close_4000() {
    let server = TestServer::spawn_with(|c| c.limits.malformed_strikes = 3).await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    c.send_raw(Message::Text("{not json".into())).await;
    let r = c.recv().await;
    assert_eq!((error_code(&r), &r["id"]), (400, &Value::Null), "{r}");
    c.send_raw(Message::Text(
        r#"{"type":"subscribe","id":9,"room":7}"#.into(),
    ))
    .await;
    let r = c.recv().await;
    assert_eq!((error_code(&r), r["id"].as_i64()), (400, Some(9)), "{r}");
    // A good frame resets the count.
    assert_eq!(c.request(json!({"type":"ping"}), 1).await["type"], "pong");
    for id in 10..12 {
        c.send_raw(Message::Text(
            format!(r#"{{"type":"warp","id":{id}}}"#).into(),
        ))
        .await;
        let r = c.recv().await;
        assert_eq!((error_code(&r), r["id"].as_i64()), (400, Some(id)), "{r}");
    }
    c.send_raw(Message::Text("]".into())).await;
    // The error for the last strike is still sent, then the close.
    let r = c.recv().await;
    assert_eq!(error_code(&r), 400, "{r}");
    assert_eq!(c.expect_close().await.0, 4000);
}

#[tokio::test]
async fn invalid_room_and_event_names_are_400() {
    // Invalid names count as malformed frames; allow more than the cases.
    let server = TestServer::spawn_with(|c| c.limits.malformed_strikes = 100).await;
    let mut c = server.client("u1", "acme", &["*"]).await;
    let long = "r".repeat(129);
    let cases = [
        json!({"type":"subscribe","room":"a b"}),
        json!({"type":"subscribe","room":""}),
        json!({"type":"subscribe","room":long}),
        json!({"type":"subscribe","room":"caf\u{e9}"}),
        json!({"type":"subscribe","room":"lobby/1"}),
        json!({"type":"unsubscribe","room":"a\nb"}),
        json!({"type":"presence","room":"*"}),
        json!({"type":"publish","room":"lobby","event":"bad event","data":1}),
        json!({"type":"publish","room":"lobby","event":"","data":1}),
        json!({"type":"publish","room":"lob by","event":"e","data":1}),
    ];
    for (id, frame) in cases.into_iter().enumerate() {
        let id = id as i64 + 1;
        let r = c.request(frame.clone(), id).await;
        assert_eq!(error_code(&r), 400, "{frame}: {r}");
    }
    // The longest valid name is accepted, not truncated.
    let max = "r".repeat(128);
    c.subscribe(&max).await;
    server.publish_room("acme", &max, "e", json!(1)).await;
    assert_eq!(c.recv_type("message").await["room"], max.as_str());
}

/// A tiny deterministic generator, so a failure reproduces.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn garbage(seed: u64) -> Vec<Message> {
    let mut s = seed;
    let mut msgs = Vec::new();
    for len in [1usize, 7, 64, 1000] {
        let bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut s) as u8).collect();
        msgs.push(Message::Binary(bytes.clone().into()));
        let ascii: String = bytes.iter().map(|b| (b % 95 + 32) as char).collect();
        msgs.push(Message::Text(ascii.into()));
    }
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let texts = [
        deep(20_000),
        format!(
            r#"{{"type":"publish","room":"lobby","event":"e","data":{}}}"#,
            deep(5_000)
        ),
        format!(
            r#"{{"type":"subscribe","room":"lobby","x":{}}}"#,
            "{\"a\":".repeat(3_000)
        ),
        r#"{"type":"ping","id":1e400}"#.into(),
        r#"{"type":"ping","id":99999999999999999999999}"#.into(),
        r#"{"type":"ping","id":-99999999999999999999999}"#.into(),
        r#"{"type":"ping","id":1.5}"#.into(),
        r#"{"type":"publish","room":"lobby","event":"e","data":1e999}"#.into(),
        r#"{"type":5}"#.into(),
        r#"{"type":null,"id":3}"#.into(),
        r#"{"type":["subscribe"]}"#.into(),
        r#"{"type":"subscribe","room":["lobby"]}"#.into(),
        r#"{"type":"subscribe","room":{"name":"lobby"}}"#.into(),
        r#"{"type":"subscribe","room":"lobby","presence_events":"yes"}"#.into(),
        r#"{"type":"publish","room":"lobby","event":7,"data":1}"#.into(),
        r#"{"type":"refresh","token":42}"#.into(),
        r#"{"type":"auth","token":"x"}"#.into(),
        r#"{"type":"SUBSCRIBE","room":"lobby"}"#.into(),
        r#"{"type":"exec","cmd":"rm -rf /"}"#.into(),
        r#"{"type":"subscribe\u0000","room":"lobby"}"#.into(),
        "null".into(),
        "[]".into(),
        "\"subscribe\"".into(),
        "123".into(),
        "".into(),
        "{\"type\":\"ping\"".into(),
        "\u{feff}{\"type\":\"ping\"}".into(),
    ];
    msgs.extend(texts.into_iter().map(|t| Message::Text(t.into())));
    msgs
}

#[tokio::test]
async fn a_volley_of_garbage_gets_400s_and_never_disturbs_other_clients() {
    let server = TestServer::spawn_with(|c| c.limits.malformed_strikes = 1_000_000).await;
    let mut observer = server.client("watcher", "acme", &["lobby"]).await;
    observer.subscribe("lobby").await;
    let mut vandal = server.client("vandal", "acme", &["lobby"]).await;
    let mut mp_vandal = server
        .client_with(Codec::MsgPack, &TokenSpec::new("mp", "acme", &["lobby"]))
        .await;

    let volley = garbage(0x9e37_79b9_7f4a_7c15);
    let mut mp_volley: Vec<Message> = garbage(7)
        .into_iter()
        .filter(|m| matches!(m, Message::Binary(_)))
        .collect();
    // MessagePack nesting (60,000 one-element arrays) at the top and as
    // `data`, and huge map and array headers with nothing behind them.
    let mut deep = vec![0x91u8; 60_000];
    deep.push(0xc0);
    mp_volley.push(Message::Binary(deep.clone().into()));
    let mut publish =
        rmp_serde::to_vec_named(&json!({"type":"publish","room":"lobby","event":"e"})).unwrap();
    publish[0] += 1; // one more map entry: "data"
    publish.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a']);
    publish.extend_from_slice(&deep);
    mp_volley.push(Message::Binary(publish.into()));
    mp_volley.push(Message::Binary(vec![0xdf, 0xff, 0xff, 0xff, 0xff].into()));
    mp_volley.push(Message::Binary(vec![0xdd, 0xff, 0xff, 0xff, 0xff].into()));
    mp_volley.push(Message::Binary(vec![0xc1].into()));

    let mut seq = 0;
    for (vandal, shots) in [(&mut vandal, volley), (&mut mp_vandal, mp_volley)] {
        for msg in shots {
            let shown = format!("{msg:?}").chars().take(80).collect::<String>();
            vandal.send_raw(msg).await;
            let r = vandal.recv().await;
            assert_eq!(error_code(&r), 400, "{shown}: {r}");
            // Meanwhile the observer keeps getting its messages, in order.
            server
                .publish_room("acme", "lobby", "tick", json!(seq))
                .await;
            let m = observer.recv_type("message").await;
            assert_eq!(m["data"], seq, "{m}");
            seq += 1;
        }
        // The vandal's connection still works after all that.
        assert_eq!(
            vandal.request(json!({"type":"ping"}), 77).await["type"],
            "pong"
        );
    }

    // Text that is not UTF-8 violates the WebSocket protocol itself.
    let bad_utf8 = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    vandal.send_raw(Message::Frame(bad_utf8)).await;
    let code = vandal.expect_close().await.0;
    assert!(code == 4000 || code == 1007, "close {code}");

    // The node is healthy.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let mut fresh = server.client("fresh", "acme", &["lobby"]).await;
    assert_eq!(
        fresh.request(json!({"type":"ping"}), 1).await["type"],
        "pong"
    );
    assert_eq!(
        observer.request(json!({"type":"ping"}), 2).await["type"],
        "pong"
    );
}

#[tokio::test]
async fn a_deeply_nested_msgpack_http_body_is_400_not_a_crash() {
    let server = TestServer::spawn().await;
    let mut body =
        rmp_serde::to_vec_named(&json!({"tenant":"acme","room":"lobby","event":"e"})).unwrap();
    body[0] += 1; // one more map entry: "data"
    body.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a']);
    body.extend(std::iter::repeat_n(0x91u8, 100_000));
    body.push(0xc0);
    let resp = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth(crate::support::API_KEY)
        .header("Content-Type", "application/msgpack")
        .body(body)
        .send()
        .await
        .expect("http request");
    assert_eq!(resp.status().as_u16(), 400);
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_oversized_first_frame_before_auth_closes_1009() {
    let server = TestServer::spawn_with(|c| c.limits.max_frame_bytes = 1024).await;
    let mut c = Client::connect(&server.ws_url(), None, None).await;
    let token = "x".repeat(4096);
    c.send(json!({"type":"auth","token":token})).await;
    expect_closed_with(&mut c, 1009).await;
}

/// The size limit holds for the larger encoding: an array of floats is
/// small in JSON and about twice as big in MessagePack, and a MessagePack
/// client must never get a frame larger than the limit.
#[tokio::test]
async fn the_message_size_limit_counts_the_larger_encoding() {
    let server = TestServer::spawn_with(|c| {
        c.limits.max_message_bytes = 4096;
        c.limits.send_queue_bytes = 64 * 1024;
    })
    .await;
    // 600 floats: ~2.4 KB as JSON ("0.1,"), ~5.4 KB as MessagePack (9 bytes each).
    let floats: Vec<f64> = vec![0.1; 600];
    let json_len = serde_json::to_vec(&floats).unwrap().len();
    let msgpack_len = rmp_serde::to_vec(&floats).unwrap().len();
    assert!(
        json_len < 4096 && msgpack_len > 4096,
        "{json_len} {msgpack_len}"
    );
    let reply = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","room":"lobby","event":"e","data":floats}),
        )
        .await;
    assert_eq!(reply.0, 413, "{reply:?}");
    // The same count of small integers fits both encodings.
    let ints: Vec<u8> = vec![1; 600];
    let reply = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","room":"lobby","event":"e","data":ints}),
        )
        .await;
    assert_eq!(reply.0, 202, "{reply:?}");
}
