//! `jeanus-api`: reads the configuration, starts logging and calls
//! `api::run` (or `api::migrate`). A start-up error is one line on stderr and
//! exit status 1.

use std::process::ExitCode;

use anyhow::Context;
use api::config::{self, Config};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    if let Err(e) = init_tracing() {
        return fail(&e);
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => api::migrate(&cli.config).await,
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
fn init_tracing() -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => {
            EnvFilter::try_new(&value).map_err(|e| format!("RUST_LOG={value:?} is invalid: {e}"))?
        }
        _ => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
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
