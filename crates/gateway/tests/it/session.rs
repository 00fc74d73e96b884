//! Session behaviour (docs/protocol.md §2–§4): ping/pong at both levels, server
//! pings and the idle timeout, subscribe/unsubscribe, permissions and room
//! patterns, presence queries and events, subprotocol negotiation.

use std::time::Duration;

use fanout_protocol::Codec;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{Client, Event, SECRET, TestServer, TokenSpec, WAIT, now_secs};

/// The next raw WebSocket message (pings included), or `None` at the deadline.
async fn next_raw(c: &mut Client, deadline: Instant) -> Option<Message> {
    match tokio::time::timeout_at(deadline, c.ws.next()).await {
        Ok(Some(Ok(msg))) => Some(msg),
        Ok(other) => panic!("socket ended: {other:?}"),
        Err(_) => None,
    }
}

/// Reads `c`'s TCP stream to its end beneath tungstenite and splits it into
/// (opcode, payload) frames. Server frames are unmasked.
async fn raw_server_frames(c: &mut Client) -> Vec<(u8, Vec<u8>)> {
    let tcp = match c.ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => panic!("plain TCP expected"),
    };
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut bytes))
        .await
        .expect("the server closes the socket")
        .expect("read");
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 2 {
        let op = rest[0] & 0x0f;
        let (len, head) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => panic!("no 64-bit lengths expected here"),
            n => (n as usize, 2),
        };
        frames.push((op, rest[head..head + len].to_vec()));
        rest = &rest[head + len..];
    }
    assert!(rest.is_empty(), "trailing bytes: {rest:?}");
    frames
}

fn error_code(reply: &Value) -> i64 {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_i64().unwrap()
}

#[tokio::test]
async fn app_ping_gets_pong_with_the_same_id() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &[]).await;
    for id in [1i64, 42, -7, 9_007_199_254_740_993] {
        c.send(json!({"type":"ping","id":id})).await;
        assert_eq!(c.recv().await, json!({"type":"pong","id":id}));
    }
}

#[tokio::test]
async fn websocket_ping_is_answered_with_pong() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &[]).await;
    c.send_raw(Message::Ping("are-you-there".into())).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match next_raw(&mut c, deadline).await {
            Some(Message::Pong(p)) => {
                assert_eq!(&p[..], b"are-you-there");
                break;
            }
            Some(_) => continue,
            None => panic!("no pong within {WAIT:?}"),
        }
    }
}

#[tokio::test]
async fn server_pings_every_ping_interval() {
    let server = TestServer::spawn_with(|c| {
        c.session.ping_interval = Duration::from_millis(200);
        c.session.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let mut c = server.client("u1", "acme", &[]).await;
    let start = Instant::now();
    let deadline = start + WAIT;
    let mut pings = Vec::new();
    while pings.len() < 4 {
        match next_raw(&mut c, deadline).await {
            Some(Message::Ping(_)) => pings.push(start.elapsed()),
            Some(_) => continue,
            None => panic!("only {} pings within {WAIT:?}", pings.len()),
        }
    }
    // Four pings at ~200 ms intervals: not a burst, not seconds apart.
    let span = pings[3] - pings[0];
    assert!(
        span >= Duration::from_millis(450),
        "pings too fast: {pings:?}"
    );
    assert!(
        span <= Duration::from_millis(1500),
        "pings too slow: {pings:?}"
    );
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_client_but_not_one_answering_pings() {
    let server = TestServer::spawn_with(|c| {
        c.session.ping_interval = Duration::from_millis(100);
        c.session.idle_timeout = Duration::from_millis(600);
    })
    .await;
    // `silent` is not polled, so tungstenite never answers its pings.
    let mut silent = server.client("quiet", "acme", &[]).await;
    let mut live = server.client("chatty", "acme", &[]).await;
    // Polling `live` answers the server's pings for it.
    live.expect_silence(Duration::from_millis(1500)).await;
    server.wait_for_connections(1).await;
    // Read the silent client's socket underneath tungstenite, which would
    // answer the buffered pings (and hit the closed socket) before
    // returning the close frame.
    let frames = raw_server_frames(&mut silent).await;
    assert!(
        frames.iter().filter(|(op, _)| *op == 0x9).count() >= 3,
        "the server pinged the silent client: {frames:?}"
    );
    let (op, payload) = frames.last().expect("frames").clone();
    assert_eq!(op, 0x8, "the last frame is a close: {frames:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1000);
    assert!(String::from_utf8_lossy(&payload[2..]).contains("idle"));
    let pong = live.request(json!({"type":"ping"}), 2).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn subscribe_and_unsubscribe_are_acked_and_take_effect() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    let ack = c
        .request(json!({"type":"subscribe","room":"lobby"}), 1)
        .await;
    assert_eq!(ack, json!({"type":"ack","id":1}));
    // Subscribing twice is fine.
    let ack = c
        .request(json!({"type":"subscribe","room":"lobby"}), 2)
        .await;
    assert_eq!(ack, json!({"type":"ack","id":2}));
    server.publish_room("acme", "lobby", "e", json!(1)).await;
    assert_eq!(c.recv_type("message").await["data"], 1);

    let ack = c
        .request(json!({"type":"unsubscribe","room":"lobby"}), 3)
        .await;
    assert_eq!(ack, json!({"type":"ack","id":3}));
    server.publish_room("acme", "lobby", "e", json!(2)).await;
    c.expect_silence(Duration::from_millis(300)).await;
    // Unsubscribing from a room one is not in is acked too.
    let ack = c
        .request(json!({"type":"unsubscribe","room":"elsewhere"}), 4)
        .await;
    assert_eq!(ack, json!({"type":"ack","id":4}));
}

#[tokio::test]
async fn subscribe_and_publish_outside_the_token_claims_are_403() {
    let server = TestServer::spawn().await;
    let mut spec = TokenSpec::new("u1", "acme", &["lobby", "news"]);
    spec.publish = vec!["lobby".into()];
    let mut c = server.client_with(Codec::Json, &spec).await;
    let r = c
        .request(json!({"type":"subscribe","room":"secret"}), 1)
        .await;
    assert_eq!((error_code(&r), r["id"].as_i64()), (403, Some(1)), "{r}");
    let r = c
        .request(
            json!({"type":"publish","room":"news","event":"e","data":1}),
            2,
        )
        .await;
    assert_eq!((error_code(&r), r["id"].as_i64()), (403, Some(2)), "{r}");
    // Subscribing to `news` is allowed, publishing into `lobby` too.
    c.subscribe("news").await;
    let r = c
        .request(
            json!({"type":"publish","room":"lobby","event":"e","data":1}),
            3,
        )
        .await;
    assert_eq!(r, json!({"type":"ack","id":3}));
    // The refused subscription did not happen.
    server.publish_room("acme", "secret", "e", json!(1)).await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn room_patterns_match_whole_names_and_star_spans_colons() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &["doc:*", "lobby"]).await;
    for (room, allowed) in [
        ("doc:1", true),
        ("doc:a:b", true),
        ("lobby", true),
        ("docs", false),
        ("doc", false),
        ("xdoc:1", false),
        ("lobby2", false),
        ("the-lobby", false),
    ] {
        let r = c.request(json!({"type":"subscribe","room":room}), 9).await;
        if allowed {
            assert_eq!(r["type"], "ack", "{room}: {r}");
        } else {
            assert_eq!(error_code(&r), 403, "{room}: {r}");
        }
    }
}

#[tokio::test]
async fn presence_query_lists_users_with_connection_counts() {
    let server = TestServer::spawn().await;
    let mut a1 = server.client("alice", "acme", &["lobby"]).await;
    let mut a2 = server.client("alice", "acme", &["lobby"]).await;
    let mut b = server.client("bob", "acme", &["lobby"]).await;
    let mut other_tenant = server.client("carol", "globex", &["lobby"]).await;
    for c in [&mut a1, &mut a2, &mut b, &mut other_tenant] {
        c.subscribe("lobby").await;
    }
    let reply = b
        .request(json!({"type":"presence","room":"lobby"}), 4)
        .await;
    assert_eq!(
        reply,
        json!({"type":"presence","id":4,"room":"lobby","members":[
            {"user":"alice","conns":2},
            {"user":"bob","conns":1},
        ]})
    );
    // Presence of a room outside the claims is refused.
    let reply = b
        .request(json!({"type":"presence","room":"secret"}), 5)
        .await;
    assert_eq!(error_code(&reply), 403);
    // So is any presence query with `"presence": false` in the token.
    let claims = json!({"sub":"dave","tenant":"acme","exp":now_secs() + 600,
        "rooms":["lobby"],"presence":false});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut d = Client::connect(&server.ws_url(), None, Some(&token)).await;
    assert_eq!(d.recv().await["type"], "welcome");
    d.subscribe("lobby").await;
    let reply = d
        .request(json!({"type":"presence","room":"lobby"}), 6)
        .await;
    assert_eq!(error_code(&reply), 403);
    // And watching join/leave events is presence too: refused, not granted
    // by the back door (and not silently downgraded to a plain subscribe).
    let reply = d
        .request(
            json!({"type":"subscribe","room":"lobby","presence_events":true}),
            7,
        )
        .await;
    assert_eq!(error_code(&reply), 403, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("presence_events")),
        "{reply}"
    );
    // The refusal left the plain subscription as it was: no events arrive.
    let mut e = server.client("erin", "acme", &["lobby"]).await;
    e.subscribe("lobby").await;
    let got = d.next_event(std::time::Duration::from_millis(300)).await;
    assert!(
        got.is_none(),
        "a token without presence got a presence event: {got:?}"
    );
}

#[tokio::test]
async fn presence_events_go_to_watchers_only_for_first_join_and_last_leave() {
    let server = TestServer::spawn().await;
    let mut watcher = server.client("w", "acme", &["lobby"]).await;
    let mut plain = server.client("p", "acme", &["lobby"]).await;
    let ack = watcher
        .request(
            json!({"type":"subscribe","room":"lobby","presence_events":true}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack");
    plain.subscribe("lobby").await;
    assert_eq!(
        watcher.recv().await,
        json!({"type":"join","room":"lobby","user":"p"})
    );

    let mut tab1 = server.client("bob", "acme", &["lobby"]).await;
    let mut tab2 = server.client("bob", "acme", &["lobby"]).await;
    tab1.subscribe("lobby").await;
    assert_eq!(
        watcher.recv().await,
        json!({"type":"join","room":"lobby","user":"bob"})
    );
    // Bob's second connection is not a new member of the room.
    tab2.subscribe("lobby").await;
    let unsub = tab1
        .request(json!({"type":"unsubscribe","room":"lobby"}), 2)
        .await;
    assert_eq!(unsub["type"], "ack");
    watcher.expect_silence(Duration::from_millis(200)).await;
    // Bob's last connection leaves by disconnecting.
    tab2.ws.close(None).await.unwrap();
    assert_eq!(
        watcher.recv().await,
        json!({"type":"leave","room":"lobby","user":"bob"})
    );
    // The subscriber without presence_events saw none of it.
    plain.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn subprotocols_are_echoed_and_choose_the_codec() {
    let server = TestServer::spawn().await;
    let token = TokenSpec::new("u1", "acme", &[]).mint();
    let url = server.ws_url();
    for (offer, echo, codec) in [
        (Some("fanout.json"), Some("fanout.json"), Codec::Json),
        (
            Some("fanout.msgpack"),
            Some("fanout.msgpack"),
            Codec::MsgPack,
        ),
        (None, None, Codec::Json),
        (
            Some("chat.v2, fanout.msgpack"),
            Some("fanout.msgpack"),
            Codec::MsgPack,
        ),
    ] {
        let mut c = Client::connect_offering(&url, offer, Some(&token)).await;
        assert_eq!(c.echoed_protocol.as_deref(), echo, "{offer:?}");
        // The welcome arrives as a text (JSON) or binary (MessagePack) frame.
        let msg = next_raw(&mut c, Instant::now() + WAIT).await.unwrap();
        let welcome: Value = match (&msg, codec) {
            (Message::Text(t), Codec::Json) => serde_json::from_str(t).unwrap(),
            (Message::Binary(b), Codec::MsgPack) => rmp_serde::from_slice(b).unwrap(),
            _ => panic!("{offer:?}: welcome in the wrong frame type: {msg:?}"),
        };
        assert_eq!(welcome["type"], "welcome");
    }
}

#[tokio::test]
async fn an_offer_of_only_unsupported_subprotocols_closes_4000() {
    let server = TestServer::spawn().await;
    let token = TokenSpec::new("u1", "acme", &[]).mint();
    // tungstenite's client refuses a handshake without the offered protocol,
    // so this one is done by hand.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: chat.v2, mqtt\r\nAuthorization: Bearer {token}\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Read the response head byte by byte so no frame byte is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "response head too long");
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    let ws = WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(tcp), Role::Client, None).await;
    let mut c = Client {
        ws,
        codec: Codec::Json,
        conn_id: String::new(),
        echoed_protocol: None,
    };
    match c.next_event(WAIT).await {
        Some(Event::Closed(Some((4000, _)))) => {}
        other => panic!("expected close 4000, got {other:?}"),
    }
}

#[tokio::test]
async fn a_text_frame_on_a_msgpack_connection_is_400() {
    let server = TestServer::spawn().await;
    let mut c = server
        .client_with(Codec::MsgPack, &TokenSpec::new("u1", "acme", &["lobby"]))
        .await;
    c.send_raw(Message::Text(r#"{"type":"ping","id":1}"#.into()))
        .await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), 400, "{reply}");
    // A binary (MessagePack) frame on a JSON connection likewise.
    let mut j = server.client("u2", "acme", &[]).await;
    j.send_raw(Message::Binary(
        rmp_serde::to_vec_named(&json!({"type":"ping","id":1}))
            .unwrap()
            .into(),
    ))
    .await;
    assert_eq!(error_code(&j.recv().await), 400);
    // Both connections still work.
    assert_eq!(c.request(json!({"type":"ping"}), 2).await["type"], "pong");
    assert_eq!(j.request(json!({"type":"ping"}), 2).await["type"], "pong");
}
