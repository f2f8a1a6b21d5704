//! The dispatcher's periodic jobs (`cron` crate): every hour, disable the
//! endpoints whose deliveries have all failed for five days, with a
//! `WebhookEndpointDisabled` event (re-enabling is a PATCH).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use cron::Schedule;
use schema::store::EventStore;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::delivery::disable_endpoint;

/// At minute 0 of every hour (sec min hour day-of-month month day-of-week).
pub const FAILING_ENDPOINTS_CRON: &str = "0 0 * * * *";
/// How long an endpoint may fail everything before it is disabled.
pub const FAILING_FOR_DAYS: i32 = 5;

/// The schedule of the failing-endpoints job.
pub fn failing_endpoints_schedule() -> anyhow::Result<Schedule> {
    Schedule::from_str(FAILING_ENDPOINTS_CRON).context("the failing-endpoints schedule is invalid")
}

/// When the job next runs after `now`.
pub fn next_run(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.after(&now).next()
}

/// Run the job on its schedule until `shutdown`.
pub async fn run(
    pool: PgPool,
    store: EventStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let schedule = failing_endpoints_schedule()?;
    loop {
        let now = Utc::now();
        let Some(next) = next_run(&schedule, now) else {
            return Ok(());
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        match disable_failing_endpoints(&pool, &store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                endpoints = n,
                "disabled endpoints failing for {FAILING_FOR_DAYS} days"
            ),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "the failing-endpoints job failed; it runs again next hour"
            ),
        }
    }
}

/// Disable every enabled endpoint that has attempts and no success in the
/// last five days, and whose first failure since its last success (or its
/// last change, so a re-enabled endpoint gets five fresh days) is at least
/// five days old. Returns how many were disabled.
pub async fn disable_failing_endpoints(pool: &PgPool, store: &EventStore) -> anyhow::Result<usize> {
    let failing: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "select e.id, e.tenant_id
           from webhook_endpoints e
          where e.enabled and e.deleted_at is null
            and not exists (
                select 1 from webhook_attempts a
                 where a.endpoint_id = e.id and a.error_class is null
                   and a.at > now() - make_interval(days => $1))
            and exists (
                select 1 from webhook_attempts a
                 where a.endpoint_id = e.id
                   and a.at <= now() - make_interval(days => $1)
                   and a.at > e.updated_at
                   and a.at > coalesce(
                       (select max(s.at) from webhook_attempts s
                         where s.endpoint_id = e.id and s.error_class is null),
                       '-infinity'))",
    )
    .bind(FAILING_FOR_DAYS)
    .fetch_all(pool)
    .await
    .context("failed to find failing endpoints")?;
    for (endpoint, tenant) in &failing {
        disable_endpoint(
            store,
            *tenant,
            *endpoint,
            &format!("every delivery failed for {FAILING_FOR_DAYS} days"),
        )
        .await?;
    }
    Ok(failing.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::PgPool;
    use uuid::Uuid;

    #[test]
    fn the_job_runs_at_the_top_of_every_hour() {
        let schedule = failing_endpoints_schedule().expect("valid");
        let now = DateTime::parse_from_rfc3339("2026-11-22T05:59:59Z")
            .expect("a time")
            .with_timezone(&Utc);
        let first = next_run(&schedule, now).expect("a next run");
        assert_eq!(first.to_rfc3339(), "2026-11-22T06:00:00+00:00");
        let second = next_run(&schedule, first).expect("a next run");
        assert_eq!(second - first, chrono::Duration::hours(1));
    }

    async fn endpoint(pool: &PgPool, updated_days_ago: i32) -> (Uuid, Uuid) {
        let (id, tenant) = (Uuid::now_v7(), Uuid::now_v7());
        sqlx::query(
            "insert into webhook_endpoints
                 (id, tenant_id, url, events, enabled, secrets, version, created_at, updated_at)
             values ($1, $2, 'https://example.com/hook', '{lead.created}', true, '[]', 1,
                     now() - make_interval(days => $3), now() - make_interval(days => $3))",
        )
        .bind(id)
        .bind(tenant)
        .bind(updated_days_ago)
        .execute(pool)
        .await
        .expect("an endpoint");
        (id, tenant)
    }

    async fn attempt(pool: &PgPool, endpoint: (Uuid, Uuid), days_ago: f64, ok: bool) {
        let delivery = Uuid::now_v7();
        sqlx::query(
            "insert into webhook_deliveries
                 (id, tenant_id, endpoint_id, event_id, event_position, event_type, payload,
                  next_attempt_at)
             values ($1, $2, $3, $4, 1, 'lead.created', '{}', now())",
        )
        .bind(delivery)
        .bind(endpoint.1)
        .bind(endpoint.0)
        .bind(Uuid::now_v7())
        .execute(pool)
        .await
        .expect("a delivery");
        sqlx::query(
            "insert into webhook_attempts
                 (id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms, error_class)
             values ($1, $2, $3, $4, now() - make_interval(secs => $5 * 86400), $6, 1, $7)",
        )
        .bind(Uuid::now_v7())
        .bind(delivery)
        .bind(endpoint.0)
        .bind(endpoint.1)
        .bind(days_ago)
        .bind(if ok { 200 } else { 500 })
        .bind(if ok { None } else { Some("http") })
        .execute(pool)
        .await
        .expect("an attempt");
    }

    async fn disabled_events(pool: &PgPool, endpoint: Uuid) -> i64 {
        sqlx::query_scalar(
            "select count(*) from events
              where stream_id = $1 and event_type = 'WebhookEndpointDisabled'",
        )
        .bind(endpoint)
        .fetch_one(pool)
        .await
        .expect("a count")
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn only_an_endpoint_failing_everything_for_five_days_is_disabled(pool: PgPool) {
        let store = EventStore::spawn(pool.clone());
        let failing = endpoint(&pool, 30).await;
        attempt(&pool, failing, 6.0, false).await;
        attempt(&pool, failing, 1.0, false).await;
        let recovered = endpoint(&pool, 30).await;
        attempt(&pool, recovered, 6.0, false).await;
        attempt(&pool, recovered, 2.0, true).await;
        let young = endpoint(&pool, 30).await;
        attempt(&pool, young, 3.0, false).await;
        let re_enabled = endpoint(&pool, 1).await;
        attempt(&pool, re_enabled, 6.0, false).await;
        attempt(&pool, re_enabled, 0.5, false).await;

        assert_eq!(
            disable_failing_endpoints(&pool, &store).await.expect("ran"),
            1
        );
        assert_eq!(disabled_events(&pool, failing.0).await, 1);
        for spared in [recovered, young, re_enabled] {
            assert_eq!(disabled_events(&pool, spared.0).await, 0);
        }
    }
}
