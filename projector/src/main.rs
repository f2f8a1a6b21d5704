//! `jeanus-projector`: reads the configuration, starts logging and calls
//! `projector::run`. A start-up error is one line on stderr and exit 1.
//! `jeanus-projector verify` checks the hash chain instead: exit 0 when it
//! is intact, 1 when it is broken (the first bad position on stderr), 2 when
//! it could not be verified.

use std::process::ExitCode;

use clap::Parser;
use projector::config::{self, Command, Config};
use projector::verify::{self, Outcome};
use tracing_subscriber::EnvFilter;

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
    if let Some(Command::Verify(args)) = &config.command {
        let options = verify::Options {
            tenant: args.tenant,
            checkpoint: args.from_checkpoint,
        };
        return match verify::command(&config.database_url, &options).await {
            Ok(Outcome::Intact(_)) => ExitCode::SUCCESS,
            Ok(Outcome::Broken(broken)) => fail(&broken.to_string()),
            Err(e) => {
                eprintln!("error: could not verify: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match projector::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
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
