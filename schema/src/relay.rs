//! The relay: publishes committed events from PostgreSQL to the JetStream
//! stream `<PREFIX>_EVENTS`, exactly once and in position order.
//!
//! The stream's sequence is kept equal to the events' global position:
//! positions are dense (see `store`), and each event is published with
//! `Nats-Expected-Last-Sequence = position - 1` and `Nats-Msg-Id = event id`.
//! So the relay keeps no state of its own: on start, and after any error, it
//! asks the stream for its last sequence and carries on from the next
//! position. A crash between commit and publish loses nothing (the event is
//! still in PostgreSQL and is published on restart); a crash between publish
//! and anything else duplicates nothing (the stream already has it, and a
//! second publish of the same position is refused by the expected sequence).
//!
//! Any number of processes may run a relay against one database and one
//! NATS: one holds a PostgreSQL advisory lock and publishes, the rest wait
//! to take over. The expected-sequence check fences a former leader that
//! has not noticed it lost the lock.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use backoff::backoff::Backoff;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::envelope::RecordedEvent;
use crate::nats::Names;
use crate::store::{self, NOTIFY_CHANNEL};

/// Events read from PostgreSQL and published per round.
const BATCH: i64 = 1000;
/// How long the relay sleeps without a notification before it looks anyway.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The configuration of the events stream. Creating it is idempotent.
pub fn stream_config(names: &Names) -> stream::Config {
    stream::Config {
        name: names.stream_name(),
        subjects: vec![names.all_events()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        // Sequence = position: no message may ever be removed from the middle.
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// Start the relay; it runs until `shutdown` is cancelled.
pub fn spawn(
    pool: PgPool,
    js: jetstream::Context,
    names: Names,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(10),
            max_elapsed_time: None,
            ..Default::default()
        };
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = lead_and_publish(&pool, &js, &names, &shutdown) => r,
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(
                        error = format!("{e:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "event relay stopped; retrying"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    })
}

/// Wait to become the leader, then publish until shutdown or an error.
async fn lead_and_publish(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;

    // A session-level advisory lock on a connection of its own: held as long
    // as this connection lives, released by PostgreSQL if the process dies.
    let mut lock = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("failed to connect for the relay's leader lock")?;
    let key = format!("jeanus.relay.{}", names.prefix());
    loop {
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(&key)
            .fetch_one(&mut lock)
            .await
            .context("failed to try the relay's leader lock")?;
        if leader {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!(stream = names.stream_name(), "event relay is the leader");

    let mut listener = PgListener::connect_with(pool)
        .await
        .context("failed to connect the relay's listener")?;
    listener
        .listen(NOTIFY_CHANNEL)
        .await
        .context("failed to listen for appended events")?;

    let mut stream = js
        .get_or_create_stream(stream_config(names))
        .await
        .context("failed to create the events stream")?;
    let mut published = stream
        .info()
        .await
        .context("failed to read the events stream's state")?
        .state
        .last_sequence as i64;

    loop {
        let events = store::read_after(pool, published, BATCH)
            .await
            .context("failed to read events to publish")?;
        if events.is_empty() {
            if published
                > store::head(pool)
                    .await
                    .context("failed to read the log head")?
            {
                anyhow::bail!(
                    "stream {} is at sequence {published}, ahead of the event log: it belongs to another database",
                    names.stream_name()
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = listener.recv() => { n.context("lost the relay's listener")?; }
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        match publish_in_order(js, names, &events).await {
            Ok(last) => published = last,
            Err(e) => {
                // Another relay may have published some of these: ask the
                // stream where it stands before trying again.
                published = stream
                    .info()
                    .await
                    .context("failed to re-read the events stream's state")?
                    .state
                    .last_sequence as i64;
                tracing::info!(error = %e, published, "event relay resynchronised with the stream");
            }
        }
    }
}

/// Publish consecutive events, pipelined, each fenced by its expected last
/// sequence. Returns the last position the stream acknowledged.
async fn publish_in_order(
    js: &jetstream::Context,
    names: &Names,
    events: &[RecordedEvent],
) -> anyhow::Result<i64> {
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let payload = serde_json::to_vec(event)?;
        let subject = names.event_subject(event.tenant_id, &event.stream_type, &event.event_type);
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(event.id.to_string())
            .expected_last_sequence((event.position - 1) as u64);
        acks.push(js.send_publish(subject, message).await?);
    }
    // Every publish is on the wire already; collect the acks in order.
    for (event, ack) in events.iter().zip(acks) {
        let ack = ack.await?;
        anyhow::ensure!(
            ack.sequence as i64 == event.position,
            "stream acknowledged event {} at sequence {}, not at its position {}",
            event.id,
            ack.sequence,
            event.position
        );
    }
    Ok(events.last().map_or(0, |e| e.position))
}
