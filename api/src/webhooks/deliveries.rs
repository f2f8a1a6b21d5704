//! The delivery log of an endpoint, read from the dispatcher's tables
//! (`webhook_deliveries`, `webhook_attempts`: migration 0008), and the two
//! commands that make deliveries due again: retry one, recover every failed
//! one since a time.
//!
//! Retry and recover write the dispatcher's operational tables directly
//! rather than append events: they change *when* a delivery is next tried,
//! not the state of any subscription or resource, and the deliveries
//! themselves are operational state that is not rebuilt from the log (a
//! replay must not re-send anything). The dispatcher owns sending; the api
//! only sets a delivery back to `pending`, due now, and wakes the workers
//! (the channel the dispatcher listens on).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::find;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::lists::params::{invalid, Params, RawParams};
use crate::lists::{Page, Pagination};
use crate::resources::path_id;
use crate::state::AppState;

/// The channel the dispatcher's workers LISTEN on (`dispatcher::intake`'s
/// `DELIVERIES_CHANNEL`; the api does not depend on the dispatcher).
pub const DELIVERIES_CHANNEL: &str = "jeanus_webhook_deliveries";

/// One attempt to deliver one event to the endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub id: Uuid,
    pub delivery_id: Uuid,
    /// The event delivered: the body's `id` and the `webhook-id` header.
    pub event_id: Uuid,
    /// Its public type, e.g. `lead.stage_changed`.
    pub event_type: String,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    /// Null for a 2xx; else `timeout`, `connect`, `dns`, `http` (any other
    /// answer, a redirect included) or `blocked` (a non-public address).
    pub error_class: Option<String>,
    /// The start of the response body.
    pub response_excerpt: Option<String>,
    /// The delivery's state now: `pending`, `delivered`, `failed` or
    /// `cancelled`.
    pub delivery_status: String,
}

/// A delivery after a retry.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct DeliveryView {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending` after a retry.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The answer to a recover.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recovered {
    /// How many failed deliveries are due again.
    pub recovered: i64,
    pub since: DateTime<Utc>,
}

/// `GET /api/v1/webhooks/{id}/deliveries`: every attempt, newest first,
/// paginated like the lists (`limit`, `offset`).
pub async fn attempts(
    state: &AppState,
    caller: &Principal,
    id: &str,
    raw: RawParams,
) -> ApiResult<Page<AttemptView>> {
    let params = Params::parse(raw, &["limit", "offset"])?;
    let (limit, offset) = (params.limit()?, params.offset()?);
    let endpoint = find(state, caller, id).await?;
    let rows: Vec<(i64, sqlx::types::Json<Option<serde_json::Value>>)> = sqlx::query_as(
        "select c.total, to_jsonb(p) from
           (select count(*) as total from webhook_attempts
             where endpoint_id = $1 and tenant_id = $2) c
         left join lateral
           (select a.id, a.delivery_id, d.event_id, d.event_type, a.at, a.status_code,
                   a.latency_ms, a.error_class, a.response_excerpt, d.status as delivery_status
              from webhook_attempts a join webhook_deliveries d on d.id = a.delivery_id
             where a.endpoint_id = $1 and a.tenant_id = $2
             order by a.at desc, a.id desc limit $3 offset $4) p on true",
    )
    .bind(endpoint.meta.id)
    .bind(caller.tenant_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db)
    .await?;
    let total = rows.first().map_or(0, |(total, _)| *total);
    let data = rows
        .into_iter()
        .filter_map(|(_, sqlx::types::Json(row))| row)
        .map(serde_json::from_value)
        .collect::<Result<Vec<AttemptView>, _>>()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("an attempt row")))?;
    Ok(Page {
        data,
        pagination: Pagination {
            total,
            limit,
            offset,
        },
    })
}

/// `POST /api/v1/webhooks/{id}/deliveries/{delivery_id}/retry`: the
/// delivery is due now, whatever its state (a delivered one is sent again).
/// One more failure puts it back on the dispatcher's schedule where it was.
pub async fn retry(
    state: &AppState,
    caller: &Principal,
    id: &str,
    delivery_id: &str,
) -> ApiResult<DeliveryView> {
    let delivery_id = path_id(delivery_id)?;
    let endpoint = find(state, caller, id).await?;
    let mut tx = schema::tx::begin(&state.db).await?;
    let delivery: DeliveryView = sqlx::query_as(
        "update webhook_deliveries set status = 'pending', next_attempt_at = now()
          where id = $1 and endpoint_id = $2 and tenant_id = $3
         returning id, event_id, event_type, status, attempts, next_attempt_at,
                   last_attempt_at, created_at",
    )
    .bind(delivery_id)
    .bind(endpoint.meta.id)
    .bind(caller.tenant_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    wake_dispatcher(&mut tx).await?;
    tx.commit().await?;
    Ok(delivery)
}

/// `POST /api/v1/webhooks/{id}/recover?since=<RFC 3339>`: every failed
/// delivery created since then is due again, now.
pub async fn recover(
    state: &AppState,
    caller: &Principal,
    id: &str,
    raw: RawParams,
) -> ApiResult<Recovered> {
    let params = Params::parse(raw, &["since"])?;
    let since = params
        .time("since")?
        .ok_or_else(|| invalid("since", "is required: an RFC 3339 time"))?;
    let endpoint = find(state, caller, id).await?;
    let recovered = recover_since(&state.db, caller.tenant_id, endpoint.meta.id, since).await?;
    Ok(Recovered { recovered, since })
}

async fn recover_since(
    db: &PgPool,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let mut tx = schema::tx::begin(db).await?;
    let recovered = sqlx::query(
        "update webhook_deliveries set status = 'pending', next_attempt_at = now()
          where endpoint_id = $1 and tenant_id = $2 and status = 'failed' and created_at >= $3",
    )
    .bind(endpoint_id)
    .bind(tenant_id)
    .bind(since)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if recovered > 0 {
        wake_dispatcher(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(recovered as i64)
}

/// Delivered with the commit: the dispatcher's workers look for due
/// deliveries now rather than at their next poll.
async fn wake_dispatcher(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, '')")
        .bind(DELIVERIES_CHANNEL)
        .execute(tx)
        .await
        .map(|_| ())
}
