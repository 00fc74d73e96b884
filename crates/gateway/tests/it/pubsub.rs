//! subscribe / unsubscribe / publish / presence / ping over real sockets.

use std::time::Duration;

use fanout_protocol::Codec;
use serde_json::json;

use crate::support::{TestServer, TokenSpec};

#[tokio::test]
async fn http_publish_reaches_room_subscribers_in_both_codecs() {
    let server = TestServer::spawn().await;
    let mut json_client = server.client("u1", "acme", &["lobby"]).await;
    let mut mp_client = server
        .client_with(Codec::MsgPack, &TokenSpec::new("u2", "acme", &["lobby"]))
        .await;
    assert_eq!(mp_client.echoed_protocol.as_deref(), Some("fanout.msgpack"));
    json_client.subscribe("lobby").await;
    mp_client.subscribe("lobby").await;

    let id = server
        .publish_room("acme", "lobby", "chat", json!({"text": "hi"}))
        .await;
    for c in [&mut json_client, &mut mp_client] {
        let m = c.recv_type("message").await;
        assert_eq!(m["scope"], "room");
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["event"], "chat");
        assert_eq!(m["data"], json!({"text": "hi"}));
        assert_eq!(m["id"], id.as_str());
        assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
}

#[tokio::test]
async fn publisher_does_not_get_its_own_message_but_its_other_connections_do() {
    let server = TestServer::spawn().await;
    let mut tab1 = server.client("alice", "acme", &["lobby"]).await;
    let mut tab2 = server.client("alice", "acme", &["lobby"]).await;
    let mut bob = server.client("bob", "acme", &["lobby"]).await;
    for c in [&mut tab1, &mut tab2, &mut bob] {
        c.subscribe("lobby").await;
    }
    let ack = tab1
        .request(
            json!({"type":"publish","room":"lobby","event":"chat","data":[1,2,3]}),
            7,
        )
        .await;
    assert_eq!(ack, json!({"type":"ack","id":7}));
    for c in [&mut tab2, &mut bob] {
        let m = c.recv_type("message").await;
        assert_eq!(m["data"], json!([1, 2, 3]));
    }
    tab1.expect_silence(Duration::from_millis(300)).await;
}
