//! `jeanus-projector`: reads the configuration, starts logging and calls
//! `projector::run` (or, for `rebuild`, `projector::rebuild::run`). An error
//! is one line on stderr and exit 1. `jeanus-projector verify` checks the
//! hash chain instead: exit 0 when it is intact, 1 when it is broken (the
//! first bad position on stderr), 2 when it could not be verified.

use std::process::ExitCode;

use clap::Parser;
use projector::config::{self, Command, Config};
use projector::verify::{self, Outcome};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: see `mimalloc` in the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
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
    let result = match config.command.clone() {
        None => projector::run(config, shutdown_signal()).await,
        Some(Command::Rebuild(args)) => projector::rebuild::run(config, args).await,
        Some(Command::Verify(args)) => return verify_once(&config.database_url, &args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// `jeanus-projector verify`: 0 intact, 1 broken (naming the first bad
/// position), 2 not verifiable.
async fn verify_once(database_url: &str, args: &config::VerifyArgs) -> ExitCode {
    let options = verify::Options {
        tenant: args.tenant,
        checkpoint: args.from_checkpoint,
    };
    match verify::command(database_url, &options).await {
        Ok(Outcome::Intact(_)) => ExitCode::SUCCESS,
        Ok(Outcome::Broken(broken)) => fail(&broken.to_string()),
        Err(e) => {
            eprintln!("error: could not verify: {e:#}");
            ExitCode::from(2)
        }
    }
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
    tracing::info!("shutdown requested");
}
