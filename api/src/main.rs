//! `jeanus-api`: reads the configuration, starts logging and calls
//! `api::run` (or `api::migrate`, or an operator command from `cli`). A
//! start-up error is one line on stderr and exit status 1.

use std::process::ExitCode;

use anyhow::Context;
use api::config::{self, Config};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cli;

/// mimalloc rather than glibc's malloc: see `mimalloc` in the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "jeanus-api", version, about = "The Jeanus REST API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API on JEANUS_API_ADDR (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Operator commands: create a tenant, mint a key (JSON on stdout).
    Admin {
        #[command(subcommand)]
        command: cli::AdminCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&config::one_line(&e)),
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // An operator command's stdout is its JSON output, so its logs go to stderr.
    let logs_to_stderr = matches!(command, Command::Admin { .. });
    if let Err(e) = init_tracing(logs_to_stderr) {
        return fail(&e);
    }
    let result = match command {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => api::migrate(&cli.config).await,
        Command::Admin { command } => cli::run(&cli.config, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on JEANUS_API_ADDR={}", config.addr))?;
    api::run(config, listener, shutdown_signal()).await
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// `RUST_LOG`, default `info`.
fn init_tracing(to_stderr: bool) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|e| format!("RUST_LOG={value:?} is invalid: {e}"))?
        }
        _ => EnvFilter::new("info"),
    };
    if to_stderr {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing the requests in flight");
}
