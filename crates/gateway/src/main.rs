//! The `fanout` binary: run a node, mint a development token, print a config.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use fanout_gateway::auth::{DevTokenRequest, mint_hs256};
use fanout_gateway::config::{DEV_API_KEY, DEV_SECRET, JwtAlgorithm};
use fanout_gateway::{Config, Server, telemetry};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// A horizontally scaled WebSocket fan-out node.
#[derive(Debug, Parser)]
#[command(name = "fanout", version, about)]
struct Cli {
    /// TOML configuration file (every key optional; `FANOUT_*` variables override it).
    #[arg(long, short, global = true, env = "FANOUT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default).
    Run,
    /// Mint an HS256 token with the configured secret (or the development secret).
    Token {
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Comma-separated room patterns the client may subscribe to.
        #[arg(long, default_value = "")]
        rooms: String,
        /// Comma-separated room patterns the client may publish into (default: same as --rooms).
        #[arg(long)]
        publish: Option<String>,
        /// Lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
        ttl: Duration,
    },
    /// Print a commented configuration file with every default.
    Genconfig,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Genconfig => {
            print!("{}", fanout_gateway::config::EXAMPLE_CONFIG);
            Ok(())
        }
        Command::Token {
            sub,
            tenant,
            rooms,
            publish,
            ttl,
        } => {
            let config = Config::load(cli.config.as_deref())?;
            let secret = if config.is_dev_mode() {
                DEV_SECRET.to_owned()
            } else {
                match (&config.auth.algorithm, &config.auth.secret) {
                    (None | Some(JwtAlgorithm::HS256), Some(secret)) => secret.clone(),
                    _ => bail!(
                        "`fanout token` signs HS256 only; this config has no auth.secret (use your issuer for RS256/ES256)"
                    ),
                }
            };
            let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
            let rooms = split_list(&rooms);
            let publish = publish
                .map(|p| split_list(&p))
                .unwrap_or_else(|| rooms.clone());
            let token = mint_hs256(
                &secret,
                &DevTokenRequest {
                    sub,
                    tenant,
                    rooms,
                    publish,
                    exp,
                },
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Run => {
            let config = Config::load(cli.config.as_deref())?;
            telemetry::init(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run(config))
        }
    }
}

/// Raises the soft open-files limit to the hard limit: every connection is a
/// descriptor, and distributions default the soft limit to 1024.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(
            limit,
            "open file descriptor limit (soft) raised to the hard limit"
        ),
        Err(e) => warn!(error = %e, "cannot raise the open file descriptor limit"),
    }
}

async fn run(config: Config) -> Result<()> {
    raise_fd_limit();
    let dev = config.is_dev_mode();
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    info!(node = server.node().id(), %addr, tls = server.is_tls(), bus = server.node().bus_kind(), "listening");
    if dev {
        print_dev_banner(addr);
    }
    let token = server.shutdown_token();
    // The listeners are created once, before serving, so neither an early
    // signal nor a second one right after the first is lost.
    let mut signals = Signals::new();
    tokio::spawn(async move {
        signals.next().await;
        info!("shutdown signal received; draining (a second signal exits at once)");
        token.cancel();
        signals.next().await;
        warn!("second shutdown signal: exiting without finishing the drain");
        std::process::exit(1);
    });
    server.run().await?;
    Ok(())
}

/// SIGTERM and SIGINT, listened for from creation on.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, signal = name, "cannot listen for the signal");
                None
            }
        };
        Self {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
        }
    }
}

fn print_dev_banner(addr: std::net::SocketAddr) {
    let lines = [
        "DEVELOPMENT MODE: no auth key or API key is configured.".to_string(),
        format!("Anyone who can reach {addr} can connect and publish."),
        format!("Token secret (HS256): {DEV_SECRET}"),
        format!("API key:              {DEV_API_KEY}"),
        "Mint a token:  fanout token --sub u1 --tenant t1 --rooms 'lobby,doc:*'".to_string(),
        format!("Connect:       ws://{addr}/ws"),
        "NEVER use these in production: set auth.secret and api_keys.".to_string(),
    ];
    let rule = "=".repeat(72);
    eprintln!("\n{rule}");
    for line in lines {
        eprintln!("  {line}");
    }
    eprintln!("{rule}\n");
}
