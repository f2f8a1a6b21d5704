//! The projector's consumer: reads the event log from JetStream and applies
//! every event to every read model exactly once, each batch together with
//! its checkpoint in one PostgreSQL transaction.
//!
//! **Leadership.** Any number of projector processes may run; one applies at
//! a time. The leader holds the PostgreSQL session advisory lock
//! `pg_try_advisory_lock(hashtext('jeanus.projector'))` on a connection of
//! its own, outside the pool: the lock lives exactly as long as that
//! connection. The others try the lock every half second and take over once
//! the leader's connection is gone (the process exited or crashed, or the
//! network dropped it: PostgreSQL then ends the session and frees the lock).
//! The leader pings its lock connection every few seconds and steps down if
//! it is lost. The lock is per database, not per NATS prefix: the read
//! models and their checkpoints belong to the database. It is an economy,
//! not the guarantee: see the fence below.
//!
//! **Checkpoint.** `projector_checkpoint` has one row per projection: the
//! position of the last event applied to it (a new projection starts at 0
//! and catches up while the others skip what they have). On taking the
//! lead, the consumer waits, with backoff, for the relay to have created
//! `<PREFIX>_EVENTS`, then starts an ephemeral pull consumer on it at
//! `DeliverPolicy::ByStartSequence { lowest checkpoint + 1 }`: the relay
//! keeps stream sequence = position. Its `AckPolicy` is `None`: the
//! checkpoint, committed with the read models, is the only record of
//! progress. Acks would be a second record, written after the commit and so
//! able to disagree with it, and the server would redeliver on its own
//! schedule what we would ignore anyway.
//! Without acks, the server sends each message once and in order; anything
//! lost on the way shows up as a gap, and a gap restarts us from the
//! checkpoint.
//!
//! **Applying.** Messages are taken in batches of whatever has arrived, up to
//! [`MAX_BATCH`], never waiting for a batch to fill: a lone event is applied
//! as soon as it arrives (the goal is append → visible in well under 50 ms),
//! while a backlog is applied 500 events per transaction. Each transaction
//! locks the checkpoint rows (`select … for update`), skips the events at or
//! below them (a redelivery is a no-op), refuses a gap (an event beyond
//! checkpoint + 1 restarts the consumer from the checkpoint), hands each
//! projection, at once, the batch's events it has not yet seen (the resource
//! projections then read and write each table once per batch, not once per
//! event: see `projections::resource_table`), raises the checkpoints
//! and sends `pg_notify('jeanus_projected', <position>)`, then commits. So a
//! crash anywhere leaves read models and checkpoints in agreement, and the
//! row lock fences a former leader that has not yet noticed it lost the lead:
//! a second applier of the same batch waits for the first to commit, then
//! sees the new checkpoint and skips what was applied.
//!
//! **Read your writes.** `jeanus_projected_position()` (SQL, see
//! `schema/migrations/0002_projector.sql`) is the position through which
//! every read model is up to date; the same value is sent on
//! [`NOTIFY_CHANNEL`] at each commit. A reader that must see the write at
//! position p LISTENs on the channel, then reads the function (in that
//! order, to miss nothing), and waits until the position is ≥ p.
//!
//! **Events this build cannot read.** An event of a type this build does not
//! know (written by a newer version) is skipped with a warning naming its
//! type and position, and the checkpoint moves past it. An event of a known
//! type whose data does not decode (a schema version from the future, an
//! upcast that fails, malformed data), or a message that is not an event at
//! all, is never skipped: the events before it are committed, then
//! [`run`] returns [`UnreadableEvent`] (the process exits non-zero) and the
//! read models stay just before it; a standby of the same build takes over
//! and stops at the same event. An operator reads the position and the reason from the log (or
//! `select * from events where position = <position>`), then deploys a
//! projector that reads it: most often the api was upgraded before the
//! projector and wrote a newer schema version, and upgrading the projector is
//! the whole fix; otherwise a fixed upcaster. Restarted, the projector
//! carries on from that event. Stored events are never edited.
//!
//! **Errors and shutdown.** Any other error (PostgreSQL or NATS lost, a
//! projection failing, a gap) is logged once, then the consumer backs off
//! exponentially (up to 10 s) and starts again from the checkpoint, giving up
//! the lead meanwhile. On shutdown the transaction in progress is finished
//! and committed; then [`run`] returns.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    context::GetStreamErrorKind,
    stream::Stream as JsStream,
    ErrorCode,
};
use backoff::{backoff::Backoff, ExponentialBackoff};
use futures::{FutureExt as _, StreamExt as _};
use schema::nats::Names;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::projections::Projection;

mod batch;

pub use batch::UnreadableEvent;
use batch::{apply_batch, lowest_checkpoint, Incoming};
pub(crate) use batch::{
    lock_checkpoints, notify_projected, raise_checkpoints, register_checkpoints,
};

/// The PostgreSQL channel on which each projection commit announces
/// `jeanus_projected_position()`, as decimal text.
pub use schema::store::PROJECTED_CHANNEL as NOTIFY_CHANNEL;

/// Most events applied in one transaction.
pub const MAX_BATCH: usize = 500;

/// The advisory lock key (hashed by `hashtext`) that elects the leader.
const LEADER_LOCK: &str = "jeanus.projector";
/// How often a standby tries the leader lock.
const LEADER_POLL: Duration = Duration::from_millis(500);
/// How often the leader checks that its lock connection is alive, and how
/// long that check may take.
const LEADER_CHECK: Duration = Duration::from_secs(5);
/// The idle heartbeat asked of the server on each pull: two missed ones
/// surface as an error, and so as a restart.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// The longest wait between restarts after an error.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Apply the event log to `projections` until `shutdown` is cancelled
/// (then `Ok`) or an event cannot be read (then `Err(UnreadableEvent)`).
/// Every other error is retried, with backoff, from the checkpoint.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    names: Names,
    projections: Vec<Projection>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !projections.is_empty(),
        "the projector was given no projections"
    );
    let mut backoff = ExponentialBackoff {
        initial_interval: Duration::from_millis(100),
        max_interval: MAX_RETRY_INTERVAL,
        max_elapsed_time: None,
        ..Default::default()
    };
    loop {
        let result =
            lead_and_apply(&pool, &js, &names, &projections, &shutdown, &mut backoff).await;
        let error = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match error.downcast::<UnreadableEvent>() {
            Ok(unreadable) => {
                tracing::error!(
                    event.position = unreadable.position,
                    event.type = unreadable.event_type.as_deref().unwrap_or("?"),
                    error = %unreadable.source,
                    "the projector stopped before an event it cannot read; deploy a projector that reads it"
                );
                return Err(unreadable.into());
            }
            Err(error) => {
                let wait = backoff.next_backoff().unwrap_or(MAX_RETRY_INTERVAL);
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "projector stopped; restarting from the checkpoint"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Become the leader, then apply events until shutdown or an error. The
/// lead is given up on return, whatever the outcome.
async fn lead_and_apply(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    projections: &[Projection],
    shutdown: &CancellationToken,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let Some(mut lock) = become_leader(pool, shutdown).await? else {
        return Ok(());
    };
    let result = apply_as_leader(pool, js, names, projections, shutdown, &mut lock, backoff).await;
    // Closing frees the lock at once for a standby; a broken connection has
    // freed it already, so do not wait long on one.
    let _ = tokio::time::timeout(Duration::from_secs(1), lock.close()).await;
    result
}

/// Wait for the leader lock. Returns the connection that holds it (the lock
/// lasts as long as the connection), or `None` on shutdown.
async fn become_leader(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("failed to connect for the projector's leader lock")?;
    let mut said_so = false;
    loop {
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await
            .context("failed to try the projector's leader lock")?;
        if leader {
            return Ok(Some(conn));
        }
        if !said_so {
            tracing::info!("another projector is the leader; standing by");
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

async fn apply_as_leader(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    projections: &[Projection],
    shutdown: &CancellationToken,
    lock: &mut PgConnection,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    register_checkpoints(pool, projections).await?;
    let Some(stream) = wait_for_stream(js, names, shutdown).await? else {
        return Ok(());
    };
    let from = lowest_checkpoint(pool, projections).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            description: Some("jeanus projector".to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from as u64 + 1,
            },
            ack_policy: AckPolicy::None,
            // Ephemeral: the checkpoint is our state, so a consumer left
            // behind by a crash holds nothing and the server drops it.
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .context("failed to create the projector's JetStream consumer")?;
    let consumer_name = consumer.cached_info().name.clone();
    tracing::info!(
        stream = names.stream_name(),
        from_position = from + 1,
        "projector is the leader; applying events"
    );

    let result = consume(pool, &consumer, projections, shutdown, lock, backoff).await;

    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        js.delete_consumer_from_stream(&consumer_name, names.stream_name()),
    )
    .await;
    result
}

/// Take batches of messages and apply them, until shutdown or an error.
async fn consume(
    pool: &PgPool,
    consumer: &jetstream::consumer::PullConsumer,
    projections: &[Projection],
    shutdown: &CancellationToken,
    lock: &mut PgConnection,
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

    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = leader_check.tick() => {
                tokio::time::timeout(LEADER_CHECK, lock.ping())
                    .await
                    .map_err(|_| anyhow!("the leader lock's connection did not answer"))?
                    .context("lost the connection holding the projector's leader lock")?;
                continue;
            }
            message = messages.next() => message,
        };
        let mut batch = vec![receive(first)?];
        // Whatever else has arrived already, without waiting for more.
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(message) => batch.push(receive(message)?),
                None => break,
            }
        }
        // Not raced against shutdown: a started batch is finished and committed.
        let outcome = apply_batch(pool, projections, batch).await?;
        if outcome.projected.is_some() {
            backoff.reset();
        }
        if let Some(unreadable) = outcome.stopped_at {
            return Err(unreadable.into());
        }
    }
}

fn receive(
    message: Option<Result<jetstream::Message, pull::MessagesError>>,
) -> anyhow::Result<Incoming> {
    let message = message
        .ok_or_else(|| anyhow!("the JetStream pull subscription ended"))?
        .context("failed to receive events from JetStream")?;
    Incoming::from_message(&message)
}

/// Wait until the relay has created the events stream. `None` on shutdown.
async fn wait_for_stream(
    js: &jetstream::Context,
    names: &Names,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<JsStream>> {
    let mut backoff = ExponentialBackoff {
        initial_interval: Duration::from_millis(50),
        max_interval: Duration::from_secs(2),
        max_elapsed_time: None,
        ..Default::default()
    };
    let mut said_so = false;
    loop {
        match js.get_stream(names.stream_name()).await {
            Ok(stream) => return Ok(Some(stream)),
            Err(e) if is_not_found(&e) => {
                if !said_so {
                    tracing::info!(
                        stream = names.stream_name(),
                        "waiting for the relay to create the events stream"
                    );
                    said_so = true;
                }
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("failed to look up the stream {}", names.stream_name())
                })
            }
        }
        let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}
