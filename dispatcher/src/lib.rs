//! The dispatcher: follows the event stream on JetStream and delivers each
//! event to the tenant's webhook endpoints, signed, retrying on a schedule.

use std::future::Future;

pub mod config;

use config::Config;

/// PostgreSQL connections per dispatcher process.
const MAX_DB_CONNECTIONS: u32 = 8;

/// Connects, then runs until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = schema::connect::postgres(&config.database_url, MAX_DB_CONNECTIONS).await?;
    let nats = schema::connect::nats(&config.nats_url, "jeanus-dispatcher").await?;
    tracing::info!(
        stream = %config.nats_prefix.stream_name(),
        webhook.allow_private = config.webhook_allow_private,
        webhook.retries = config.webhook_retry_schedule.len(),
        "dispatcher started"
    );

    // The delivery loop arrives with webhooks; until then there is nothing
    // to do but wait.
    shutdown.await;

    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "failed to drain the NATS connection");
    }
    db.close().await;
    tracing::info!("dispatcher stopped");
    Ok(())
}
