//! `jeanus-api admin …`: the operator's first steps without curl. Each
//! command appends its event straight to the log (DATABASE_URL only, no NATS:
//! a running api's relay publishes it) through the same `api::tenancy`
//! function as the HTTP handler, and prints the same `{"data": …}` JSON on
//! stdout.

use std::time::Duration;

use anyhow::Context;
use api::config::Config;
use api::consistency::Projected;
use api::error::ApiError;
use api::tenancy::{self, Data, MintRequest, NewTenant};
use clap::Subcommand;
use schema::envelope::Metadata;
use schema::store::EventStore;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a command waits for the projector to apply its event, so that
/// the tenant or key is usable over HTTP as soon as the command returns.
/// Without a running projector (and api relay) it gives up and says so.
const PROJECTION_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a tenant and print it as JSON.
    CreateTenant {
        /// The tenant's display name (1 to 200 characters).
        #[arg(long)]
        name: String,
    },
    /// Mint an API key for a tenant and print it, with its plaintext, as JSON.
    MintKey {
        /// The tenant's id (from create-tenant).
        #[arg(long)]
        tenant: Uuid,
        /// Comma-separated: read, write, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A short label to recognise the key by (1 to 100 characters).
        #[arg(long)]
        label: String,
        /// RFC 3339 time after which the key stops working.
        #[arg(long)]
        expires_at: Option<String>,
        /// Comma-separated CIDRs (or addresses) the key may be used from.
        #[arg(long, value_delimiter = ',')]
        allowed_ips: Vec<String>,
        /// Requests per minute (1 to 10000; default 60).
        #[arg(long)]
        rate_limit: Option<i64>,
        /// A jns_test_ key instead of jns_live_.
        #[arg(long)]
        test: bool,
    },
}

/// Runs one command against `config.database_url`. A refused request comes
/// back as the error, with the same message the HTTP API gives.
pub async fn run(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let db = schema::connect::postgres(&config.database_url, 2).await?;
    let store = EventStore::spawn(db.clone());
    let result = match command {
        AdminCommand::CreateTenant { name } => {
            let written = tenancy::create_tenant(&store, NewTenant { name }, Metadata::default())
                .await
                .map_err(refused)?;
            settle(&db, written.position).await;
            print(&written.data)
        }
        AdminCommand::MintKey {
            tenant,
            scopes,
            label,
            expires_at,
            allowed_ips,
            rate_limit,
            test,
        } => {
            let request = MintRequest {
                label,
                scopes,
                expires_at,
                allowed_ips: Some(allowed_ips),
                rate_limit_per_minute: rate_limit,
                mode: test.then(|| "test".to_owned()),
            };
            let written = tenancy::mint_key(&db, &store, tenant, request, Metadata::default())
                .await
                .map_err(|e| match e {
                    ApiError::NotFound => anyhow::anyhow!("no tenant {tenant} in the event log"),
                    other => refused(other),
                })?;
            settle(&db, written.position).await;
            print(&written.data)
        }
    };
    db.close().await;
    result
}

fn refused(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::InvalidParam { .. } | ApiError::MissingField(_) => anyhow::anyhow!("{e}"),
        other => anyhow::Error::new(other).context("the command failed"),
    }
}

fn print<T: Serialize>(data: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(&Data { data }).context("failed to render JSON")?;
    println!("{json}");
    Ok(())
}

/// Waits (bounded) for the projector, so that the output is usable at once;
/// on timeout a note on stderr says why it may not be yet.
async fn settle(db: &PgPool, position: Option<i64>) {
    let Some(position) = position else { return };
    let stop = CancellationToken::new();
    let (projected, watcher) = Projected::spawn(db.clone(), stop.clone());
    if !projected.wait_projected(position, PROJECTION_WAIT).await {
        eprintln!(
            "note: written to the event log (position {position}), but not yet applied by the \
             projector; it takes effect once jeanus-api and jeanus-projector are running"
        );
    }
    stop.cancel();
    let _ = watcher.await;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: AdminCommand,
    }

    #[test]
    fn mint_key_takes_comma_separated_lists() {
        let cli = Cli::try_parse_from([
            "admin",
            "mint-key",
            "--tenant",
            "0190b8a4-0000-7000-8000-000000000001",
            "--scopes",
            "read,write",
            "--label",
            "zapier",
            "--allowed-ips",
            "10.0.0.0/8,2001:db8::/32",
            "--rate-limit",
            "120",
        ])
        .expect("parses");
        match cli.command {
            AdminCommand::MintKey {
                scopes,
                allowed_ips,
                rate_limit,
                test,
                ..
            } => {
                assert_eq!(scopes, ["read", "write"]);
                assert_eq!(allowed_ips, ["10.0.0.0/8", "2001:db8::/32"]);
                assert_eq!(rate_limit, Some(120));
                assert!(!test);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn mint_key_needs_tenant_scopes_and_label() {
        assert!(
            Cli::try_parse_from(["admin", "mint-key", "--scopes", "read", "--label", "x"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "admin",
            "mint-key",
            "--tenant",
            "not-a-uuid",
            "--scopes",
            "read",
            "--label",
            "x"
        ])
        .is_err());
    }
}
