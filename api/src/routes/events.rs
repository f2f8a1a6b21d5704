//! The event history, for auditors (`admin` scope, the caller's tenant
//! only): `GET /api/v1/events` pages through the tenant's events in position
//! order, or streams them as NDJSON to the end; `GET /api/v1/events/head` is
//! the tenant's latest position and hash, a checkpoint to keep.
//!
//! Each event is returned as stored, with `data` and `metadata` exactly as
//! PostgreSQL prints them (`jsonb::text`, never re-serialized) and its
//! `hash`, so that anyone can recompute the tenant's hash chain from what
//! this endpoint returns (ARCHITECTURE.md, "Tamper evidence";
//! `scripts/verify_chain.py`). Events are read from the log itself, not a
//! read model: an acknowledged write is already in it.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use schema::chain;
use schema::events::Scope;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::extract::AppJson;
use crate::lists::params::{invalid, Params, RawParams};
use crate::state::AppState;
use crate::tenancy::Data;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
/// Rows per query of an NDJSON stream: what the api holds at once. At 1000
/// the api's peak memory grew by 28 MB over a 100 MB stream (mimalloc keeps
/// freed pages per thread for reuse); at 250 by 16 MB, for ≈ 12 % more time
/// (tests/tests/history.rs, a debug build).
const STREAM_PAGE: i64 = 250;
/// The longest `type` filter accepted, in characters.
const MAX_TYPE: usize = 200;
pub const NDJSON: &str = "application/x-ndjson";

const KNOWN: &[&str] = &["after", "limit", "type", "stream_id"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(list))
        .route("/api/v1/events/head", get(head))
}

/// One stored event, as recorded (at its own `schema_version`).
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEvent {
    /// The event's place in the log: dense over every tenant, so a tenant's
    /// positions have gaps where other tenants' events are.
    pub position: i64,
    pub id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "LeadCreated")]
    pub event_type: String,
    pub schema_version: i32,
    #[schema(example = "lead")]
    pub stream_type: String,
    pub stream_id: Uuid,
    pub stream_version: i64,
    /// UTC, always with six fractional digits.
    #[schema(example = "2026-01-31T09:00:00.000000Z")]
    pub occurred_at: String,
    /// As stored, in PostgreSQL's jsonb text form.
    #[schema(value_type = Object)]
    pub metadata: Box<RawValue>,
    /// As stored, in PostgreSQL's jsonb text form.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// SHA-256(previous hash of the tenant ‖ canonical bytes of this event),
    /// 64 hex digits.
    pub hash: String,
}

/// A page of the history: `{"data": [...], "pagination": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub data: Vec<HistoryEvent>,
    pub pagination: Cursor,
}

/// Where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Cursor {
    /// Pass as `after` for the next page: the last position of this page
    /// (or the `after` given, when the page is empty).
    pub next_after: i64,
    /// Whether more matching events existed when this page was read.
    pub has_more: bool,
}

/// The tenant's latest event: a checkpoint for `jeanus-projector verify
/// --from-checkpoint POSITION:HASH`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Head {
    /// 0 when the tenant has no events.
    pub position: i64,
    /// 64 hex digits; 64 zeros when the tenant has no events.
    pub hash: String,
}

/// The query parameters (read by `Filter::parse`; this type documents them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoryQuery {
    /// Events after this position, 0 or more (default 0: from the start).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100). Not with `Accept: application/x-ndjson`.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only events of this type (as stored, e.g. `LeadCreated`).
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only the events of this stream.
    stream_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter {
    after: i64,
    limit: i64,
    event_type: Option<String>,
    stream_id: Option<Uuid>,
}

impl Filter {
    fn parse(raw: RawParams, streaming: bool) -> ApiResult<Self> {
        let params = Params::parse(raw, KNOWN)?;
        if streaming && params.has("limit") {
            return Err(invalid(
                "limit",
                format!("is not used with Accept: {NDJSON}, which streams to the end"),
            ));
        }
        Ok(Self {
            after: params.integer("after", 0..=i64::MAX)?.unwrap_or(0),
            limit: params
                .integer("limit", 1..=MAX_LIMIT)?
                .unwrap_or(DEFAULT_LIMIT),
            event_type: params.text("type", MAX_TYPE)?,
            stream_id: params.uuid("stream_id")?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    position: i64,
    id: Uuid,
    event_type: String,
    schema_version: i32,
    stream_type: String,
    stream_id: Uuid,
    stream_version: i64,
    occurred_at: DateTime<Utc>,
    metadata: String,
    data: String,
    hash: Vec<u8>,
}

impl TryFrom<Row> for HistoryEvent {
    type Error = serde_json::Error;

    fn try_from(row: Row) -> Result<Self, Self::Error> {
        Ok(Self {
            position: row.position,
            id: row.id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            stream_type: row.stream_type,
            stream_id: row.stream_id,
            stream_version: row.stream_version,
            occurred_at: chain::format_occurred_at(row.occurred_at),
            metadata: RawValue::from_string(row.metadata)?,
            data: RawValue::from_string(row.data)?,
            hash: chain::to_hex(&row.hash),
        })
    }
}

/// The tenant's events matching `filter` after `after`, up to `until` if
/// given, at most `limit`, in position order.
async fn page(
    db: &PgPool,
    tenant: Uuid,
    filter: &Filter,
    after: i64,
    until: Option<i64>,
    limit: i64,
) -> ApiResult<Vec<HistoryEvent>> {
    let mut query = QueryBuilder::<Postgres>::new(
        "select position, id, event_type, schema_version, stream_type, stream_id, \
         stream_version, occurred_at, metadata::text as metadata, data::text as data, hash \
         from events where tenant_id = ",
    );
    query
        .push_bind(tenant)
        .push(" and position > ")
        .push_bind(after);
    if let Some(until) = until {
        query.push(" and position <= ").push_bind(until);
    }
    if let Some(event_type) = &filter.event_type {
        query.push(" and event_type = ").push_bind(event_type);
    }
    if let Some(stream_id) = filter.stream_id {
        query.push(" and stream_id = ").push_bind(stream_id);
    }
    query.push(" order by position limit ").push_bind(limit);
    let rows: Vec<Row> = query.build_query_as().fetch_all(db).await?;
    rows.into_iter()
        .map(HistoryEvent::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("a stored event is not JSON: {e}")))
}

/// The tenant's events in position order (`admin` scope): a page, or with
/// `Accept: application/x-ndjson` every event from `after` to the tenant's
/// latest when the request began, one JSON object per line, streamed.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(HistoryQuery),
    responses(
        (status = 200, description = "A page of events in position order; or, with \
            `Accept: application/x-ndjson`, every matching event after `after`, one per line. \
            A stream cut short by a failure ends without its last newline.",
            content(
                (HistoryPage = "application/json"),
                (HistoryEvent = "application/x-ndjson"),
            )),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated, malformed or out of range; the message names it.", body = ErrorResponse),
        (status = 403, description = "`missing_scope`: the key lacks the admin scope.", body = ErrorResponse),
    )
)]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    headers: HeaderMap,
    params: RawParams,
) -> ApiResult<Response> {
    principal.require(Scope::Admin)?;
    let streaming = wants_ndjson(&headers);
    let filter = Filter::parse(params, streaming)?;
    let tenant = principal.tenant_id;
    if streaming {
        let (position, _) = latest(&state.db, tenant).await?;
        return Ok(stream(state.db.clone(), tenant, filter, position));
    }
    // One more than asked: whether there is a next page.
    let mut data = page(
        &state.db,
        tenant,
        &filter,
        filter.after,
        None,
        filter.limit + 1,
    )
    .await?;
    let has_more = data.len() as i64 > filter.limit;
    data.truncate(filter.limit as usize);
    let next_after = data.last().map_or(filter.after, |e| e.position);
    Ok(AppJson(HistoryPage {
        data,
        pagination: Cursor {
            next_after,
            has_more,
        },
    })
    .into_response())
}

/// Whether the client asked for NDJSON (`Accept: application/x-ndjson`,
/// with or without parameters, among other types or alone).
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(NDJSON))
        })
}

/// Every matching event in `(after, until]`, one query of [`STREAM_PAGE`]
/// rows at a time, each page sent before the next is read: the api holds one
/// page, whatever the history's length. A failure mid-stream is logged and
/// cuts the body short (the client sees an incomplete stream, never a
/// complete-looking one).
fn stream(db: PgPool, tenant: Uuid, filter: Filter, until: i64) -> Response {
    struct Cursor {
        db: PgPool,
        tenant: Uuid,
        filter: Filter,
        after: i64,
        until: i64,
    }
    let start = Cursor {
        after: filter.after,
        db,
        tenant,
        filter,
        until,
    };
    let body = futures::stream::try_unfold(start, |mut c| async move {
        if c.after >= c.until {
            return Ok(None);
        }
        let events = page(
            &c.db,
            c.tenant,
            &c.filter,
            c.after,
            Some(c.until),
            STREAM_PAGE,
        )
        .await
        .inspect_err(|e| tracing::error!(error = %e, "the event stream failed; cut short"))?;
        let Some(last) = events.last() else {
            return Ok(None);
        };
        c.after = if (events.len() as i64) < STREAM_PAGE {
            c.until
        } else {
            last.position
        };
        let mut chunk = Vec::with_capacity(events.len() * 512);
        for event in &events {
            serde_json::to_writer(&mut chunk, event).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("an event does not serialize: {e}"))
            })?;
            chunk.push(b'\n');
        }
        Ok::<_, ApiError>(Some((Bytes::from(chunk), c)))
    });
    let mut response = Body::from_stream(body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// The tenant's latest position and hash; `(0, GENESIS)` without events.
async fn latest(db: &PgPool, tenant: Uuid) -> ApiResult<(i64, chain::Hash)> {
    let found: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "select position, hash from events where tenant_id = $1 order by position desc limit 1",
    )
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    Ok(match found {
        None => (0, chain::GENESIS),
        Some((position, hash)) => (
            position,
            chain::Hash::try_from(hash.as_slice()).map_err(|_| {
                ApiError::Internal(anyhow::anyhow!("the hash at {position} is not 32 bytes"))
            })?,
        ),
    })
}

/// The tenant's latest position and its hash (`admin` scope): keep it, and
/// `jeanus-projector verify --from-checkpoint POSITION:HASH` (or
/// `scripts/verify_chain.py`) later proves that the chain still holds it.
#[utoipa::path(
    get,
    path = "/api/v1/events/head",
    tag = "events",
    responses(
        (status = 200, description = "The tenant's latest position and hash", body = Data<Head>),
        (status = 403, description = "`missing_scope`: the key lacks the admin scope.", body = ErrorResponse),
    )
)]
pub async fn head(
    principal: Principal,
    State(state): State<AppState>,
) -> ApiResult<AppJson<Data<Head>>> {
    principal.require(Scope::Admin)?;
    let (position, hash) = latest(&state.db, principal.tenant_id).await?;
    Ok(AppJson(Data {
        data: Head {
            position,
            hash: chain::to_hex(&hash),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Query;

    fn filter(pairs: &[(&str, &str)], streaming: bool) -> ApiResult<Filter> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Filter::parse(Ok(Query(pairs)), streaming)
    }

    fn refused(pairs: &[(&str, &str)], streaming: bool) -> String {
        match filter(pairs, streaming) {
            Err(ApiError::InvalidParam { name, .. }) => name,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_defaults_are_a_hundred_from_the_start() {
        let f = filter(&[], false).expect("valid");
        assert_eq!(
            f,
            Filter {
                after: 0,
                limit: 100,
                event_type: None,
                stream_id: None
            }
        );
        let id = Uuid::now_v7();
        let f = filter(
            &[
                ("after", "41"),
                ("limit", "1000"),
                ("type", "LeadCreated"),
                ("stream_id", &id.to_string()),
            ],
            false,
        )
        .expect("valid");
        assert_eq!(
            (f.after, f.limit, f.event_type.as_deref(), f.stream_id),
            (41, 1000, Some("LeadCreated"), Some(id))
        );
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        for (name, value) in [
            ("after", "-1"),
            ("after", "x"),
            ("limit", "0"),
            ("limit", "1001"),
            ("type", ""),
            ("stream_id", "nope"),
            ("tenant_id", "x"),
        ] {
            assert_eq!(refused(&[(name, value)], false), name, "{name}={value}");
        }
        let long = "x".repeat(MAX_TYPE + 1);
        assert_eq!(refused(&[("type", &long)], false), "type");
        assert_eq!(refused(&[("after", "1"), ("after", "2")], false), "after");
        // A stream runs to the end: a page size means nothing there.
        assert_eq!(refused(&[("limit", "10")], true), "limit");
        assert!(filter(&[("after", "10")], true).is_ok());
    }

    #[test]
    fn ndjson_is_chosen_by_the_accept_header() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("a header"));
            wants_ndjson(&h)
        };
        assert!(accept("application/x-ndjson"));
        assert!(accept("application/json;q=0.5, Application/X-NDJSON; q=1"));
        assert!(!accept("application/json"));
        assert!(!accept("*/*"));
        assert!(!wants_ndjson(&HeaderMap::new()));
    }
}
