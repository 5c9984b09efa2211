//! The `shadowplane` command: see `shadowplane --help`.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // `serve` is a long-running server: its config reloads (info) are worth seeing by default.
    let serving = matches!(
        cli.command,
        cli::Command::Serve(_) | cli::Command::Backend(_) | cli::Command::Forward(_)
    );
    init_logging(
        cli.verbose,
        if serving {
            "warn,shadowplane=info"
        } else {
            "warn"
        },
    );
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}

/// The runtime `serve` runs on (the other commands are synchronous): multi-threaded, with
/// I/O, timers and signals.
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shadowplane")
        .build()
        .context("cannot start the async runtime")
}

/// Logs on stderr. `RUST_LOG` wins when set; otherwise `-v` picks the level (`default`
/// without it: warn, and info for shadowplane itself under `serve`).
fn init_logging(verbose: u8, default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(match verbose {
            0 => default,
            1 => "debug",
            _ => "trace",
        }),
    };
    // Ignore the error: a global subscriber can only be set once, and only tests would try twice.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes when stderr goes to a file or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
