//! The event log as a rebuild reads it: straight from PostgreSQL (not
//! through JetStream), in keyset pages by position, decoded and upcast, with
//! the next page read while the current one is applied.

use anyhow::Context as _;
use schema::envelope::{Decoded, RecordedEvent};
use schema::events::EventPayload;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::consumer::UnreadableEvent;

/// Pages read ahead of the one being applied.
const READ_AHEAD: usize = 2;

/// A run of the log, decoded: the events of the stream types asked for.
pub(super) struct Page {
    pub(super) events: Vec<(RecordedEvent, EventPayload)>,
    /// Every position up to this one has been read (whether its event was
    /// of a type asked for or not).
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
    let rows: Vec<RecordedEvent> = sqlx::query_as(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, metadata, data
           from events
          where position > $1 and position <= $2 and stream_type = any($3)
          order by position
          limit $4",
    )
    .bind(after)
    .bind(upto)
    .bind(stream_types)
    .bind(limit)
    .fetch_all(conn)
    .await
    .with_context(|| format!("failed to read the event log after position {after}"))?;
    let through = match rows.last() {
        Some(last) if rows.len() as i64 == limit => last.position,
        _ => upto,
    };
    let mut events = Vec::with_capacity(rows.len());
    for event in rows {
        if let Some(known) = decode(event)? {
            events.push(known);
        }
    }
    Ok(Page { events, through })
}

/// The event with its payload, upcast; `None` for a type this build does
/// not know.
fn decode(
    mut event: RecordedEvent,
) -> Result<Option<(RecordedEvent, EventPayload)>, UnreadableEvent> {
    // The payload is all a projection reads: move the data into it rather
    // than copy it (`RecordedEvent::decode` clones).
    let data = std::mem::take(&mut event.data);
    match EventPayload::decode(&event.event_type, event.schema_version, data) {
        Ok(Decoded::Known(payload)) => Ok(Some((event, payload))),
        Ok(Decoded::Unknown) => {
            tracing::warn!(
                event.position = event.position,
                event.type = %event.event_type,
                "skipping an event of a type this build does not know"
            );
            Ok(None)
        }
        Err(e) => Err(UnreadableEvent {
            position: event.position,
            event_type: Some(event.event_type),
            source: Box::new(e),
        }),
    }
}

/// Reads `(after, upto]` page by page on a task of its own, [`READ_AHEAD`]
/// pages ahead of the receiver, so that reading and decoding one page
/// overlaps applying the previous one. The task stops after the last page,
/// at the first error (sent), or when the receiver is dropped.
pub(super) fn spawn_reader(
    pool: PgPool,
    after: i64,
    upto: i64,
    stream_types: Vec<&'static str>,
    limit: i64,
) -> mpsc::Receiver<anyhow::Result<Page>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let _ = tx
                    .send(Err(
                        anyhow::Error::new(e).context("failed to connect to read the log")
                    ))
                    .await;
                return;
            }
        };
        let mut cursor = after;
        while cursor < upto {
            let page = read_page(&mut conn, cursor, upto, &stream_types, limit).await;
            let next = page.as_ref().map(|p| p.through).ok();
            if tx.send(page).await.is_err() {
                return;
            }
            match next {
                Some(through) => cursor = through,
                None => return,
            }
        }
    });
    rx
}
