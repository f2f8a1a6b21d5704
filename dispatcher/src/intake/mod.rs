//! The dispatcher's intake: follows the event log on JetStream and turns each
//! event a webhook carries into one pending delivery per matching endpoint,
//! together with its checkpoint in one PostgreSQL transaction.
//!
//! It follows the projector's consumer (see `projector::consumer`): one
//! leader at a time, by the session advisory lock `jeanus.dispatcher`; an
//! ephemeral pull consumer without acks from `dispatcher_checkpoint` + 1
//! (stream sequence = position); batches of whatever has arrived; a gap or
//! any error restarts from the checkpoint after a backoff. The checkpoint row
//! is locked `for update` in each transaction, which fences a former leader.
//!
//! **Subscriptions are read after the projector.** Before matching a batch,
//! the intake waits until `jeanus_projected_position()` has reached the
//! batch's last event, so an endpoint created (or disabled, or deleted)
//! before an event is seen as such when that event is matched. Deliveries
//! are inserted `on conflict do nothing` (unique endpoint and event), so a
//! batch applied twice creates nothing twice. At commit the intake notifies
//! [`DELIVERIES_CHANNEL`] so that every dispatcher's workers wake up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use backoff::{backoff::Backoff, ExponentialBackoff};
use futures::{FutureExt as _, StreamExt as _};
use schema::envelope::RecordedEvent;
use schema::nats::Names;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod batch;
mod projected;

use batch::take_batch;
use projected::wait_for_projector;

/// The PostgreSQL channel notified when new deliveries are committed.
pub const DELIVERIES_CHANNEL: &str = "jeanus_webhook_deliveries";
/// The intake's row in `dispatcher_checkpoint`.
const CHECKPOINT: &str = "intake";
/// Most events taken in one transaction.
const MAX_BATCH: usize = 500;
const LEADER_LOCK: &str = "jeanus.dispatcher";
const LEADER_POLL: Duration = Duration::from_millis(500);
const LEADER_CHECK: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// How often the wait for the projector re-reads its position when no
/// notification comes.
const PROJECTED_POLL: Duration = Duration::from_millis(100);

/// Turns events into deliveries until `shutdown`; every error is retried
/// from the checkpoint with backoff. `wake` is notified after each commit
/// that created deliveries.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    names: Names,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = ExponentialBackoff {
        initial_interval: Duration::from_millis(100),
        max_interval: MAX_RETRY_INTERVAL,
        max_elapsed_time: None,
        ..Default::default()
    };
    loop {
        match lead_and_take(&pool, &js, &names, &wake, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.next_backoff().unwrap_or(MAX_RETRY_INTERVAL);
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "dispatcher intake stopped; restarting from the checkpoint"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn lead_and_take(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    wake: &Notify,
    shutdown: &CancellationToken,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let Some(mut lock) = become_leader(pool, shutdown).await? else {
        return Ok(());
    };
    let result = take_as_leader(pool, js, names, wake, shutdown, &mut lock, backoff).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), lock.close()).await;
    result
}

async fn become_leader(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("failed to connect for the dispatcher's leader lock")?;
    let mut said_so = false;
    loop {
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await
            .context("failed to try the dispatcher's leader lock")?;
        if leader {
            return Ok(Some(conn));
        }
        if !said_so {
            tracing::info!("another dispatcher runs the intake; standing by (delivering only)");
            said_so = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = conn.close().await;
                return Ok(None);
            }
            _ = tokio::time::sleep(LEADER_POLL) => {}
        }
    }
}

async fn take_as_leader(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    wake: &Notify,
    shutdown: &CancellationToken,
    lock: &mut PgConnection,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into dispatcher_checkpoint (name, position) values ($1, 0)
         on conflict (name) do nothing",
    )
    .bind(CHECKPOINT)
    .execute(pool)
    .await
    .context("failed to register the dispatcher's checkpoint")?;
    let Some(stream) = wait_for_stream(js, names, shutdown).await? else {
        return Ok(());
    };
    let from: i64 =
        sqlx::query_scalar("select position from dispatcher_checkpoint where name = $1")
            .bind(CHECKPOINT)
            .fetch_one(pool)
            .await
            .context("failed to read the dispatcher's checkpoint")?;
    let consumer = stream
        .create_consumer(pull::Config {
            description: Some("jeanus dispatcher".to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from as u64 + 1,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .context("failed to create the dispatcher's JetStream consumer")?;
    let consumer_name = consumer.cached_info().name.clone();
    tracing::info!(from_position = from + 1, "dispatcher intake is the leader");

    let mut projected = PgListener::connect_with(pool)
        .await
        .context("failed to listen for the projector's progress")?;
    projected
        .listen(schema::store::PROJECTED_CHANNEL)
        .await
        .context("failed to listen for the projector's progress")?;

    let result = consume(
        pool,
        &consumer,
        wake,
        shutdown,
        lock,
        &mut projected,
        backoff,
    )
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        js.delete_consumer_from_stream(&consumer_name, names.stream_name()),
    )
    .await;
    result
}

async fn consume(
    pool: &PgPool,
    consumer: &jetstream::consumer::PullConsumer,
    wake: &Notify,
    shutdown: &CancellationToken,
    lock: &mut PgConnection,
    projected: &mut PgListener,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(MAX_BATCH)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .context("failed to start pulling events from JetStream")?;
    let mut leader_check = tokio::time::interval(LEADER_CHECK);
    leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The projector's position as last seen: it only grows, so a batch at
    // or below it needs no query.
    let mut projected_at = 0;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = leader_check.tick() => {
                tokio::time::timeout(LEADER_CHECK, lock.ping())
                    .await
                    .map_err(|_| anyhow!("the leader lock's connection did not answer"))?
                    .context("lost the connection holding the dispatcher's leader lock")?;
                continue;
            }
            message = messages.next() => message,
        };
        let mut batch = vec![receive(first)?];
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(message) => batch.push(receive(message)?),
                None => break,
            }
        }
        let last = batch.last().map_or(0, |e| e.position);
        if !wait_for_projector(pool, projected, &mut projected_at, last, shutdown).await? {
            return Ok(());
        }
        let created = take_batch(pool, &batch).await?;
        backoff.reset();
        if created > 0 {
            wake.notify_waiters();
            wake.notify_one();
        }
    }
}

fn receive(
    message: Option<Result<jetstream::Message, pull::MessagesError>>,
) -> anyhow::Result<RecordedEvent> {
    let message = message
        .ok_or_else(|| anyhow!("the JetStream pull subscription ended"))?
        .context("failed to receive events from JetStream")?;
    let info = message
        .info()
        .map_err(|e| anyhow!("a JetStream message came without its delivery info: {e}"))?;
    let sequence = info.stream_sequence as i64;
    let event: RecordedEvent = serde_json::from_slice(&message.payload)
        .with_context(|| format!("the message at sequence {sequence} is not an event"))?;
    anyhow::ensure!(
        event.position == sequence,
        "the event at position {} came at sequence {sequence}",
        event.position
    );
    Ok(event)
}

async fn wait_for_stream(
    js: &jetstream::Context,
    names: &Names,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<jetstream::stream::Stream>> {
    let mut wait = Duration::from_millis(50);
    loop {
        if let Ok(stream) = js.get_stream(names.stream_name()).await {
            return Ok(Some(stream));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
