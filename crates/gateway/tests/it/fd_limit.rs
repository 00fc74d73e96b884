//! Running out of file descriptors is a counted, backed-off error, never a
//! hot accept loop, and the node recovers when descriptors free up. The real
//! binary runs under `ulimit -n 64`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::redis_support::{eventually, free_port, signal};

fn accept_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("fanout_accept_errors_total") && l.contains("fd_exhausted"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get(url: &str) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

#[tokio::test]
async fn out_of_descriptors_is_counted_backed_off_and_recovered_from() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {}",
            env!("CARGO_BIN_EXE_fanout")
        ))
        .env("FANOUT_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fanout under ulimit");
    let up = eventually(Duration::from_secs(10), async || {
        get(&format!("{base}/healthz")).await.is_some()
    })
    .await;
    assert!(up, "node did not start under ulimit -n 64");

    // Far more connections than the node has descriptors for.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            held.push(s);
        }
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let window = started.elapsed();
    drop(held);

    // Descriptors are free again: the node serves, and its count shows the
    // exhaustion was met with backoff (a hot loop would count thousands).
    let mut metrics = String::new();
    let served = eventually(Duration::from_secs(10), async || {
        match get(&format!("{base}/metrics")).await {
            Some(m) => {
                metrics = m;
                true
            }
            None => false,
        }
    })
    .await;
    assert!(served, "node did not recover after descriptors were freed");
    let errors = accept_errors(&metrics);
    assert!(errors >= 1.0, "exhaustion was not counted:\n{metrics}");
    let max_with_backoff = 2.0 * window.as_secs_f64() / 0.010;
    assert!(
        errors < max_with_backoff.min(200.0),
        "{errors} accept errors in {window:?}: no backoff"
    );

    signal(child.id().expect("pid"), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut log).await;
    }
    assert!(log.contains("descriptor limit"), "{log}");
    assert!(log.contains("accept failed; backing off"), "{log}");
}
