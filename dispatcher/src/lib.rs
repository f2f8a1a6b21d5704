//! The dispatcher: follows the event stream on JetStream and delivers each
//! event to the tenant's webhook endpoints, signed, retrying on a schedule.
//!
//! Three parts run side by side: the [`intake`] (one leader among the
//! dispatcher processes) turns events into pending deliveries; the
//! [`delivery`] workers (in every process) send them; the [`schedule`] runs
//! the hourly job that disables endpoints failing for days.

use std::future::Future;
use std::sync::Arc;

pub mod config;
pub mod delivery;
pub mod intake;
pub mod retry;
pub mod schedule;
pub mod signing;

use config::Config;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// PostgreSQL connections per dispatcher process: the event store's pool
/// (endpoint-disabled events) and the operational pool (deliveries,
/// attempts, the intake's checkpoint).
const MAX_DB_CONNECTIONS: u32 = 4;
const MAX_OPS_CONNECTIONS: u32 = 12;

/// The pool for the dispatcher's own rows, which commit with
/// `synchronous_commit = off`: no WAL flush waited for per claim, record or
/// intake batch. What a PostgreSQL crash can lose is the last few hundred
/// milliseconds of commits, whole and in order; each loss is a redo, never a
/// hole: a lost intake batch loses its checkpoint too and is read again from
/// JetStream; a lost attempt record leaves the delivery leased, so it is
/// sent again (at least once, as promised). Events are never written
/// through it (the event store keeps its own pool, durable). Statements are
/// planned for their parameters each time (`plan_cache_mode`), as the
/// delivery tables grow from empty to large within minutes.
fn operational_pool(db: &sqlx::PgPool) -> sqlx::PgPool {
    let options = (*db.connect_options()).clone().options([
        ("synchronous_commit", "off"),
        // These tables start empty and grow fast: a generic plan cached
        // on the empty table would scan it in full forever after.
        ("plan_cache_mode", "force_custom_plan"),
    ]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(MAX_OPS_CONNECTIONS)
        .connect_lazy_with(options)
}

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

    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let js = async_nats::jetstream::new(nats.clone());
    let store = schema::store::EventStore::spawn(db.clone());
    let ops = operational_pool(&db);
    let wake = Arc::new(Notify::new());
    let workers = Arc::new(delivery::Workers::new(
        ops.clone(),
        store.clone(),
        config.secret_key.clone(),
        retry::RetrySchedule::new(config.webhook_retry_schedule.clone()),
        config.webhook_allow_private,
    )?);

    let intake = tokio::spawn(intake::run(
        ops.clone(),
        js,
        config.nats_prefix.clone(),
        wake.clone(),
        stop.clone(),
    ));
    let cron = tokio::spawn(schedule::run(ops.clone(), store, stop.clone()));
    delivery::run(workers, wake, stop.clone()).await;
    let _ = intake.await;
    match cron.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "the dispatcher's cron stopped"),
        Err(e) => tracing::warn!(error = %e, "the dispatcher's cron panicked"),
    }

    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "failed to drain the NATS connection");
    }
    ops.close().await;
    db.close().await;
    tracing::info!("dispatcher stopped");
    Ok(())
}
