//! `fanout-floor`: the minimal broadcast server fanout is measured against
//! (see `fanout_loadtest::floor`).
//!
//! ```text
//! fanout-floor [--listen 127.0.0.1:8090]
//! ```
//!
//! Prints `listening on ADDR` on stdout once bound (port 0 picks a free
//! port), serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use fanout_loadtest::floor::FloorServer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The floor: a broadcast server with no auth, no routing and the node's
/// buffer sizes. Loopback only.
#[derive(Debug, Parser)]
#[command(name = "fanout-floor", version, about)]
struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = fanout_loadtest::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let server = match FloorServer::bind(args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        token.cancel();
    });
    match server.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
