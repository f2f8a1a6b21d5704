//! Create, find, update and delete, for any [`Resource`]: check the body,
//! load the stream, check it against the current state, append with the
//! version read, wait for the read model (read your writes), answer.
//!
//! A stale version is a lost race. With `If-Match: "<version>"` the client
//! asked to write only on the version it had seen: 412. Without (or with
//! `If-Match: *`), the command runs again on the new state, up to
//! [`ATTEMPTS`] times, then answers 409 `conflict`.

use std::ops::RangeInclusive;

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{SubsecRound, Utc};
use schema::envelope::{NewEvent, RecordedEvent};
use schema::events::EventPayload;
use schema::store::{AppendError, ExpectedVersion, StreamRef};
use serde_json::Value;
use uuid::Uuid;

use super::{fields, internal, load, path_id, respond, Body, IfMatch, Resource};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::idempotency::EventIds;
use crate::state::AppState;
use crate::tenancy::append_failed;

/// How many times a write without `If-Match` is tried against a stream that
/// keeps moving under it.
pub const ATTEMPTS: usize = 5;

/// `POST /api/v1/<collection>`: 201 with the resource, its ETag and Location.
pub async fn create<R: Resource>(
    state: &AppState,
    caller: &Principal,
    ids: &EventIds,
    body: Body,
) -> ApiResult<Response> {
    let mut input = fields::for_create(R::FIELDS, body)?;
    R::check(&state.db, caller.tenant_id, &mut input, None).await?;
    let created =
        R::created(input).map_err(|e| internal(e, "a checked body did not make an event"))?;
    let stream = stream_of::<R>(caller.tenant_id, ids.resource_id());
    let resource = append::<R>(state, caller, ids, stream, None, vec![created])
        .await?
        // A new id (or an idempotent retry's, which the store takes as a
        // duplicate): a conflict here is a bug.
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a new stream already exists")))?;
    Ok(respond(StatusCode::CREATED, resource))
}

/// `GET /api/v1/<collection>/{id}`, from the read model once it holds every
/// write of the tenant acknowledged so far.
pub async fn find<R: Resource>(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> ApiResult<Response> {
    let id = path_id(id)?;
    state
        .projected
        .catch_up_tenant(&state.db, caller.tenant_id)
        .await?;
    let resource = load::projected::<R>(&state.db, caller.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(respond(StatusCode::OK, resource))
}

/// `PATCH /api/v1/<collection>/{id}` with a JSON merge patch: 200 with the
/// resource as it is now. A patch that changes nothing appends nothing.
pub async fn update<R: Resource>(
    state: &AppState,
    caller: &Principal,
    ids: &EventIds,
    id: &str,
    if_match: &IfMatch,
    body: Body,
) -> ApiResult<Response> {
    let id = path_id(id)?;
    let patch = fields::for_patch(R::FIELDS, body)?;
    for _ in 0..ATTEMPTS {
        let current = load::live::<R>(&state.db, caller.tenant_id, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        if_match.check(current.meta().version)?;
        let mut input = patch.clone();
        R::check(&state.db, caller.tenant_id, &mut input, Some(&current)).await?;
        let events = changes(&current, input)?;
        if events.is_empty() {
            return Ok(respond(StatusCode::OK, current));
        }
        let stream = stream_of::<R>(caller.tenant_id, id);
        match append(state, caller, ids, stream, Some(current), events).await? {
            Some(updated) => return Ok(respond(StatusCode::OK, updated)),
            None if if_match.pins_version() => return Err(ApiError::PreconditionFailed),
            None => continue,
        }
    }
    Err(ApiError::Conflict)
}

/// `DELETE /api/v1/<collection>/{id}`: a soft delete, 204. The resource is
/// then not found, by any request.
pub async fn delete<R: Resource>(
    state: &AppState,
    caller: &Principal,
    ids: &EventIds,
    id: &str,
    if_match: &IfMatch,
) -> ApiResult<StatusCode> {
    let id = path_id(id)?;
    for _ in 0..ATTEMPTS {
        let current = load::live::<R>(&state.db, caller.tenant_id, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        if_match.check(current.meta().version)?;
        let stream = stream_of::<R>(caller.tenant_id, id);
        match append(
            state,
            caller,
            ids,
            stream,
            Some(current),
            vec![R::deleted()],
        )
        .await?
        {
            Some(_) => return Ok(StatusCode::NO_CONTENT),
            None if if_match.pins_version() => return Err(ApiError::PreconditionFailed),
            None => continue,
        }
    }
    Err(ApiError::Conflict)
}

fn stream_of<R: Resource>(tenant_id: Uuid, id: Uuid) -> StreamRef {
    StreamRef {
        tenant_id,
        stream_type: R::STREAM_TYPE,
        stream_id: id,
    }
}

/// The events that take `current` to `input`: an `*Updated` with the fields
/// whose value differs, then the transition's own event if it moves.
fn changes<R: Resource>(current: &R, mut input: Body) -> ApiResult<Vec<EventPayload>> {
    let transition = R::TRANSITION.and_then(|field| input.remove(field));
    let now =
        serde_json::to_value(current).map_err(|e| internal(e, "failed to serialise a state"))?;
    input.retain(|field, value| now.get(field) != Some(&*value));
    let mut events = Vec::new();
    if !input.is_empty() {
        events.push(R::updated(input));
    }
    if let Some(to) = transition {
        let moved = current
            .transitioned(&to)
            .map_err(|e| internal(e, "a checked value did not make a transition"))?;
        events.extend(moved);
    }
    Ok(events)
}

/// Appends `payloads` to `stream`, expecting the version of `current` (no
/// stream at all when `None`), waits until the read models hold them, and
/// gives the new state. `None`: the stream has moved since `current` was
/// read, and nothing was written.
async fn append<R: Resource>(
    state: &AppState,
    caller: &Principal,
    ids: &EventIds,
    stream: StreamRef,
    current: Option<R>,
    payloads: Vec<EventPayload>,
) -> ApiResult<Option<R>> {
    let expected = match &current {
        Some(current) => ExpectedVersion::Exact(current.meta().version),
        None => ExpectedVersion::NoStream,
    };
    // One time for the whole append, cut to PostgreSQL's microseconds so
    // that what the response shows equals what the read model will hold.
    let occurred_at = Utc::now().trunc_subsecs(6);
    let metadata = caller.metadata();
    let events: Vec<NewEvent> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| NewEvent {
            id: ids.event_id(i),
            occurred_at,
            ..NewEvent::new(payload, metadata.clone())
        })
        .collect();

    let appended = match state.store.append(stream, expected, events.clone()).await {
        Ok(appended) => appended,
        Err(AppendError::Conflict { .. }) => return Ok(None),
        Err(e) => return Err(append_failed(e)),
    };
    let (resource, position) = match &appended.positions {
        Some(positions) => {
            let mut state = current;
            for (recorded, payload) in
                recorded(stream, &events, positions, appended.version).zip(&payloads)
            {
                state = Some(
                    R::fold(state, &recorded, payload)
                        .map_err(|e| internal(e, "failed to fold an appended event"))?,
                );
            }
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("an empty append")))?;
            (state, *positions.end())
        }
        // Every id was stored already: an idempotent retry of a request
        // whose append committed. Answer with what the log holds.
        None => {
            let folded = load::stream::<R>(&state.db, stream.tenant_id, stream.stream_id)
                .await?
                .ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!("a duplicate append of a missing stream"))
                })?;
            (folded.state, folded.position)
        }
    };
    state.projected.settle(Some(position)).await;
    Ok(Some(resource))
}

/// The events of an append as the log now holds them: `events`, written to
/// `stream` at `positions`, the last at stream version `version`. What a
/// command folds onto the state it read, instead of reading it back.
pub fn recorded<'a>(
    stream: StreamRef,
    events: &'a [NewEvent],
    positions: &RangeInclusive<i64>,
    version: i64,
) -> impl Iterator<Item = RecordedEvent> + 'a {
    let first_version = version - events.len() as i64 + 1;
    let first_position = *positions.start();
    events
        .iter()
        .enumerate()
        .map(move |(i, event)| RecordedEvent {
            position: first_position + i as i64,
            id: event.id,
            tenant_id: stream.tenant_id,
            stream_type: stream.stream_type.to_owned(),
            stream_id: stream.stream_id,
            stream_version: first_version + i as i64,
            event_type: event.event_type.to_owned(),
            schema_version: event.schema_version,
            occurred_at: event.occurred_at,
            metadata: event.metadata.clone(),
            data: event.data.clone(),
        })
}

/// Serialised `current`, for [`fields::effective`].
pub fn serialised<R: Resource>(current: Option<&R>) -> ApiResult<Option<Value>> {
    current
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| internal(e, "failed to serialise a state"))
}
