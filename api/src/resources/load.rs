//! Reading a resource: from its event stream, folded (the authoritative
//! state that commands validate against), or from its read model (what
//! `GET /{id}` shows).

use std::collections::HashMap;

use schema::envelope::{Decoded, RecordedEvent};
use schema::resources::Fold;
use schema::store;
use sqlx::PgPool;
use uuid::Uuid;

use super::{internal, Resource};
use crate::error::ApiResult;

/// A stream folded: the state (deleted or not) and the position of its last
/// event.
pub struct Folded<R> {
    pub state: R,
    pub position: i64,
}

/// The resource `id` of `tenant_id` as its events say, deleted or not.
/// `None` when there is no such stream, or it holds another kind of
/// resource, or another tenant's.
pub async fn stream<R: Resource>(
    db: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> ApiResult<Option<Folded<R>>> {
    let events = store::read_stream(db, id).await?;
    fold(tenant_id, &events)
}

/// The resource, if it exists and is not deleted.
pub async fn live<R: Resource>(db: &PgPool, tenant_id: Uuid, id: Uuid) -> ApiResult<Option<R>> {
    Ok(stream::<R>(db, tenant_id, id)
        .await?
        .map(|f| f.state)
        .filter(|r| r.meta().deleted_at.is_none()))
}

/// Those of `ids` that exist and are not deleted, in one round trip.
pub async fn live_many<R: Resource>(
    db: &PgPool,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> ApiResult<HashMap<Uuid, R>> {
    let events = store::read_streams(db, ids).await?;
    let mut found = HashMap::new();
    for stream in events.chunk_by(|a, b| a.stream_id == b.stream_id) {
        if let Some(folded) = fold::<R>(tenant_id, stream)? {
            if folded.state.meta().deleted_at.is_none() {
                found.insert(folded.state.meta().id, folded.state);
            }
        }
    }
    Ok(found)
}

/// Folds one stream's events, if they are `tenant_id`'s and of `R`'s kind.
fn fold<R: Resource>(tenant_id: Uuid, events: &[RecordedEvent]) -> ApiResult<Option<Folded<R>>> {
    match events.first() {
        Some(first) if first.tenant_id == tenant_id && first.stream_type == R::STREAM_TYPE => {}
        _ => return Ok(None),
    }
    fold_events(events)
}

/// Folds one stream's events, oldest first, with `T`'s fold, skipping types
/// this build does not know (as the projector does).
pub fn fold_events<T: Fold>(events: &[RecordedEvent]) -> ApiResult<Option<Folded<T>>> {
    let mut state = None;
    let mut position = 0;
    for event in events {
        match event
            .decode()
            .map_err(|e| internal(e, "failed to decode a stored event"))?
        {
            Decoded::Known(payload) => {
                state = Some(
                    T::fold(state, event, &payload)
                        .map_err(|e| internal(e, "failed to fold a stream"))?,
                );
                position = event.position;
            }
            Decoded::Unknown => tracing::warn!(
                event.id = %event.id,
                event.event_type = %event.event_type,
                "skipping an event type this build does not know"
            ),
        }
    }
    Ok(state.map(|state| Folded { state, position }))
}

/// The resource as its read model holds it, if it is the tenant's and not
/// deleted. The row's columns are the fold's fields, by name, so the row
/// reads back as the folded state.
pub async fn projected<R: Resource>(
    db: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> ApiResult<Option<R>> {
    // `COLLECTION` is a constant of ours, never client input.
    let sql = format!(
        "select to_jsonb(r) from {} r where id = $1 and tenant_id = $2 and deleted_at is null",
        R::COLLECTION
    );
    let row: Option<serde_json::Value> = sqlx::query_scalar(&sql)
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(db)
        .await?;
    row.map(|row| {
        serde_json::from_value(row).map_err(|e| internal(e, "failed to read a read-model row"))
    })
    .transpose()
}
