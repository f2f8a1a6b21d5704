//! One intake batch: the deliveries its events owe and each event's body
//! (once, however many endpoints it goes to), written with the checkpoint in
//! one statement.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use schema::envelope::RecordedEvent;
use schema::webhooks::{self, TEST_EVENT_TYPE};
use sqlx::PgPool;
use uuid::Uuid;

use super::{CHECKPOINT, DELIVERIES_CHANNEL};

/// An endpoint that an event goes to.
#[derive(sqlx::FromRow)]
struct Match {
    id: Uuid,
    tenant_id: Uuid,
    events: Vec<String>,
}

/// Create the batch's deliveries and advance the checkpoint, atomically.
/// Returns how many deliveries were created.
///
/// Reads first (the matching endpoints, then the streams of the matched
/// events, to build the bodies), then writes in one statement: it locks the
/// checkpoint row, refuses a gap (an event beyond checkpoint + 1: nothing is
/// written), inserts the bodies and the deliveries of the events past the
/// checkpoint and raises the checkpoint. Four round trips at most, whatever
/// the batch holds.
pub async fn take_batch(pool: &PgPool, batch: &[RecordedEvent]) -> anyhow::Result<u64> {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Ok(0);
    };
    let public: Vec<(&RecordedEvent, &'static str)> = batch
        .iter()
        .filter_map(|e| webhooks::public_type(&e.event_type).map(|t| (e, t)))
        .collect();
    let rows = if public.is_empty() {
        DeliveryRows::default()
    } else {
        delivery_rows(pool, &public).await?
    };
    let (checkpoint, created): (i64, i64) = sqlx::query_as(
        "with cp as (
             select position from dispatcher_checkpoint where name = $1 for update
         ), d as (
             select * from unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::uuid[], $8::bigint[],
                                  $9::text[])
                 as d(id, tenant_id, endpoint_id, event_id, event_position, event_type)
         ), bodies as (
             insert into webhook_bodies (event_id, body)
             select b.event_id, b.body
               from unnest($10::uuid[], $11::bigint[], $12::text[])
                        as b(event_id, event_position, body), cp
              where cp.position >= $2 - 1 and b.event_position > cp.position
             on conflict (event_id) do nothing
         ), ins as (
             insert into webhook_deliveries
                 (id, tenant_id, endpoint_id, event_id, event_position, event_type,
                  status, attempts, next_attempt_at)
             select d.id, d.tenant_id, d.endpoint_id, d.event_id, d.event_position,
                    d.event_type, 'pending', 0, now()
               from d, cp
              where cp.position >= $2 - 1 and d.event_position > cp.position
             on conflict (endpoint_id, event_id) do nothing
             returning 1
         ), up as (
             update dispatcher_checkpoint c set position = $3
               from cp
              where c.name = $1 and cp.position >= $2 - 1 and cp.position < $3
         )
         select cp.position, (select count(*) from ins) from cp",
    )
    .bind(CHECKPOINT)
    .bind(first.position)
    .bind(last.position)
    .bind(&rows.id)
    .bind(&rows.tenant)
    .bind(&rows.endpoint)
    .bind(&rows.event)
    .bind(&rows.position)
    .bind(&rows.event_type)
    .bind(&rows.body_event)
    .bind(&rows.body_position)
    .bind(&rows.body)
    .fetch_one(pool)
    .await
    .context("failed to write deliveries and the checkpoint")?;
    anyhow::ensure!(
        checkpoint >= first.position - 1,
        "gap: the event after the checkpoint {checkpoint} came as {}",
        first.position
    );
    let created = u64::try_from(created).unwrap_or(0);
    if created > 0 {
        sqlx::query("select pg_notify($1, $2)")
            .bind(DELIVERIES_CHANNEL)
            .bind(last.position.to_string())
            .execute(pool)
            .await
            .context("failed to notify the workers")?;
    }
    Ok(created)
}

/// The deliveries `public` events owe: one row per matching endpoint, and
/// one body per event that has any.
async fn delivery_rows(
    pool: &PgPool,
    public: &[(&RecordedEvent, &'static str)],
) -> anyhow::Result<DeliveryRows> {
    let mut rows = DeliveryRows::default();
    let tenants: Vec<Uuid> = public
        .iter()
        .map(|(e, _)| e.tenant_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let endpoints: Vec<Match> = sqlx::query_as(
        "select id, tenant_id, events from webhook_endpoints
          where tenant_id = any($1) and enabled and deleted_at is null",
    )
    .bind(&tenants)
    .fetch_all(pool)
    .await
    .context("failed to read the webhook endpoints")?;
    if endpoints.is_empty() {
        return Ok(rows);
    }

    // Which endpoints each event goes to.
    let mut targets: Vec<(&RecordedEvent, &'static str, Vec<Uuid>)> = Vec::new();
    for (event, public_type) in public {
        let ids: Vec<Uuid> = endpoints
            .iter()
            .filter(|ep| ep.tenant_id == event.tenant_id)
            .filter(|ep| {
                if *public_type == TEST_EVENT_TYPE {
                    ep.id == event.stream_id
                } else {
                    ep.events.iter().any(|t| t == public_type)
                }
            })
            .map(|ep| ep.id)
            .collect();
        if !ids.is_empty() {
            targets.push((event, public_type, ids));
        }
    }
    if targets.is_empty() {
        return Ok(rows);
    }

    // The bodies, from each stream as it was at its event.
    let stream_ids: Vec<Uuid> = targets
        .iter()
        .filter(|(_, t, _)| *t != TEST_EVENT_TYPE)
        .map(|(e, _, _)| e.stream_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut streams: HashMap<Uuid, Vec<RecordedEvent>> = HashMap::new();
    if !stream_ids.is_empty() {
        for e in schema::store::read_streams(pool, &stream_ids)
            .await
            .context("failed to read the events' streams")?
        {
            streams.entry(e.stream_id).or_default().push(e);
        }
    }

    for (event, public_type, ids) in targets {
        let stream = streams.get(&event.stream_id).map_or(&[][..], Vec::as_slice);
        let body = match webhooks::body(event, stream) {
            Ok(body) => body.to_string(),
            Err(e) => {
                // A bug or a corrupted log: say so once, and deliver the rest.
                tracing::error!(event.id = %event.id, event.position = event.position, error = %e, "cannot build a webhook body; the event is not delivered");
                continue;
            }
        };
        for endpoint in ids {
            rows.id.push(Uuid::now_v7());
            rows.tenant.push(event.tenant_id);
            rows.endpoint.push(endpoint);
            rows.event.push(event.id);
            rows.position.push(event.position);
            rows.event_type.push(public_type.to_owned());
        }
        rows.body_event.push(event.id);
        rows.body_position.push(event.position);
        rows.body.push(body);
    }
    Ok(rows)
}

#[derive(Default)]
struct DeliveryRows {
    id: Vec<Uuid>,
    tenant: Vec<Uuid>,
    endpoint: Vec<Uuid>,
    event: Vec<Uuid>,
    position: Vec<i64>,
    event_type: Vec<String>,
    /// One body per event: its id, position and the exact text sent.
    body_event: Vec<Uuid>,
    body_position: Vec<i64>,
    body: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::envelope::{Metadata, NewEvent};
    use schema::events::{stream_types, EventPayload, LeadCreated, LeadStage};
    use schema::store::{EventStore, ExpectedVersion, StreamRef};

    async fn lead_created(store: &EventStore, tenant: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        let payload = EventPayload::from(LeadCreated {
            name: "Sarah".into(),
            company: None,
            email: None,
            phone: None,
            stage: LeadStage::New,
            estimated_value: None,
            probability: None,
            source: "api".into(),
            notes: None,
        });
        store
            .append(
                StreamRef {
                    tenant_id: tenant,
                    stream_type: stream_types::LEAD,
                    stream_id: id,
                },
                ExpectedVersion::NoStream,
                vec![NewEvent::new(&payload, Metadata::default())],
            )
            .await
            .expect("appended");
        id
    }

    async fn endpoint(pool: &PgPool, tenant: Uuid, events: &[&str], enabled: bool) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into webhook_endpoints
                 (id, tenant_id, url, events, enabled, secrets, version, created_at, updated_at)
             values ($1, $2, 'https://example.com/hook', $3, $4, '[]', 1, now(), now())",
        )
        .bind(id)
        .bind(tenant)
        .bind(events.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .bind(enabled)
        .execute(pool)
        .await
        .expect("an endpoint");
        id
    }

    /// Each delivery's type and body (and whether it carries a copy of its own).
    async fn deliveries(pool: &PgPool, endpoint: Uuid) -> Vec<(String, serde_json::Value, bool)> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "select d.event_type, b.body, d.payload is not null
               from webhook_deliveries d join webhook_bodies b using (event_id)
              where d.endpoint_id = $1",
        )
        .bind(endpoint)
        .fetch_all(pool)
        .await
        .expect("deliveries");
        rows.into_iter()
            .map(|(t, body, copy)| (t, serde_json::from_str(&body).expect("JSON"), copy))
            .collect()
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_batch_taken_twice_creates_each_delivery_once_for_matching_endpoints_only(
        pool: PgPool,
    ) {
        let store = EventStore::spawn(pool.clone());
        let (acme, other) = (Uuid::now_v7(), Uuid::now_v7());
        let subscribed = endpoint(&pool, acme, &["lead.created"], true).await;
        let also = endpoint(&pool, acme, &["lead.created", "lead.updated"], true).await;
        let disabled = endpoint(&pool, acme, &["lead.created"], false).await;
        let elsewhere = endpoint(&pool, acme, &["order.created"], true).await;
        let other_tenant = endpoint(&pool, other, &["lead.created"], true).await;
        let deleted = endpoint(&pool, acme, &["lead.created"], true).await;
        sqlx::query("update webhook_endpoints set deleted_at = now() where id = $1")
            .bind(deleted)
            .execute(&pool)
            .await
            .expect("deleted");
        let lead = lead_created(&store, acme).await;
        sqlx::query("insert into dispatcher_checkpoint (name, position) values ($1, 0)")
            .bind(CHECKPOINT)
            .execute(&pool)
            .await
            .expect("checkpoint");
        let batch = schema::store::read_after(&pool, 0, 100)
            .await
            .expect("events");

        assert_eq!(take_batch(&pool, &batch).await.expect("taken"), 2);
        assert_eq!(take_batch(&pool, &batch).await.expect("taken again"), 0);

        let got = deliveries(&pool, subscribed).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "lead.created");
        assert_eq!(got[0].1["data"]["id"], serde_json::json!(lead));
        assert!(!got[0].2, "the body is not copied into the delivery");
        assert_eq!(deliveries(&pool, also).await, got, "the same body");
        let bodies: i64 = sqlx::query_scalar("select count(*) from webhook_bodies")
            .fetch_one(&pool)
            .await
            .expect("bodies");
        assert_eq!(bodies, 1, "one body for the event, whatever its endpoints");
        for nothing in [disabled, elsewhere, other_tenant, deleted] {
            assert!(deliveries(&pool, nothing).await.is_empty());
        }
        let checkpoint: i64 =
            sqlx::query_scalar("select position from dispatcher_checkpoint where name = $1")
                .bind(CHECKPOINT)
                .fetch_one(&pool)
                .await
                .expect("checkpoint");
        assert_eq!(checkpoint, batch.last().expect("an event").position);
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_gap_after_the_checkpoint_is_refused(pool: PgPool) {
        let store = EventStore::spawn(pool.clone());
        let tenant = Uuid::now_v7();
        lead_created(&store, tenant).await;
        lead_created(&store, tenant).await;
        sqlx::query("insert into dispatcher_checkpoint (name, position) values ($1, 0)")
            .bind(CHECKPOINT)
            .execute(&pool)
            .await
            .expect("checkpoint");
        let batch = schema::store::read_after(&pool, 1, 100)
            .await
            .expect("events");
        assert!(take_batch(&pool, &batch).await.is_err());
    }
}
