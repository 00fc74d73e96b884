//! Smoke runs of every scenario at tiny sizes against real nodes: they
//! prove the generator itself works — connects, publishes, accounts and
//! reports — and that a healthy node loses, duplicates and reorders
//! nothing. Seconds each, loopback only, bounded by `--duration`.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use fanout_gateway::config::HistoryRule;
use support::{Floor, Node, Redis, loadtest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_through_pings_and_measures_the_node() {
    // Pings every second and a 3 s idle timeout: a generator that did not
    // answer pings would lose every connection during the 3.5 s hold.
    let node = Node::spawn(|c| {
        c.session.ping_interval = Duration::from_secs(1);
        c.session.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let pid = std::process::id().to_string();
    let run = loadtest(&[
        "idle",
        "--node",
        &node.ws(),
        "--connections",
        "40",
        "--rooms",
        "4",
        "--settle",
        "200ms",
        "--hold",
        "3500ms",
        "--node-pid",
        &pid,
        "--codec",
        "mixed",
        "--auth",
        "frame",
        // No application pings: only answering the node's own pings keeps
        // the connections open through the hold.
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["scenario"], "idle");
    assert_eq!(r["connections"]["connected"], 40);
    let server = &r["server"];
    assert_eq!(server["connections"], 40, "{r}");
    assert!(server["rss_after_kib"].as_u64().unwrap() > 0, "{r}");
    assert!(server["hold_secs"].as_f64().unwrap() >= 3.0, "{r}");
    assert!(
        server["cpu_percent"].is_f64(),
        "CPU at rest is reported: {r}"
    );
    assert!(run.stderr.contains("idle — complete"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_everything_once_in_order() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "fanout",
        "--node",
        &node.ws(),
        "--subscribers",
        "20",
        "--publishes",
        "100",
        "--rate",
        "200",
        "--publishers",
        "2",
        "--payload-bytes",
        "64",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["delivery"]["expected"], 2000, "{r}");
    assert!(r["histogram"].as_str().unwrap().len() > 10, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_msgpack_and_two_bind_addresses() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "fanout",
        "--node",
        &node.ws(),
        "--bind",
        "127.0.0.1-2",
        "--codec",
        "msgpack",
        "--subscribers",
        "10",
        "--publishes",
        "50",
        "--rate",
        "100",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["codec"], "msgpack");
    assert_eq!(r["delivery"]["expected"], 500, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_ramp_steps_up_and_reports_each_step() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "fanout",
        "--node",
        &node.ws(),
        "--subscribers",
        "5",
        "--ramp",
        "--rate",
        "20",
        "--ramp-factor",
        "2",
        "--max-rate",
        "80",
        "--step",
        "500ms",
        "--p99-bound-ms",
        "2000",
        "--drain",
        "2s",
        "--duration",
        "40s",
    ])
    .await;
    let r = run.assert_clean();
    let ramp = &r["ramp"];
    let steps = ramp["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "20, 40, 80/s: {r}");
    for s in steps {
        assert_eq!(s["pass"], true, "{r}");
        assert_eq!(s["loss"], 0, "{r}");
        assert!(s["latency_ms"]["count"].as_u64().unwrap() > 0, "{r}");
    }
    assert_eq!(ramp["best_rate"], 80.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_route_each_publish_to_its_room_only() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "rooms",
        "--node",
        &node.ws(),
        "--connections",
        "24",
        "--room-size",
        "4",
        "--publishes",
        "60",
        "--rate",
        "200",
        "--publishers",
        "2",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    // Six rooms of four: each publish owes exactly four deliveries.
    assert_eq!(r["delivery"]["expected"], 240, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_ramp_steps_up_over_many_rooms_and_measures_each_step() {
    let node = Node::spawn(|_| {}).await;
    // The node runs in this process: its pid stands in for the node's and
    // for Redis's, so that both per-step CPU readings are exercised.
    let pid = std::process::id().to_string();
    let run = loadtest(&[
        "rooms",
        "--node",
        &node.ws(),
        "--connections",
        "24",
        "--room-size",
        "4",
        "--ramp",
        "--rate",
        "20",
        "--ramp-factor",
        "2",
        "--max-rate",
        "80",
        "--step",
        "500ms",
        "--p99-bound-ms",
        "2000",
        "--publishers",
        "3",
        "--drain",
        "2s",
        "--node-pid",
        &pid,
        "--redis-pid",
        &pid,
        "--duration",
        "40s",
    ])
    .await;
    let r = run.assert_clean();
    let ramp = &r["ramp"];
    let steps = ramp["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "20, 40, 80/s: {r}");
    let mut accepted = 0;
    for s in steps {
        assert_eq!(s["pass"], true, "{r}");
        assert_eq!(s["loss"], 0, "{r}");
        // Rooms of four: every publish owes four deliveries, in its step.
        assert_eq!(s["expected"], s["accepted"].as_u64().unwrap() * 4, "{r}");
        assert!(s["node_cpu_secs"].is_f64(), "{r}");
        assert!(s["redis_cpu_per_publish_us"].is_f64(), "{r}");
        accepted += s["accepted"].as_u64().unwrap();
    }
    assert_eq!(ramp["best_rate"], 80.0, "{r}");
    assert_eq!(ramp["best_achieved_rate"], steps[2]["achieved_rate"], "{r}");
    assert_eq!(r["publish"]["accepted"], accepted, "{r}");
    assert_eq!(r["delivery"]["expected"], accepted * 4, "{r}");
    assert!(r["node_cpu"]["cpu_secs"].is_f64(), "{r}");
    assert!(run.stderr.contains("knee:"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_ramp_over_two_processes_stops_them_at_the_same_step() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "rooms",
        "--node",
        &node.ws(),
        "--procs",
        "2",
        "--bind",
        "127.0.0.1-4",
        "--connections",
        "30",
        "--room-size",
        "3",
        "--ramp",
        "--rate",
        "20",
        "--ramp-factor",
        "2",
        "--max-rate",
        "40",
        "--step",
        "500ms",
        "--p99-bound-ms",
        "2000",
        "--publishers",
        "2",
        "--drain",
        "2s",
        "--duration",
        "40s",
    ])
    .await;
    let r = run.assert_clean();
    let steps = r["ramp"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "20, 40/s: {r}");
    let accepted: u64 = steps.iter().map(|s| s["accepted"].as_u64().unwrap()).sum();
    // Both processes' rooms, each publish owing three deliveries.
    assert_eq!(steps[0]["accepted"], 10, "{r}");
    assert_eq!(r["delivery"]["expected"], accepted * 3, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reach_every_connection_of_the_user() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "users",
        "--node",
        &node.ws(),
        "--users",
        "8",
        "--conns-per-user",
        "3",
        "--publishes",
        "40",
        "--rate",
        "200",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["delivery"]["expected"], 120, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_spread_over_a_two_node_cluster() {
    let redis = Redis::start().await;
    let a = Node::spawn_clustered(&redis.url(), "lt-a").await;
    let b = Node::spawn_clustered(&redis.url(), "lt-b").await;
    for _ in 0..100 {
        if a.cluster_nodes().await == 2 && b.cluster_nodes().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = loadtest(&[
        "users",
        "--node",
        &a.ws(),
        "--node",
        &b.ws(),
        "--users",
        "6",
        "--conns-per-user",
        "2",
        "--publishes",
        "30",
        "--rate",
        "100",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(r["delivery"]["expected"], 60, "{r}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_the_stable_subscribers_whole() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "churn",
        "--node",
        &node.ws(),
        "--subscribers",
        "10",
        "--publishes",
        "100",
        "--rate",
        "100",
        "--churn-rate",
        "20",
        "--churn-hold",
        "200ms",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    let churn = &r["churn"];
    assert!(churn["opened"].as_u64().unwrap() >= 10, "{r}");
    assert_eq!(churn["failed"], 0, "{r}");
    assert_eq!(churn["dropped"], 0, "{r}");
    assert_eq!(churn["opened"], churn["closed"], "{r}");
}

/// A node whose scenario rooms (`lt-<run>-room<i>`) keep their last
/// `size` messages.
async fn node_with_history(size: usize) -> Node {
    Node::spawn(|c| {
        c.history = vec![HistoryRule {
            tenant: "*".into(),
            rooms: "lt-*-room*".into(),
            size,
            ttl: Duration::from_secs(300),
        }];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_recover_every_message_exactly_once() {
    let node = node_with_history(100).await;
    let ws = node.ws();
    // 6 clients (10/s × (300 ms + 300 ms)), each away 300 ms at a time
    // while 150 messages go out over 1.5 s: ~30 messages missed per absence.
    let churn = |mode: &'static str| {
        let ws = ws.clone();
        async move {
            loadtest(&[
                "churn",
                "--node",
                &ws,
                "--subscribers",
                "4",
                "--publishes",
                "150",
                "--rate",
                "100",
                "--publishers",
                "2",
                "--churn-rate",
                "10",
                "--churn-hold",
                "300ms",
                "--churn-away",
                "300ms",
                "--drain",
                "3s",
                mode,
                "--duration",
                "30s",
            ])
            .await
        }
    };

    let run = churn("--recover").await;
    let r = run.assert_clean();
    let rec = &r["recovery"];
    assert_eq!(rec["since"], true, "{r}");
    assert_eq!(rec["opened"], 6, "{r}");
    let d = &rec["delivery"];
    assert_eq!(d["expected"], 150 * 6, "{r}");
    assert_eq!(d["received"], d["expected"], "{r}");
    assert_eq!(d["loss"], 0, "{r}");
    assert_eq!(d["duplicates"], 0, "{r}");
    assert_eq!(d["order_violations"], 0, "{r}");
    assert_eq!(d["unexpected"], 0, "{r}");
    let reconnects = rec["reconnects"].as_u64().unwrap();
    assert!(reconnects >= 6, "every client came back at least once: {r}");
    assert_eq!(rec["recovered"], reconnects, "{r}");
    assert_eq!(rec["not_recovered"], 0, "{r}");
    assert_eq!(rec["no_position"], 0, "{r}");
    assert!(
        rec["replayed"].as_u64().unwrap() > 0,
        "what was missed came as replay: {r}"
    );
    assert!(
        run.stderr.contains("recovery: 6/6 clients"),
        "{}",
        run.stderr
    );

    // The same clients without `since` miss what was published while they
    // were away: the check can fail.
    let run = churn("--reconnect").await;
    let r = &run.result;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rec = &r["recovery"];
    assert_eq!(rec["since"], false, "{r}");
    assert!(rec["reconnects"].as_u64().unwrap() >= 6, "{r}");
    assert_eq!(rec["recovered"], 0, "{r}");
    assert_eq!(rec["replayed"], 0, "{r}");
    assert!(rec["delivery"]["loss"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(rec["delivery"]["duplicates"], 0, "{r}");
    // The stable subscribers are unaffected either way.
    assert_eq!(r["delivery"]["loss"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_fills_rooms_and_reads_back_what_they_keep() {
    let pid = std::process::id().to_string();
    for keep in [true, false] {
        let node = if keep {
            node_with_history(8).await
        } else {
            Node::spawn(|_| {}).await
        };
        let run = loadtest(&[
            "history",
            "--node",
            &node.ws(),
            "--rooms",
            "20",
            "--messages",
            "10",
            "--batch",
            "64",
            "--payload-bytes",
            "100",
            "--settle",
            "100ms",
            "--node-pid",
            &pid,
            "--duration",
            "20s",
        ])
        .await;
        let r = &run.result;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(r["complete"], true, "{r}");
        assert_eq!(r["errors"], serde_json::json!([]), "{r}");
        assert_eq!(r["publish"]["accepted"], 200, "{r}");
        let h = &r["history"];
        assert_eq!(h["rooms"], 20, "{r}");
        assert!(h["rss_after_kib"].as_u64().unwrap() > 0, "{r}");
        if keep {
            // Ten published, the rule keeps eight.
            assert_eq!(h["kept_per_room"], 8, "{r}");
            assert!(h["history_bytes_after"].as_f64().unwrap() > 0.0, "{r}");
        } else {
            assert!(h["kept_per_room"].is_null(), "{r}");
        }
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_runs_unchanged_against_the_floor() {
    let floor = Floor::start().await;
    let run = loadtest(&[
        "fanout",
        "--node",
        &floor.ws(),
        "--codec",
        "mixed",
        "--subscribers",
        "20",
        "--publishes",
        "100",
        "--rate",
        "200",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["delivery"]["expected"], 2000, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_merge_into_one_exact_result() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "fanout",
        "--node",
        &node.ws(),
        "--procs",
        "2",
        "--bind",
        "127.0.0.1-4",
        "--subscribers",
        "21",
        "--publishes",
        "61",
        "--rate",
        "200",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["procs"], 2);
    assert_eq!(r["connections"]["connected"], 21, "{r}");
    assert_eq!(r["publish"]["accepted"], 61, "{r}");
    // Both processes' subscribers owe both processes' publishes.
    assert_eq!(r["delivery"]["expected"], 21 * 61, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_split_rooms_whole() {
    let node = Node::spawn(|_| {}).await;
    let run = loadtest(&[
        "rooms",
        "--node",
        &node.ws(),
        "--procs",
        "2",
        "--connections",
        "18",
        "--room-size",
        "3",
        "--publishes",
        "40",
        "--rate",
        "200",
        "--duration",
        "30s",
    ])
    .await;
    let r = run.assert_clean();
    assert_eq!(r["delivery"]["expected"], 120, "{r}");
}

#[tokio::test]
async fn targets_and_sources_off_loopback_are_refused_before_any_traffic() {
    for args in [
        &["idle", "--node", "ws://10.0.0.1:8080"][..],
        &["fanout", "--node", "ws://192.168.1.1:8080/ws"][..],
        &["rooms", "--node", "ws://example.com:8080"][..],
        &["users", "--bind", "10.0.0.2"][..],
    ] {
        let run = loadtest(args).await;
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("loopback"), "{args:?}: {}", run.stderr);
        assert!(run.result.is_null(), "{args:?}");
    }
}

#[tokio::test]
async fn a_share_over_the_file_limit_names_the_procs_needed() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if hard > 10_000_000 {
        return; // effectively unlimited here; nothing to refuse
    }
    let too_many = (hard + 1000).to_string();
    let run = loadtest(&["idle", "--connections", &too_many]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("--procs"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_caps_a_run_that_asks_for_too_much() {
    let node = Node::spawn(|_| {}).await;
    let started = std::time::Instant::now();
    let run = loadtest(&[
        "fanout",
        "--node",
        &node.ws(),
        "--subscribers",
        "5",
        "--publishes",
        "100000",
        "--rate",
        "50",
        "--duration",
        "3s",
        "--drain",
        "1s",
    ])
    .await;
    let took = started.elapsed();
    let r = &run.result;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(r["complete"], false, "{r}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // What was accepted before the cap still arrived, and is all that is owed.
    let d = &r["delivery"];
    assert!(d["expected"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(d["loss"], 0, "{r}");
    assert!(
        r["errors"][0].as_str().unwrap().contains("--duration"),
        "{r}"
    );
}
