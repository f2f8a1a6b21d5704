//! The projector: follows the event stream on JetStream and keeps the read
//! models in PostgreSQL up to date; `rebuild` rebuilds them from the log;
//! and it re-verifies the event log's hash chain, on a schedule or once
//! (`jeanus-projector verify`, [`verify`]).

use std::future::Future;

pub mod config;
pub mod consumer;
pub mod projections;
pub mod rebuild;
pub mod verify;

use config::Config;

/// PostgreSQL connections per projector process.
const MAX_DB_CONNECTIONS: u32 = 8;

/// Connects, then runs until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = schema::connect::postgres(&config.database_url, MAX_DB_CONNECTIONS).await?;
    let nats = schema::connect::nats(&config.nats_url, "jeanus-projector").await?;
    tracing::info!(stream = %config.nats_prefix.stream_name(), "projector started");

    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let nightly = tokio::spawn(verify::run_scheduled(
        db.clone(),
        config.verify_schedule.clone(),
        stop.clone(),
    ));
    let js = async_nats::jetstream::new(nats.clone());
    let projections = projections::Projection::ALL.to_vec();
    let result = consumer::run(
        db.clone(),
        js,
        config.nats_prefix.clone(),
        projections,
        stop.clone(),
    )
    .await;

    stop.cancel();
    if let Err(e) = nightly.await {
        tracing::error!(error = %e, "the scheduled verification panicked");
    }
    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "failed to drain the NATS connection");
    }
    db.close().await;
    tracing::info!("projector stopped");
    result
}
