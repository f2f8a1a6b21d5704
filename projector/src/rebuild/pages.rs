//! The event log as a rebuild reads it: straight from PostgreSQL (not
//! through JetStream), in keyset pages by position, decoded and upcast, with
//! the next page read while the current one is applied.

use anyhow::Context as _;
use schema::envelope::{Decoded, RecordedEvent};
use schema::events::EventPayload;
use serde_json::value::RawValue;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::types::Json;
use sqlx::{FromRow as _, PgConnection, PgPool, Postgres, Row as _};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::consumer::UnreadableEvent;

/// Pages read ahead of the one being applied.
const READ_AHEAD: usize = 2;

/// A run of the log, decoded: the events of the stream types asked for.
/// Their metadata is left empty, not read: no projection reads it (a row is
/// the fold of its stream's events and their data), and rendering a jsonb
/// column is most of what reading the log costs the server.
pub(super) struct Page {
    pub(super) events: Vec<(RecordedEvent, EventPayload)>,
    /// By position ([`read_page`]): every position up to this one has been
    /// read, whether its event was of a type asked for or not. By stream
    /// ([`spawn_stream_reader`]): how many events the page read.
    pub(super) through: i64,
}

/// One page: the events after `after`, up to `upto`, of `stream_types`, at
/// most `limit` of them, in position order. Events of types this build does
/// not know are skipped (as the live consumer skips them); an event that
/// cannot be read stops the rebuild with [`UnreadableEvent`].
pub(super) async fn read_page(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
    stream_types: &[&str],
    limit: i64,
) -> anyhow::Result<Page> {
    let query = sqlx::query(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, '{}'::jsonb as metadata, 'null'::jsonb as data,
                data as stored_data
           from events
          where position > $1 and position <= $2 and stream_type = any($3)
          order by position
          limit $4",
    )
    .bind(after)
    .bind(upto)
    .bind(stream_types)
    .bind(limit);
    let rows = fetch_decoded(conn, query, || {
        format!("failed to read the event log after position {after}")
    })
    .await?;
    let through = match rows.last() {
        Some((last, _)) if rows.len() as i64 == limit => last.position,
        _ => upto,
    };
    let events = known(rows);
    Ok(Page { events, through })
}

/// An event as a rebuild reads it, with its payload when this build knows
/// its type.
type Read = (RecordedEvent, Option<EventPayload>);

/// Run `query` (which selects the columns of [`RecordedEvent`] plus
/// `stored_data`) and decode each row; `failed` says what failed to be read
/// when the query does.
async fn fetch_decoded(
    conn: &mut PgConnection,
    query: sqlx::query::Query<'_, Postgres, PgArguments>,
    failed: impl FnOnce() -> String,
) -> anyhow::Result<Vec<Read>> {
    let rows = query.fetch_all(conn).await.with_context(failed)?;
    let mut read = Vec::with_capacity(rows.len());
    for row in &rows {
        read.push(decode(row)?);
    }
    Ok(read)
}

/// The events of known types, with their payloads; the others skipped with
/// a warning, as the live consumer skips them.
fn known(events: Vec<Read>) -> Vec<(RecordedEvent, EventPayload)> {
    let mut known = Vec::with_capacity(events.len());
    for (event, payload) in events {
        match payload {
            Some(payload) => known.push((event, payload)),
            None => tracing::warn!(
                event.position = event.position,
                event.type = %event.event_type,
                "skipping an event of a type this build does not know"
            ),
        }
    }
    known
}

/// One row: the event, and its payload, upcast, unless this build does not
/// know its type. The payload is read from the stored JSON text
/// (`stored_data`) straight into its type, with no `serde_json::Value` in
/// between (that tree was most of a rebuild's allocations); `data` itself is
/// left null, as `metadata` is left empty: the payload is all a projection
/// reads.
fn decode(row: &PgRow) -> anyhow::Result<Read> {
    let event = RecordedEvent::from_row(row).context("failed to read an event")?;
    let stored: Json<&RawValue> = row
        .try_get("stored_data")
        .with_context(|| format!("failed to read the data of event {}", event.position))?;
    match EventPayload::decode(&event.event_type, event.schema_version, stored.0) {
        Ok(Decoded::Known(payload)) => Ok((event, Some(payload))),
        Ok(Decoded::Unknown) => Ok((event, None)),
        Err(e) => Err(UnreadableEvent {
            position: event.position,
            event_type: Some(event.event_type),
            source: Box::new(e),
        }
        .into()),
    }
}

/// The first stream order key: every `(stream_id, stream_version)` is after it.
const BEFORE_EVERY_STREAM: (Uuid, i64) = (Uuid::nil(), 0);

/// Reads every event at or below `upto` of `stream_types`, **stream by
/// stream** (by `stream_id`, then `stream_version`: the log's unique index),
/// in pages of about `limit` events cut at stream boundaries, on a task of
/// its own, [`READ_AHEAD`] pages ahead of the receiver. Whole streams per
/// page make a rebuild's load insert each row once, folded, instead of
/// reading back and rewriting rows that earlier pages wrote; a stream longer
/// than a page is sent in pages of its own, the later ones applied onto the
/// row the earlier ones wrote. The task stops after the last page, at the
/// first error (sent), or when the receiver is dropped.
pub(super) fn spawn_stream_reader(
    pool: PgPool,
    upto: i64,
    stream_types: Vec<&'static str>,
    limit: i64,
) -> mpsc::Receiver<anyhow::Result<Page>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let read = async {
            let mut conn = pool
                .acquire()
                .await
                .context("failed to connect to read the log")?;
            let mut cursor = BEFORE_EVERY_STREAM;
            // The events of the stream a full page ended in: they go with
            // the rest of that stream, in the next page.
            let mut carried: Vec<Read> = Vec::new();
            loop {
                let rows = read_streams(&mut conn, cursor, upto, &stream_types, limit).await?;
                let full = rows.len() as i64 == limit;
                if let Some((last, _)) = rows.last() {
                    cursor = (last.stream_id, last.stream_version);
                }
                let read = rows.len() as i64;
                let mut events = std::mem::take(&mut carried);
                events.extend(rows);
                if full {
                    let last = events.last().map(|(e, _)| e.stream_id);
                    let split = events
                        .iter()
                        .rposition(|(e, _)| Some(e.stream_id) != last)
                        .map_or(0, |i| i + 1);
                    if split > 0 {
                        carried = events.split_off(split);
                    }
                }
                let page = Page {
                    events: known(events),
                    through: read,
                };
                if tx.send(Ok(page)).await.is_err() || !full {
                    return anyhow::Ok(());
                }
            }
        };
        if let Err(e) = read.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// Up to `limit` events after `after` in stream order, at or below `upto`.
async fn read_streams(
    conn: &mut PgConnection,
    after: (Uuid, i64),
    upto: i64,
    stream_types: &[&str],
    limit: i64,
) -> anyhow::Result<Vec<Read>> {
    let query = sqlx::query(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, '{}'::jsonb as metadata, 'null'::jsonb as data,
                data as stored_data
           from events
          where (stream_id, stream_version) > ($1, $2)
            and position <= $3 and stream_type = any($4)
          order by stream_id, stream_version
          limit $5",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(upto)
    .bind(stream_types)
    .bind(limit);
    fetch_decoded(conn, query, || {
        format!("failed to read the event log after stream {}", after.0)
    })
    .await
}
