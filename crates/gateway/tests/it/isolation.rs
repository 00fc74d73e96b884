//! Tenant isolation (docs/protocol.md §1): two tenants with equal room and user
//! names never see each other's messages, presence or disconnects.
//!
//! Every test first proves the intended recipient got its frame; by then the
//! node has already queued whatever it would (wrongly) have sent across, so a
//! short silence on the other tenant's sockets is conclusive.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, TestServer};

const QUIET: Duration = Duration::from_millis(250);

/// `members` sorted by user (the contract does not fix an order).
fn members(v: &Value) -> Value {
    let mut m = v["members"].as_array().cloned().unwrap_or_default();
    m.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
    Value::Array(m)
}

/// One user `u1` subscribed to `lobby` in each of `acme` and `globex`.
async fn twins(server: &TestServer) -> (Client, Client) {
    let mut acme = server.client("u1", "acme", &["lobby"]).await;
    let mut globex = server.client("u1", "globex", &["lobby"]).await;
    acme.subscribe("lobby").await;
    globex.subscribe("lobby").await;
    (acme, globex)
}

#[tokio::test]
async fn room_publishes_stay_in_their_tenant() {
    let server = TestServer::spawn().await;
    let (mut acme, mut globex) = twins(&server).await;

    // Over HTTP.
    let id = server
        .publish_room("acme", "lobby", "chat", json!("for acme"))
        .await;
    let m = acme.recv_type("message").await;
    assert_eq!(
        (m["id"].as_str(), &m["data"]),
        (Some(id.as_str()), &json!("for acme"))
    );
    globex.expect_silence(QUIET).await;

    // From a client of the other tenant, in the room of the same name.
    let mut globex2 = server.client("u2", "globex", &["lobby"]).await;
    let ack = globex2
        .request(
            json!({"type":"publish","room":"lobby","event":"chat","data":"for globex"}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = globex.recv_type("message").await;
    assert_eq!(m["data"], "for globex");
    acme.expect_silence(QUIET).await;
}

#[tokio::test]
async fn user_publishes_stay_in_their_tenant() {
    let server = TestServer::spawn().await;
    let (mut acme, mut globex) = twins(&server).await;
    let mut acme_tab = server.client("u1", "acme", &[]).await;
    let (status, body) = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","user":"u1","event":"notify","data":1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for c in [&mut acme, &mut acme_tab] {
        let m = c.recv_type("message").await;
        assert_eq!((m["scope"].as_str(), &m["id"]), (Some("user"), &body["id"]));
    }
    globex.expect_silence(QUIET).await;
}

#[tokio::test]
async fn tenant_wide_publishes_stay_in_their_tenant() {
    let server = TestServer::spawn().await;
    let (mut acme, mut globex) = twins(&server).await;
    let mut globex_idle = server.client("u9", "globex", &[]).await;
    let (status, body) = server
        .post(
            "/v1/publish",
            &json!({"tenant":"acme","event":"maintenance","data":null}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let m = acme.recv_type("message").await;
    assert_eq!(
        (m["scope"].as_str(), &m["id"]),
        (Some("tenant"), &body["id"])
    );
    globex.expect_silence(QUIET).await;
    globex_idle.expect_silence(QUIET).await;
}

#[tokio::test]
async fn presence_queries_see_only_their_tenant() {
    let server = TestServer::spawn().await;
    let (mut acme, mut globex) = twins(&server).await;
    // A second acme connection of u1 and an acme-only user.
    let mut acme_tab = server.client("u1", "acme", &["lobby"]).await;
    let mut acme_u2 = server.client("u2", "acme", &["lobby"]).await;
    acme_tab.subscribe("lobby").await;
    acme_u2.subscribe("lobby").await;

    let acme_members = json!([{"user":"u1","conns":2},{"user":"u2","conns":1}]);
    let globex_members = json!([{"user":"u1","conns":1}]);

    let (s, body) = server.get("/v1/tenants/acme/rooms/lobby/presence").await;
    assert_eq!((s, members(&body)), (200, acme_members.clone()), "{body}");
    let (s, body) = server.get("/v1/tenants/globex/rooms/lobby/presence").await;
    assert_eq!((s, members(&body)), (200, globex_members.clone()), "{body}");

    let reply = acme
        .request(json!({"type":"presence","room":"lobby"}), 5)
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(members(&reply), acme_members, "{reply}");
    let reply = globex
        .request(json!({"type":"presence","room":"lobby"}), 6)
        .await;
    assert_eq!(members(&reply), globex_members, "{reply}");
}

#[tokio::test]
async fn join_and_leave_events_stay_in_their_tenant() {
    let server = TestServer::spawn().await;
    let mut watcher = server.client("w", "acme", &["lobby"]).await;
    let ack = watcher
        .request(
            json!({"type":"subscribe","room":"lobby","presence_events":true}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut foreign_watcher = server.client("w", "globex", &["lobby"]).await;
    let ack = foreign_watcher
        .request(
            json!({"type":"subscribe","room":"lobby","presence_events":true}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");

    // globex/u7 joins and leaves first, then acme/u7 does the same. The acme
    // watcher's first presence frames must be acme's: a leak would come first.
    let mut g7 = server.client("u7", "globex", &["lobby"]).await;
    g7.subscribe("lobby").await;
    let mut a7 = server.client("u7", "acme", &["lobby"]).await;
    a7.subscribe("lobby").await;
    let j = foreign_watcher.recv().await;
    assert_eq!(j, json!({"type":"join","room":"lobby","user":"u7"}));
    let j = watcher.recv().await;
    assert_eq!(j, json!({"type":"join","room":"lobby","user":"u7"}));

    let ack = g7
        .request(json!({"type":"unsubscribe","room":"lobby"}), 2)
        .await;
    assert_eq!(ack["type"], "ack");
    let l = foreign_watcher.recv().await;
    assert_eq!(l, json!({"type":"leave","room":"lobby","user":"u7"}));
    // The acme watcher must not see globex's leave (acme/u7 is still there).
    watcher.expect_silence(QUIET).await;

    let ack = a7
        .request(json!({"type":"unsubscribe","room":"lobby"}), 2)
        .await;
    assert_eq!(ack["type"], "ack");
    let l = watcher.recv().await;
    assert_eq!(l, json!({"type":"leave","room":"lobby","user":"u7"}));
    foreign_watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn disconnect_user_stays_in_its_tenant() {
    let server = TestServer::spawn().await;
    let (mut acme, mut globex) = twins(&server).await;
    let (status, body) = server
        .post("/v1/tenants/acme/users/u1/disconnect", &json!({}))
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    assert_eq!(acme.expect_close().await.0, 4001);
    globex.expect_silence(QUIET).await;
    globex.assert_alive().await;
    // Still a member of globex's lobby, alone there.
    let (s, body) = server.get("/v1/tenants/globex/rooms/lobby/presence").await;
    assert_eq!((s, members(&body)), (200, json!([{"user":"u1","conns":1}])));
}
