//! One batch of events applied to the read models in one transaction: the
//! checkpoint rows that fence it, and the events it stops in front of.

use std::time::Instant;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream;
use schema::envelope::{Decoded, RecordedEvent};
use schema::events::EventPayload;
use sqlx::{PgConnection, PgPool};

use super::NOTIFY_CHANNEL;
use crate::projections::Projection;

/// An event the projector cannot read. The consumer stops in front of it
/// rather than skip it; the `consumer` module doc says what an operator does.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the event at position {position}; the read models stop before it")]
pub struct UnreadableEvent {
    pub position: i64,
    /// The stored type, when the envelope itself could be read.
    pub event_type: Option<String>,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One event as received, read as far as it could be.
#[derive(Debug)]
pub(super) struct Incoming {
    position: i64,
    read: Result<(RecordedEvent, Decoded), UnreadableEvent>,
}

impl Incoming {
    pub(super) fn from_message(message: &jetstream::Message) -> anyhow::Result<Self> {
        let info = message
            .info()
            .map_err(|e| anyhow!("a JetStream message came without its delivery info: {e}"))?;
        let sequence = info.stream_sequence as i64;
        let event = match serde_json::from_slice::<RecordedEvent>(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                return Ok(Self {
                    position: sequence,
                    read: Err(UnreadableEvent {
                        position: sequence,
                        event_type: None,
                        source: Box::new(e),
                    }),
                })
            }
        };
        anyhow::ensure!(
            event.position == sequence,
            "stream {} holds the event at position {} at sequence {sequence}: the stream belongs to another event log",
            info.stream,
            event.position
        );
        Ok(Self::from_event(event))
    }

    fn from_event(event: RecordedEvent) -> Self {
        let position = event.position;
        let read = match event.decode() {
            Ok(decoded) => Ok((event, decoded)),
            Err(e) => Err(UnreadableEvent {
                position,
                event_type: Some(event.event_type),
                source: Box::new(e),
            }),
        };
        Self { position, read }
    }
}

/// What one batch's transaction did.
#[derive(Debug)]
pub(super) struct BatchOutcome {
    /// `jeanus_projected_position()` after the commit; `None` when the batch
    /// held nothing new and nothing was written.
    pub(super) projected: Option<i64>,
    /// The unreadable event the batch stopped in front of, if any; the
    /// events before it were committed.
    pub(super) stopped_at: Option<UnreadableEvent>,
}

/// Apply a batch to every projection and raise the checkpoints, in one
/// transaction. Safe to run concurrently with itself: the checkpoint rows
/// are locked first, and events at or below them are skipped.
#[tracing::instrument(skip_all, fields(batch.first = batch.first().map(|i| i.position), batch.len = batch.len()))]
pub(super) async fn apply_batch(
    pool: &PgPool,
    projections: &[Projection],
    batch: Vec<Incoming>,
) -> anyhow::Result<BatchOutcome> {
    let started = Instant::now();
    let mut tx = schema::tx::begin(pool)
        .await
        .context("failed to begin a projection transaction")?;
    let checkpoints = lock_checkpoints(&mut tx, projections).await?;
    let low = checkpoints.iter().copied().min().unwrap_or(0);

    // Sort the batch first (a redelivery skipped, a gap refused, the read
    // cut in front of an unreadable event), then hand each projection the
    // events it has not seen, all at once: the resource projections load
    // and write their rows once per batch, not once per event.
    let mut next = low + 1;
    let mut stopped_at = None;
    let mut known: Vec<(RecordedEvent, EventPayload)> = Vec::with_capacity(batch.len());
    for incoming in batch {
        if incoming.position < next {
            continue; // applied already: a redelivery
        }
        anyhow::ensure!(
            incoming.position == next,
            "received the event at position {} while expecting {next}: a gap in the stream",
            incoming.position
        );
        let (event, decoded) = match incoming.read {
            Ok(read) => read,
            Err(unreadable) => {
                stopped_at = Some(unreadable);
                break;
            }
        };
        match decoded {
            Decoded::Unknown => tracing::warn!(
                event.position = event.position,
                event.type = %event.event_type,
                "skipping an event of a type this build does not know"
            ),
            Decoded::Known(payload) => known.push((event, payload)),
        }
        next += 1;
    }
    for (projection, &checkpoint) in projections.iter().zip(&checkpoints) {
        let unseen = &known[known.partition_point(|(e, _)| e.position <= checkpoint)..];
        if let (Some((first, _)), Some((last, _))) = (unseen.first(), unseen.last()) {
            projection.apply(&mut tx, unseen).await.with_context(|| {
                format!(
                    "projection {} failed to apply the events at positions {} to {}",
                    projection.name(),
                    first.position,
                    last.position
                )
            })?;
        }
    }

    let last = next - 1;
    if last == low {
        // Nothing new: dropping the transaction rolls it back.
        return Ok(BatchOutcome {
            projected: None,
            stopped_at,
        });
    }
    raise_checkpoints(&mut tx, projections, last).await?;
    let projected = checkpoints
        .iter()
        .map(|&c| c.max(last))
        .min()
        .unwrap_or(last);
    notify_projected(&mut tx, projected).await?;
    tx.commit()
        .await
        .context("failed to commit a projection transaction")?;
    tracing::debug!(
        projected,
        events = last - low,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "applied events"
    );
    Ok(BatchOutcome {
        projected: Some(projected),
        stopped_at,
    })
}

/// Announce on [`NOTIFY_CHANNEL`], at commit, that every read model is up
/// to date through `projected`.
pub(crate) async fn notify_projected(
    conn: &mut PgConnection,
    projected: i64,
) -> anyhow::Result<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(projected.to_string())
        .execute(conn)
        .await
        .context("failed to notify the projected position")?;
    Ok(())
}

/// Make sure every projection has a checkpoint row; a new one starts at 0
/// and so replays the log from the first event.
pub(crate) async fn register_checkpoints(
    pool: &PgPool,
    projections: &[Projection],
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into projector_checkpoint (name, position)
         select unnest($1::text[]), 0
         on conflict (name) do nothing",
    )
    .bind(names_of(projections))
    .execute(pool)
    .await
    .context("failed to register the projection checkpoints")?;
    Ok(())
}

/// Where the consumer starts: the checkpoint of the projection furthest behind.
pub(super) async fn lowest_checkpoint(
    pool: &PgPool,
    projections: &[Projection],
) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "select coalesce(min(position), 0) from projector_checkpoint where name = any($1)",
    )
    .bind(names_of(projections))
    .fetch_one(pool)
    .await
    .context("failed to read the projection checkpoints")
}

/// Each projection's checkpoint, in the order of `projections`, locked until
/// the transaction ends: the fence against a second applier (and the one
/// the rebuild's swap takes to hold the live projector off).
pub(crate) async fn lock_checkpoints(
    conn: &mut PgConnection,
    projections: &[Projection],
) -> anyhow::Result<Vec<i64>> {
    // Locked in name order, so two appliers can never deadlock.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select name, position from projector_checkpoint
          where name = any($1)
          order by name
          for update",
    )
    .bind(names_of(projections))
    .fetch_all(conn)
    .await
    .context("failed to lock the projection checkpoints")?;
    projections
        .iter()
        .map(|p| {
            rows.iter()
                .find(|(name, _)| name == p.name())
                .map(|&(_, position)| position)
                .with_context(|| format!("projection {} has no checkpoint row", p.name()))
        })
        .collect()
}

/// Move every checkpoint up to `position` (one already beyond it stays).
pub(crate) async fn raise_checkpoints(
    conn: &mut PgConnection,
    projections: &[Projection],
    position: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "update projector_checkpoint set position = greatest(position, $2) where name = any($1)",
    )
    .bind(names_of(projections))
    .bind(position)
    .execute(conn)
    .await
    .context("failed to save the projection checkpoints")?;
    Ok(())
}

fn names_of(projections: &[Projection]) -> Vec<&'static str> {
    projections.iter().map(|p| p.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use schema::envelope::Metadata;
    use schema::events::{stream_types, EventData, TenantCreated};
    use uuid::Uuid;

    fn recorded(position: i64, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        let id = Uuid::now_v7();
        RecordedEvent {
            position,
            id: Uuid::now_v7(),
            tenant_id: id,
            stream_type: stream_types::TENANT.to_owned(),
            stream_id: id,
            stream_version: 1,
            event_type: event_type.to_owned(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: Metadata::default(),
            data,
        }
    }

    fn tenant_created(position: i64) -> RecordedEvent {
        recorded(
            position,
            TenantCreated::EVENT_TYPE,
            serde_json::json!({ "name": format!("Tenant {position}") }),
        )
    }

    fn batch(events: &[RecordedEvent]) -> Vec<Incoming> {
        events.iter().cloned().map(Incoming::from_event).collect()
    }

    async fn tenants(pool: &PgPool) -> i64 {
        sqlx::query_scalar("select count(*) from tenants")
            .fetch_one(pool)
            .await
            .expect("count tenants")
    }

    async fn projected(pool: &PgPool) -> i64 {
        sqlx::query_scalar("select jeanus_projected_position()")
            .fetch_one(pool)
            .await
            .expect("projected position")
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn two_appliers_of_one_batch_at_once_apply_it_once(pool: PgPool) {
        register_checkpoints(&pool, Projection::ALL)
            .await
            .expect("register");
        let events: Vec<_> = (1..=200).map(tenant_created).collect();

        let (a, b) = tokio::join!(
            apply_batch(&pool, Projection::ALL, batch(&events)),
            apply_batch(&pool, Projection::ALL, batch(&events)),
        );
        let outcomes = [a.expect("first applier"), b.expect("second applier")];
        let applied: Vec<_> = outcomes.iter().filter_map(|o| o.projected).collect();
        assert_eq!(applied, vec![200], "exactly one applier wrote");
        assert_eq!(tenants(&pool).await, 200);

        // A later redelivery of the same events is a no-op too.
        let again = apply_batch(&pool, Projection::ALL, batch(&events))
            .await
            .expect("redelivery");
        assert_eq!(again.projected, None);
        assert_eq!(projected(&pool).await, 200);
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_gap_after_the_checkpoint_is_refused_and_writes_nothing(pool: PgPool) {
        register_checkpoints(&pool, Projection::ALL)
            .await
            .expect("register");
        let events: Vec<_> = (3..=5).map(tenant_created).collect();
        let err = apply_batch(&pool, Projection::ALL, batch(&events))
            .await
            .expect_err("position 3 after checkpoint 0 is a gap");
        assert!(err.to_string().contains("gap"), "{err:#}");
        assert_eq!(tenants(&pool).await, 0);
        assert_eq!(projected(&pool).await, 0);
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_batch_commits_up_to_an_unreadable_event_and_stops_there(pool: PgPool) {
        register_checkpoints(&pool, Projection::ALL)
            .await
            .expect("register");
        let events = vec![
            tenant_created(1),
            recorded(2, "SomethingFromTheFuture", serde_json::json!({})),
            recorded(
                3,
                TenantCreated::EVENT_TYPE,
                serde_json::json!({ "nom": "x" }),
            ),
            tenant_created(4),
        ];
        let outcome = apply_batch(&pool, Projection::ALL, batch(&events))
            .await
            .expect("the readable prefix commits");
        assert_eq!(outcome.projected, Some(2));
        let stopped = outcome.stopped_at.expect("stopped at the unreadable event");
        assert_eq!(stopped.position, 3);
        assert_eq!(stopped.event_type.as_deref(), Some("TenantCreated"));
        assert_eq!(tenants(&pool).await, 1);
    }
}
