//! A key's row in `idempotency_keys`: claiming it, storing the final answer
//! or releasing the claim, replaying a stored answer, and sweeping expired
//! rows. The rules are in the parent module's documentation.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{LEASE, REPLAYED, REPLAY_WINDOW, SWEEP_INTERVAL};
use crate::error::{ApiError, ApiResult};

/// The headers of a response that a replay repeats.
const REPLAYED_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::LOCATION];

pub(super) enum Claim {
    /// This request holds the key: run it.
    Owned { generation: Uuid },
    /// The same request has finished: replay its response.
    Done(Stored),
    /// The key belongs to another request.
    OtherRequest,
    /// The same request is running.
    InFlight,
}

#[derive(sqlx::FromRow)]
struct Existing {
    request_hash: Vec<u8>,
    response_status: Option<i16>,
    response_headers: Option<sqlx::types::Json<Vec<(String, String)>>>,
    response_body: Option<Vec<u8>>,
}

/// A stored response.
pub(super) struct Stored {
    status: i16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Stored {
    pub(super) fn replay(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        headers.insert(REPLAYED.clone(), HeaderValue::from_static("true"));
        response
    }
}

/// Claims the key: inserts it, or takes over a row that has expired (a new
/// generation) or that the same request abandoned in flight (the same
/// generation). Otherwise reads what holds it.
pub(super) async fn claim(
    db: &PgPool,
    tenant_id: Uuid,
    key: &str,
    hash: &[u8],
    owner: Uuid,
) -> ApiResult<Claim> {
    // Twice: a row swept between the two statements is claimed on the second go.
    for _ in 0..2 {
        let generation: Option<Uuid> = sqlx::query_scalar(
            "insert into idempotency_keys as k
                    (tenant_id, key, request_hash, generation, owner, locked_until)
             values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
             on conflict (tenant_id, key) do update
                set generation = case when k.created_at < now() - make_interval(secs => $7)
                                      then excluded.generation else k.generation end,
                    created_at = case when k.created_at < now() - make_interval(secs => $7)
                                      then now() else k.created_at end,
                    request_hash = excluded.request_hash,
                    owner = excluded.owner,
                    locked_until = excluded.locked_until,
                    response_status = null,
                    response_headers = null,
                    response_body = null
              where k.created_at < now() - make_interval(secs => $7)
                 or (k.response_status is null and k.locked_until <= now()
                     and k.request_hash = excluded.request_hash)
             returning generation",
        )
        .bind(tenant_id)
        .bind(key)
        .bind(hash)
        .bind(Uuid::new_v4())
        .bind(owner)
        .bind(LEASE.as_secs_f64())
        .bind(REPLAY_WINDOW.as_secs_f64())
        .fetch_optional(db)
        .await?;
        if let Some(generation) = generation {
            return Ok(Claim::Owned { generation });
        }

        let existing: Option<Existing> = sqlx::query_as(
            "select request_hash, response_status, response_headers, response_body
               from idempotency_keys
              where tenant_id = $1 and key = $2",
        )
        .bind(tenant_id)
        .bind(key)
        .fetch_optional(db)
        .await?;
        let Some(existing) = existing else { continue };
        if existing.request_hash != hash {
            return Ok(Claim::OtherRequest);
        }
        return Ok(match existing.response_status {
            Some(status) => Claim::Done(Stored {
                status,
                headers: existing.response_headers.map(|h| h.0).unwrap_or_default(),
                body: existing.response_body.unwrap_or_default(),
            }),
            None => Claim::InFlight,
        });
    }
    Ok(Claim::InFlight)
}

/// A claim held by the running request. Dropped unsettled (the request
/// timed out, or its client hung up), it releases the key in the background.
pub(super) struct Lease {
    db: PgPool,
    tenant_id: Uuid,
    key: String,
    owner: Uuid,
    settled: bool,
}

/// Whether a response is the request's final answer, to be replayed. Not a
/// 5xx, a 409 (a lost race) or a 429, which may succeed when retried; nor a
/// 403, which is about the key that sent the request, not the request (the
/// same request with a key of the right scope must run).
fn is_final(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

impl Lease {
    pub(super) fn new(db: PgPool, tenant_id: Uuid, key: String, owner: Uuid) -> Self {
        Self {
            db,
            tenant_id,
            key,
            owner,
            settled: false,
        }
    }

    /// Stores a final response, or releases the key; gives the response back.
    pub(super) async fn settle(&mut self, response: Response) -> Response {
        self.settled = true;
        if !is_final(response.status()) {
            release(&self.db, self.tenant_id, &self.key, self.owner).await;
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "failed to read a response to store it");
                release(&self.db, self.tenant_id, &self.key, self.owner).await;
                return ApiError::Internal(anyhow::anyhow!("unreadable response")).into_response();
            }
        };
        if let Err(e) = self.store(parts.status, &parts.headers, &body).await {
            // The answer stands; a retry runs the request again, with the
            // same derived ids, so it cannot append twice.
            tracing::error!(error = %e, "failed to store an idempotent response");
            release(&self.db, self.tenant_id, &self.key, self.owner).await;
        }
        Response::from_parts(parts, Body::from(body))
    }

    async fn store(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(), sqlx::Error> {
        let kept: Vec<(String, String)> = REPLAYED_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        sqlx::query(
            "update idempotency_keys
                set response_status = $4, response_headers = $5, response_body = $6,
                    locked_until = null
              where tenant_id = $1 and key = $2 and owner = $3 and response_status is null",
        )
        .bind(self.tenant_id)
        .bind(&self.key)
        .bind(self.owner)
        .bind(status.as_u16() as i16)
        .bind(sqlx::types::Json(kept))
        .bind(body.as_ref())
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (db, tenant_id, key, owner) = (
            self.db.clone(),
            self.tenant_id,
            std::mem::take(&mut self.key),
            self.owner,
        );
        tokio::spawn(async move { release(&db, tenant_id, &key, owner).await });
    }
}

/// Ends this request's claim without a stored response: a retry of the same
/// request may take the key over at once, keeping its generation.
async fn release(db: &PgPool, tenant_id: Uuid, key: &str, owner: Uuid) {
    let released = sqlx::query(
        "update idempotency_keys set locked_until = now()
          where tenant_id = $1 and key = $2 and owner = $3 and response_status is null",
    )
    .bind(tenant_id)
    .bind(key)
    .bind(owner)
    .execute(db)
    .await;
    if let Err(e) = released {
        // The lease then simply runs out.
        tracing::warn!(error = %e, "failed to release an idempotency key");
    }
}

/// Deletes expired keys every [`SWEEP_INTERVAL`] until `stop` is cancelled.
/// Every api instance runs one; they do not need to agree.
pub fn spawn_sweeper(db: PgPool, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match sweep(&db).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "deleted expired idempotency keys"),
                Err(e) => tracing::warn!(error = %e, "failed to delete expired idempotency keys"),
            }
        }
    })
}

/// Deletes the keys older than [`REPLAY_WINDOW`]; how many.
pub async fn sweep(db: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "delete from idempotency_keys where created_at < now() - make_interval(secs => $1)",
    )
    .bind(REPLAY_WINDOW.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_answers_are_stored() {
        for status in [200, 201, 400, 404, 412, 422] {
            assert!(
                is_final(StatusCode::from_u16(status).expect("status")),
                "{status}"
            );
        }
        for status in [403, 409, 429, 500, 503] {
            assert!(
                !is_final(StatusCode::from_u16(status).expect("status")),
                "{status}"
            );
        }
    }
}
