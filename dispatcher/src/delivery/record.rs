//! Writing what the attempts came to: each attempt's row in the delivery log
//! and its delivery's next state, batched (whatever has queued, in one
//! statement, as the event store groups appends); and the
//! `WebhookEndpointDisabled` event of an endpoint that answered 410.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use schema::envelope::{Metadata, NewEvent};
use schema::events::{stream_types, EventPayload, WebhookEndpointDisabled};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::send::AttemptOutcome;

/// Most attempts recorded in one statement.
const MAX_RECORDS: usize = 500;

/// One attempt's outcome and the delivery's next state, to be written.
pub struct Record {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub tenant_id: Uuid,
    pub at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub status: &'static str,
    pub next: Option<DateTime<Utc>>,
}

/// Write the queued records, whatever has arrived in one statement, until
/// every sender is gone.
pub async fn record_batches(pool: PgPool, mut queue: mpsc::UnboundedReceiver<Record>) {
    let mut batch = Vec::with_capacity(MAX_RECORDS);
    while queue.recv_many(&mut batch, MAX_RECORDS).await > 0 {
        if let Err(e) = record(&pool, &batch).await {
            tracing::warn!(
                error = format!("{e:#}"),
                attempts = batch.len(),
                "failed to record delivery attempts; they are sent again when their lease ends"
            );
        }
        batch.clear();
    }
}

/// Record the attempts and the deliveries' next states in one statement. A
/// delivery is only moved if it is still pending (not cancelled meanwhile).
pub async fn record(pool: &PgPool, batch: &[Record]) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let delivery: Vec<Uuid> = batch.iter().map(|r| r.delivery_id).collect();
    let endpoint: Vec<Uuid> = batch.iter().map(|r| r.endpoint_id).collect();
    let tenant: Vec<Uuid> = batch.iter().map(|r| r.tenant_id).collect();
    let at: Vec<DateTime<Utc>> = batch.iter().map(|r| r.at).collect();
    let code: Vec<Option<i32>> = batch
        .iter()
        .map(|r| r.outcome.status_code.map(i32::from))
        .collect();
    let latency: Vec<i32> = batch
        .iter()
        .map(|r| i32::try_from(r.outcome.latency.as_millis()).unwrap_or(i32::MAX))
        .collect();
    let class: Vec<Option<&str>> = batch.iter().map(|r| r.outcome.error_class).collect();
    let excerpt: Vec<Option<&str>> = batch.iter().map(|r| r.outcome.excerpt.as_deref()).collect();
    let status: Vec<&str> = batch.iter().map(|r| r.status).collect();
    let next: Vec<Option<DateTime<Utc>>> = batch.iter().map(|r| r.next).collect();
    sqlx::query(
        "with o as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                                  $5::timestamptz[], $6::int[], $7::int[], $8::text[],
                                  $9::text[], $10::text[], $11::timestamptz[])
                 as o(id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms,
                      error_class, excerpt, status, next_at)
         ), attempts as (
             insert into webhook_attempts
                 (id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms,
                  error_class, response_excerpt)
             select id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms,
                    error_class, excerpt
               from o
         )
         update webhook_deliveries d
            set status = o.status,
                attempts = d.attempts + 1,
                last_attempt_at = o.at,
                next_attempt_at = coalesce(o.next_at, d.next_attempt_at)
           from o
          where d.id = any($2) and d.id = o.delivery_id and d.status = 'pending'",
    )
    .bind(&ids)
    .bind(&delivery)
    .bind(&endpoint)
    .bind(&tenant)
    .bind(&at)
    .bind(&code)
    .bind(&latency)
    .bind(&class)
    .bind(&excerpt)
    .bind(&status)
    .bind(&next)
    .execute(pool)
    .await
    .context("failed to record the attempts")?;
    Ok(())
}

/// Append `WebhookEndpointDisabled{reason}` to an endpoint's stream.
pub async fn disable_endpoint(
    store: &EventStore,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    reason: &str,
) -> anyhow::Result<()> {
    let payload = EventPayload::from(WebhookEndpointDisabled {
        reason: reason.to_owned(),
    });
    store
        .append(
            StreamRef {
                tenant_id,
                stream_type: stream_types::WEBHOOK_ENDPOINT,
                stream_id: endpoint_id,
            },
            ExpectedVersion::Any,
            vec![NewEvent::new(&payload, Metadata::default())],
        )
        .await
        .context("failed to append WebhookEndpointDisabled")?;
    tracing::warn!(endpoint.id = %endpoint_id, reason, "webhook endpoint disabled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn delivery(pool: &PgPool, status: &str) -> (Uuid, Uuid, Uuid) {
        let (id, endpoint, tenant) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        sqlx::query(
            "insert into webhook_deliveries
                 (id, tenant_id, endpoint_id, event_id, event_position, event_type, payload,
                  status, next_attempt_at)
             values ($1, $2, $3, $4, 1, 'lead.created', '{}', $5, now())",
        )
        .bind(id)
        .bind(tenant)
        .bind(endpoint)
        .bind(Uuid::now_v7())
        .bind(status)
        .execute(pool)
        .await
        .expect("a delivery");
        (id, endpoint, tenant)
    }

    fn failed_record((id, endpoint, tenant): (Uuid, Uuid, Uuid), next: DateTime<Utc>) -> Record {
        Record {
            delivery_id: id,
            endpoint_id: endpoint,
            tenant_id: tenant,
            at: Utc::now(),
            outcome: AttemptOutcome::failed(
                "connect",
                "connection refused".into(),
                Duration::from_millis(3),
            ),
            status: "pending",
            next: Some(next),
        }
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn every_attempt_is_logged_but_only_a_pending_delivery_moves(pool: PgPool) {
        let pending = delivery(&pool, "pending").await;
        let cancelled = delivery(&pool, "cancelled").await;
        let next = Utc::now() + chrono::Duration::minutes(5);
        record(
            &pool,
            &[failed_record(pending, next), failed_record(cancelled, next)],
        )
        .await
        .expect("recorded");

        let state = |id: Uuid| {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, i32, DateTime<Utc>)>(
                    "select status, attempts, next_attempt_at from webhook_deliveries where id = $1",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("the delivery")
            }
        };
        let (status, attempts, at) = state(pending.0).await;
        assert_eq!((status.as_str(), attempts), ("pending", 1));
        assert!((at - next).num_milliseconds().abs() < 1, "{at} ≠ {next}");
        let (status, attempts, _) = state(cancelled.0).await;
        assert_eq!((status.as_str(), attempts), ("cancelled", 0));
        let logged: Vec<(Uuid, Option<String>, Option<String>, i32)> = sqlx::query_as(
            "select delivery_id, error_class, response_excerpt, latency_ms
               from webhook_attempts order by delivery_id",
        )
        .fetch_all(&pool)
        .await
        .expect("the attempts");
        let mut expected = [pending.0, cancelled.0];
        expected.sort();
        assert_eq!(
            logged.iter().map(|a| a.0).collect::<Vec<_>>(),
            expected.to_vec()
        );
        assert!(logged.iter().all(|a| a.1.as_deref() == Some("connect")
            && a.2.as_deref() == Some("connection refused")
            && a.3 == 3));
    }
}
