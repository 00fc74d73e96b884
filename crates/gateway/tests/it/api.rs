//! The backend HTTP API (docs/protocol.md §5) over real HTTP, checked at the sockets.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ACME_KEY, API_KEY, Client, TestServer, assert_api_error, now_millis};

const QUIET: Duration = Duration::from_millis(250);

/// Asserts a delivered `message` frame and returns it.
async fn expect_message(c: &mut Client, scope: &str, event: &str, data: &Value, id: &str) -> Value {
    let m = c.recv().await;
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["scope"], scope, "{m}");
    assert_eq!(m["event"], event, "{m}");
    assert_eq!(&m["data"], data, "{m}");
    assert_eq!(m["id"], id, "{m}");
    m
}

/// Publishes `body` with the unscoped key, asserts 202, returns the id.
async fn publish(server: &TestServer, body: Value) -> String {
    let (status, resp) = server.post("/v1/publish", &body).await;
    assert_eq!(status, 202, "{resp}");
    resp["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn room_publish_reaches_subscribers_only_with_id_and_ts() {
    let server = TestServer::spawn().await;
    let mut sub = server.client("u1", "acme", &["lobby"]).await;
    let mut other = server.client("u2", "acme", &["lobby"]).await;
    sub.subscribe("lobby").await;

    let data = json!({"text": "hi", "n": [1, 2]});
    let before = now_millis();
    let id = publish(
        &server,
        json!({"tenant":"acme","room":"lobby","event":"chat","data":data}),
    )
    .await;
    let after = now_millis();
    let m = expect_message(&mut sub, "room", "chat", &data, &id).await;
    assert_eq!(m["room"], "lobby");
    let ts = m["ts"].as_u64().expect("ts is an integer");
    assert!(
        (before..=after).contains(&ts),
        "ts {ts} not in [{before}, {after}]"
    );
    // Not subscribed to the room: nothing.
    other.expect_silence(QUIET).await;
}

#[tokio::test]
async fn user_publish_reaches_every_connection_of_that_user_and_nobody_else() {
    let server = TestServer::spawn().await;
    let mut tab1 = server.client("u42", "acme", &["lobby"]).await;
    let mut tab2 = server.client("u42", "acme", &[]).await;
    let mut bob = server.client("bob", "acme", &["lobby"]).await;
    tab1.subscribe("lobby").await;
    bob.subscribe("lobby").await;

    let data = json!({"unread": 3});
    let id = publish(
        &server,
        json!({"tenant":"acme","user":"u42","event":"notify","data":data}),
    )
    .await;
    for c in [&mut tab1, &mut tab2] {
        let m = expect_message(c, "user", "notify", &data, &id).await;
        assert!(m.get("room").is_none(), "user message has no room: {m}");
        assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
    bob.expect_silence(QUIET).await;
}

#[tokio::test]
async fn tenant_publish_reaches_every_connection_of_the_tenant_only() {
    let server = TestServer::spawn().await;
    let mut a = server.client("u1", "acme", &["lobby"]).await;
    let mut b = server.client("u2", "acme", &[]).await;
    let mut foreign = server.client("u1", "globex", &["lobby"]).await;
    a.subscribe("lobby").await;
    foreign.subscribe("lobby").await;

    let data = json!({"at": "02:00"});
    let id = publish(
        &server,
        json!({"tenant":"acme","event":"maintenance","data":data}),
    )
    .await;
    for c in [&mut a, &mut b] {
        let m = expect_message(c, "tenant", "maintenance", &data, &id).await;
        assert!(m.get("room").is_none(), "{m}");
    }
    foreign.expect_silence(QUIET).await;
}

#[tokio::test]
async fn batch_answers_ids_in_order_and_delivers_in_order() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    c.subscribe("lobby").await;
    let messages: Vec<Value> = (0..5)
        .map(|i| json!({"tenant":"acme","room":"lobby","event":format!("e{i}"),"data":{"i":i}}))
        .chain([json!({"tenant":"acme","user":"u1","event":"last","data":null})])
        .collect();
    let (status, body) = server
        .post("/v1/publish/batch", &json!({"messages": messages}))
        .await;
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id string").to_owned())
        .collect();
    assert_eq!(ids.len(), 6, "{body}");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "ids are distinct: {ids:?}");
    for (i, id) in ids.iter().take(5).enumerate() {
        expect_message(&mut c, "room", &format!("e{i}"), &json!({"i": i}), id).await;
    }
    expect_message(&mut c, "user", "last", &Value::Null, &ids[5]).await;
}

#[tokio::test]
async fn batch_with_one_invalid_entry_is_refused_whole() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    c.subscribe("lobby").await;
    let ok = json!({"tenant":"acme","room":"lobby","event":"chat","data":1});

    let bad_name = json!({"tenant":"acme","room":"lobby","event":"bad event","data":2});
    let got = server
        .post(
            "/v1/publish/batch",
            &json!({"messages": [ok, bad_name, ok]}),
        )
        .await;
    assert_api_error(&got, 400, "invalid_name");
    let msg = got.1["error"]["message"].as_str().unwrap();
    assert!(msg.contains("messages[1]"), "names the entry: {msg}");

    let both = json!({"tenant":"acme","room":"lobby","user":"u1","event":"chat","data":3});
    let got = server
        .post("/v1/publish/batch", &json!({"messages": [ok, ok, both]}))
        .await;
    assert_eq!(got.0, 400, "{}", got.1);
    let msg = got.1["error"]["message"].as_str().unwrap();
    assert!(msg.contains("messages[2]"), "names the entry: {msg}");

    // A tenant-limited key with one entry of another tenant: 403, nothing sent.
    let foreign = json!({"tenant":"globex","room":"lobby","event":"chat","data":4});
    let got = server
        .post_with_key(
            "/v1/publish/batch",
            &json!({"messages": [ok, foreign]}),
            ACME_KEY,
        )
        .await;
    assert_eq!(got.0, 403, "{}", got.1);

    // Nothing of the refused batches arrived: the first frame is the marker.
    let marker = publish(
        &server,
        json!({"tenant":"acme","room":"lobby","event":"marker"}),
    )
    .await;
    expect_message(&mut c, "room", "marker", &Value::Null, &marker).await;
}

fn sorted_members(body: &Value) -> Vec<(String, u64)> {
    let mut m: Vec<(String, u64)> = body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {body}"))
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_owned(),
                m["conns"].as_u64().unwrap(),
            )
        })
        .collect();
    m.sort();
    m
}

#[tokio::test]
async fn presence_lists_users_with_connection_counts() {
    let server = TestServer::spawn().await;
    let mut clients = Vec::new();
    for user in ["u42", "u42", "u7"] {
        let mut c = server.client(user, "acme", &["lobby"]).await;
        c.subscribe("lobby").await;
        clients.push(c);
    }
    let _idle = server.client("u9", "acme", &["lobby"]).await;
    let (status, body) = server.get("/v1/tenants/acme/rooms/lobby/presence").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sorted_members(&body),
        vec![("u42".into(), 2), ("u7".into(), 1)]
    );
    let (status, body) = server.get("/v1/tenants/acme/rooms/empty/presence").await;
    assert_eq!((status, body), (200, json!({"members": []})));
}

#[tokio::test]
async fn disconnect_closes_all_connections_of_the_user_with_4001() {
    let server = TestServer::spawn().await;
    let mut tab1 = server.client("u42", "acme", &["lobby"]).await;
    let mut tab2 = server.client("u42", "acme", &[]).await;
    let mut bob = server.client("bob", "acme", &[]).await;
    tab1.subscribe("lobby").await;
    let (status, body) = server
        .post("/v1/tenants/acme/users/u42/disconnect", &json!({}))
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    for c in [&mut tab1, &mut tab2] {
        assert_eq!(c.expect_close().await.0, 4001);
    }
    bob.expect_silence(QUIET).await;
    bob.assert_alive().await;
}

#[tokio::test]
async fn stats_count_connections_and_rooms() {
    let server = TestServer::spawn().await;
    let (status, body) = server.get("/v1/stats").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"]["connections"], 0, "{body}");
    assert_eq!(body["node"]["rooms"], 0, "{body}");
    let mut a = server.client("u1", "acme", &["*"]).await;
    let mut b = server.client("u2", "acme", &["*"]).await;
    let _c = server.client("u3", "globex", &["*"]).await;
    a.subscribe("lobby").await;
    a.subscribe("doc:1").await;
    b.subscribe("lobby").await;
    let (status, body) = server.get("/v1/stats").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"]["id"], server.node.id(), "{body}");
    assert_eq!(body["node"]["connections"], 3, "{body}");
    assert_eq!(body["node"]["rooms"], 2, "{body}");
    assert_eq!(body["cluster"]["nodes"], 1, "{body}");
    assert_eq!(body["cluster"]["connections"], 3, "{body}");
    assert_eq!(body["cluster"]["rooms"], 2, "{body}");
}

#[tokio::test]
async fn missing_or_unknown_key_is_401() {
    let server = TestServer::spawn().await;
    let body = br#"{"tenant":"acme","room":"lobby","event":"chat"}"#.to_vec();
    for key in [None, Some("not-a-configured-key-000"), Some("")] {
        for (method, path, body) in [
            (Method::POST, "/v1/publish", body.clone()),
            (Method::GET, "/v1/stats", Vec::new()),
            (
                Method::GET,
                "/v1/tenants/acme/rooms/lobby/presence",
                Vec::new(),
            ),
        ] {
            let got = server.send_http(method, path, key, None, body).await;
            assert_api_error(&got, 401, "unauthorized");
        }
    }
}

#[tokio::test]
async fn tenant_limited_key_may_act_on_its_tenant_only() {
    let server = TestServer::spawn().await;
    let mut globex = server.client("u1", "globex", &["lobby"]).await;
    globex.subscribe("lobby").await;

    let to = |tenant: &str| json!({"tenant":tenant,"room":"lobby","event":"chat","data":1});
    let got = server
        .post_with_key("/v1/publish", &to("globex"), ACME_KEY)
        .await;
    assert_eq!(got.0, 403, "{}", got.1);
    assert!(got.1["error"]["code"].is_string(), "{}", got.1);
    let got = server
        .post_with_key("/v1/publish", &to("acme"), ACME_KEY)
        .await;
    assert_eq!(got.0, 202, "{}", got.1);

    let got = server
        .get_with_key("/v1/tenants/globex/rooms/lobby/presence", ACME_KEY)
        .await;
    assert_eq!(got.0, 403, "{}", got.1);
    let got = server
        .get_with_key("/v1/tenants/acme/rooms/lobby/presence", ACME_KEY)
        .await;
    assert_eq!(got.0, 200, "{}", got.1);

    let got = server
        .post_with_key(
            "/v1/tenants/globex/users/u1/disconnect",
            &json!({}),
            ACME_KEY,
        )
        .await;
    assert_eq!(got.0, 403, "{}", got.1);
    // Neither the refused publish nor the refused disconnect touched globex.
    globex.expect_silence(QUIET).await;
    globex.assert_alive().await;
}

#[tokio::test]
async fn msgpack_bodies_are_accepted() {
    let server = TestServer::spawn().await;
    let mut c = server.client("u1", "acme", &["lobby"]).await;
    c.subscribe("lobby").await;
    let data = json!({"text": "hé", "list": [1, -2, 3.5, true, null]});
    let body = json!({"tenant":"acme","room":"lobby","event":"chat","data":data});
    let bytes = rmp_serde::to_vec_named(&body).unwrap();
    let (status, resp) = server
        .send_http(
            Method::POST,
            "/v1/publish",
            Some(API_KEY),
            Some("application/msgpack"),
            bytes,
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    expect_message(&mut c, "room", "chat", &data, resp["id"].as_str().unwrap()).await;

    let batch = json!({"messages": [body, body]});
    let bytes = rmp_serde::to_vec_named(&batch).unwrap();
    let (status, resp) = server
        .send_http(
            Method::POST,
            "/v1/publish/batch",
            Some(API_KEY),
            Some("application/msgpack"),
            bytes,
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    for id in resp["ids"].as_array().unwrap() {
        expect_message(&mut c, "room", "chat", &data, id.as_str().unwrap()).await;
    }
}

#[tokio::test]
async fn invalid_names_are_400_invalid_name() {
    let server = TestServer::spawn().await;
    let long = "x".repeat(129);
    for body in [
        json!({"tenant":"acme","room":"bad room","event":"chat"}),
        json!({"tenant":"acme","room":"lobby","event":long}),
        json!({"tenant":"","room":"lobby","event":"chat"}),
        json!({"tenant":"ac/me","event":"chat"}),
        json!({"tenant":"acme","user":"u#1","event":"chat"}),
        json!({"tenant":"acme","room":"","event":"chat"}),
    ] {
        let got = server.post("/v1/publish", &body).await;
        assert_api_error(&got, 400, "invalid_name");
    }
    let got = server
        .get("/v1/tenants/acme/rooms/bad%20room/presence")
        .await;
    assert_api_error(&got, 400, "invalid_name");
    let got = server
        .post("/v1/tenants/acme/users/u%231/disconnect", &json!({}))
        .await;
    assert_api_error(&got, 400, "invalid_name");
}

#[tokio::test]
async fn oversized_message_and_body_are_413() {
    let server = TestServer::spawn_with(|c| {
        c.limits.max_message_bytes = 1024;
        c.limits.max_http_body_bytes = 4096;
    })
    .await;
    let with =
        |n: usize| json!({"tenant":"acme","room":"lobby","event":"chat","data":"a".repeat(n)});
    let got = server.post("/v1/publish", &with(500)).await;
    assert_eq!(got.0, 202, "{}", got.1);
    let got = server.post("/v1/publish", &with(2000)).await;
    assert_api_error(&got, 413, "too_large");
    let got = server.post("/v1/publish", &with(8000)).await;
    assert_api_error(&got, 413, "too_large");
    let batch = json!({"messages": [with(10), with(2000)]});
    let got = server.post("/v1/publish/batch", &batch).await;
    assert_eq!(got.0, 413, "{}", got.1);
}

#[tokio::test]
async fn bad_content_type_malformed_bodies_unknown_routes_and_methods() {
    let server = TestServer::spawn().await;
    let body = br#"{"tenant":"acme","room":"lobby","event":"chat"}"#.to_vec();
    let post = |ct: Option<&'static str>, body: Vec<u8>| {
        server.send_http(Method::POST, "/v1/publish", Some(API_KEY), ct, body)
    };
    assert_eq!(post(Some("application/json"), body.clone()).await.0, 202);
    for (ct, body, status, code) in [
        ("text/plain", body, 415, "unsupported_media_type"),
        (
            "application/json",
            b"{\"tenant\":".to_vec(),
            400,
            "bad_request",
        ),
        (
            "application/json",
            br#"{"tenant":"acme"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "application/msgpack",
            b"\xc1\xc1".to_vec(),
            400,
            "bad_request",
        ),
    ] {
        assert_api_error(&post(Some(ct), body).await, status, code);
    }
    for path in ["/v1/nope", "/nope", "/v1/tenants/acme/rooms/lobby"] {
        let got = server
            .send_http(Method::GET, path, Some(API_KEY), None, Vec::new())
            .await;
        assert_api_error(&got, 404, "not_found");
    }
    let got = server
        .send_http(Method::GET, "/v1/publish", Some(API_KEY), None, Vec::new())
        .await;
    assert_api_error(&got, 405, "method_not_allowed");
}
