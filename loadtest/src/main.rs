//! `fanout-loadtest`: see the crate documentation and loadtest/README.md.

use std::process::ExitCode;

use clap::Parser;
use fanout_loadtest::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every socket is a file; raise the soft limit before anything opens one.
    let limit = match fanout_loadtest::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            1024
        }
    };
    if !matches!(cli.command, Command::Child) {
        eprintln!("open-file limit: {limit}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fanout_loadtest::run(cli, limit)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
