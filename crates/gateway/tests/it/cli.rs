//! The `fanout` binary: genconfig, token, config errors, zero-config start and SIGTERM.

use std::process::{Output, Stdio};
use std::time::Duration;

use fanout_gateway::Config;
use fanout_gateway::auth::TokenVerifier;
use fanout_gateway::config::{AuthConfig, DEV_API_KEY};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::support::{Client, WAIT};

/// How long a command that should fail fast may take.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The binary with no `FANOUT_*` or `RUST_LOG` from the test's environment.
fn fanout() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fanout"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FANOUT_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn output(cmd: &mut Command) -> Output {
    let child = cmd.spawn().expect("spawn fanout");
    tokio::time::timeout(EXIT_WAIT, child.wait_with_output())
        .await
        .expect("fanout exits in time")
        .expect("fanout output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn genconfig_prints_a_config_the_node_accepts() {
    let out = output(fanout().arg("genconfig")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[limits]") && text.contains("max_frame_bytes"),
        "{text}"
    );
    let config = Config::from_toml_str(&text).expect("genconfig output is valid");
    assert_eq!(config.limits.max_frame_bytes, 65_536);
}

async fn mint_with_binary() -> String {
    let out = output(fanout().args([
        "token",
        "--sub",
        "u1",
        "--tenant",
        "t1",
        "--rooms",
        "lobby,doc:*",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token
}

#[tokio::test]
async fn token_is_accepted_by_a_zero_config_verifier() {
    let token = mint_with_binary().await;
    let verifier = TokenVerifier::new(&AuthConfig::default(), true).unwrap();
    let grant = verifier.verify(&token).expect("dev verifier accepts it");
    assert_eq!(grant.tenant.as_str(), "t1");
    assert_eq!(grant.user.as_str(), "u1");
    assert!(grant.can_subscribe("lobby") && grant.can_subscribe("doc:42:x"));
    assert!(!grant.can_subscribe("lobby2") && !grant.can_subscribe("doc"));
    assert!(grant.can_publish("lobby"), "--publish defaults to --rooms");
}

#[tokio::test]
async fn bad_config_file_fails_naming_the_field() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let port = free_port();
    for (name, text) in [
        ("zero.toml", "[limits]\nmax_frame_bytes = 0\n"),
        ("type.toml", "[limits]\nmax_frame_bytes = \"big\"\n"),
    ] {
        let path = dir.join(format!("cli-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let out = output(
            fanout()
                .arg("--config")
                .arg(&path)
                .env("FANOUT_LISTEN", format!("127.0.0.1:{port}")),
        )
        .await;
        let _ = std::fs::remove_file(&path);
        assert!(!out.status.success(), "{name} must be refused");
        let err = stderr(&out);
        assert!(err.contains("limits.max_frame_bytes"), "{name}: {err}");
    }
}

#[tokio::test]
async fn bad_environment_value_fails_naming_the_field() {
    let out = output(
        fanout()
            .env("FANOUT_LIMITS__MAX_FRAME_BYTES", "abc")
            .env("FANOUT_LISTEN", format!("127.0.0.1:{}", free_port())),
    )
    .await;
    assert!(!out.status.success());
    // figment spells environment keys upper-case ("LIMITS.MAX_FRAME_BYTES").
    let err = stderr(&out);
    assert!(
        err.to_ascii_lowercase().contains("limits.max_frame_bytes"),
        "{err}"
    );
    assert!(err.contains("FANOUT_"), "names the source: {err}");
}

#[tokio::test]
async fn dev_mode_refuses_a_non_loopback_listen_address_before_binding() {
    // Hold the port on loopback: had the node tried to bind 0.0.0.0 on it,
    // it would fail with "address in use" instead of the config error.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = output(fanout().env("FANOUT_LISTEN", format!("0.0.0.0:{port}"))).await;
    drop(held);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("development mode"), "{err}");
    assert!(err.contains("loopback"), "{err}");
    assert!(
        !err.contains("cannot listen"),
        "validated before binding: {err}"
    );
}

/// Forwards the child's stderr lines; the task drains it until EOF.
fn stderr_lines(child: &mut Child) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    rx
}

#[tokio::test]
async fn zero_config_node_starts_serves_and_exits_0_on_sigterm() {
    let token = mint_with_binary().await;
    let port = free_port();
    let grace = Duration::from_secs(3);
    let mut child = fanout()
        .env("FANOUT_LISTEN", format!("127.0.0.1:{port}"))
        .env("FANOUT_SHUTDOWN__GRACE", "3s")
        .env("FANOUT_SHUTDOWN__READINESS_DELAY", "0s")
        .env("FANOUT_SHUTDOWN__DRAIN_WINDOW", "0s")
        .spawn()
        .expect("spawn fanout");
    let mut lines = stderr_lines(&mut child);

    // The banner is printed once the listener is bound; the API key line is in it.
    let mut banner = String::new();
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.recv().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains(DEV_API_KEY) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "no banner; stderr so far:\n{banner}");
    assert!(banner.contains("DEVELOPMENT MODE"), "{banner}");
    assert!(banner.contains(DEV_API_KEY), "{banner}");

    let base = format!("http://127.0.0.1:{port}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // The token minted by `fanout token` is accepted; its room patterns apply.
    let mut client =
        Client::connect(&format!("ws://127.0.0.1:{port}/ws"), None, Some(&token)).await;
    let welcome = client.recv().await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["tenant"].as_str()),
        (Some("welcome"), Some("t1"))
    );
    client.subscribe("lobby").await;
    client.subscribe("doc:42").await;
    let denied = client
        .request(json!({"type":"subscribe","room":"other"}), 9)
        .await;
    assert_eq!(
        (denied["type"].as_str(), denied["code"].as_u64()),
        (Some("error"), Some(403))
    );

    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/publish"))
        .bearer_auth(DEV_API_KEY)
        .json(&json!({"tenant":"t1","room":"lobby","event":"chat","data":"hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"].clone();
    let m = client.recv_type("message").await;
    assert_eq!((&m["id"], &m["data"]), (&id, &json!("hi")));

    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    assert_eq!(client.expect_close().await.0, 1012);
    let status = tokio::time::timeout(grace, child.wait())
        .await
        .expect("exits within shutdown.grace")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status}");
}
