//! The dispatcher's intake: follows the event log on JetStream and turns each
//! event a webhook carries into one pending delivery per matching endpoint,
//! together with its checkpoint in one PostgreSQL transaction.
//!
//! It follows the projector's consumer (see `projector::consumer`): one
//! leader at a time, by the session advisory lock `jeanus.dispatcher`; an
//! ephemeral pull consumer without acks from `dispatcher_checkpoint` + 1
//! (stream sequence = position); batches of whatever has arrived; a gap or
//! any error restarts from the checkpoint after a backoff. The checkpoint row
//! is locked `for update` in each transaction, which fences a former leader.
//!
//! **Subscriptions are read after the projector.** Before matching a batch,
//! the intake waits until `jeanus_projected_position()` has reached the
//! batch's last event, so an endpoint created (or disabled, or deleted)
//! before an event is seen as such when that event is matched. Deliveries
//! are inserted `on conflict do nothing` (unique endpoint and event), so a
//! batch applied twice creates nothing twice. At commit the intake notifies
//! [`DELIVERIES_CHANNEL`] so that every dispatcher's workers wake up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use backoff::{backoff::Backoff, ExponentialBackoff};
use futures::{FutureExt as _, StreamExt as _};
use schema::envelope::RecordedEvent;
use schema::nats::Names;
use schema::webhooks::{self, TEST_EVENT_TYPE};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The PostgreSQL channel notified when new deliveries are committed.
pub const DELIVERIES_CHANNEL: &str = "jeanus_webhook_deliveries";
/// The intake's row in `dispatcher_checkpoint`.
const CHECKPOINT: &str = "intake";
/// Most events taken in one transaction.
const MAX_BATCH: usize = 500;
const LEADER_LOCK: &str = "jeanus.dispatcher";
const LEADER_POLL: Duration = Duration::from_millis(500);
const LEADER_CHECK: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// How often the wait for the projector re-reads its position when no
/// notification comes.
const PROJECTED_POLL: Duration = Duration::from_millis(100);

/// Turns events into deliveries until `shutdown`; every error is retried
/// from the checkpoint with backoff. `wake` is notified after each commit
/// that created deliveries.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    names: Names,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = ExponentialBackoff {
        initial_interval: Duration::from_millis(100),
        max_interval: MAX_RETRY_INTERVAL,
        max_elapsed_time: None,
        ..Default::default()
    };
    loop {
        match lead_and_take(&pool, &js, &names, &wake, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(error) => {
                let wait = backoff.next_backoff().unwrap_or(MAX_RETRY_INTERVAL);
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "dispatcher intake stopped; restarting from the checkpoint"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn lead_and_take(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    wake: &Notify,
    shutdown: &CancellationToken,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let Some(mut lock) = become_leader(pool, shutdown).await? else {
        return Ok(());
    };
    let result = take_as_leader(pool, js, names, wake, shutdown, &mut lock, backoff).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), lock.close()).await;
    result
}

async fn become_leader(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("failed to connect for the dispatcher's leader lock")?;
    let mut said_so = false;
    loop {
        let leader: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await
            .context("failed to try the dispatcher's leader lock")?;
        if leader {
            return Ok(Some(conn));
        }
        if !said_so {
            tracing::info!("another dispatcher runs the intake; standing by (delivering only)");
            said_so = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = conn.close().await;
                return Ok(None);
            }
            _ = tokio::time::sleep(LEADER_POLL) => {}
        }
    }
}

async fn take_as_leader(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    wake: &Notify,
    shutdown: &CancellationToken,
    lock: &mut PgConnection,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into dispatcher_checkpoint (name, position) values ($1, 0)
         on conflict (name) do nothing",
    )
    .bind(CHECKPOINT)
    .execute(pool)
    .await
    .context("failed to register the dispatcher's checkpoint")?;
    let Some(stream) = wait_for_stream(js, names, shutdown).await? else {
        return Ok(());
    };
    let from: i64 =
        sqlx::query_scalar("select position from dispatcher_checkpoint where name = $1")
            .bind(CHECKPOINT)
            .fetch_one(pool)
            .await
            .context("failed to read the dispatcher's checkpoint")?;
    let consumer = stream
        .create_consumer(pull::Config {
            description: Some("jeanus dispatcher".to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from as u64 + 1,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .context("failed to create the dispatcher's JetStream consumer")?;
    let consumer_name = consumer.cached_info().name.clone();
    tracing::info!(from_position = from + 1, "dispatcher intake is the leader");

    let mut projected = PgListener::connect_with(pool)
        .await
        .context("failed to listen for the projector's progress")?;
    projected
        .listen(schema::store::PROJECTED_CHANNEL)
        .await
        .context("failed to listen for the projector's progress")?;

    let result = consume(
        pool,
        &consumer,
        wake,
        shutdown,
        lock,
        &mut projected,
        backoff,
    )
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        js.delete_consumer_from_stream(&consumer_name, names.stream_name()),
    )
    .await;
    result
}

async fn consume(
    pool: &PgPool,
    consumer: &jetstream::consumer::PullConsumer,
    wake: &Notify,
    shutdown: &CancellationToken,
    lock: &mut PgConnection,
    projected: &mut PgListener,
    backoff: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(MAX_BATCH)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .context("failed to start pulling events from JetStream")?;
    let mut leader_check = tokio::time::interval(LEADER_CHECK);
    leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The projector's position as last seen: it only grows, so a batch at
    // or below it needs no query.
    let mut projected_at = 0;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = leader_check.tick() => {
                tokio::time::timeout(LEADER_CHECK, lock.ping())
                    .await
                    .map_err(|_| anyhow!("the leader lock's connection did not answer"))?
                    .context("lost the connection holding the dispatcher's leader lock")?;
                continue;
            }
            message = messages.next() => message,
        };
        let mut batch = vec![receive(first)?];
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(message) => batch.push(receive(message)?),
                None => break,
            }
        }
        let last = batch.last().map_or(0, |e| e.position);
        if !wait_for_projector(pool, projected, &mut projected_at, last, shutdown).await? {
            return Ok(());
        }
        let created = take_batch(pool, &batch).await?;
        backoff.reset();
        if created > 0 {
            wake.notify_waiters();
            wake.notify_one();
        }
    }
}

fn receive(
    message: Option<Result<jetstream::Message, pull::MessagesError>>,
) -> anyhow::Result<RecordedEvent> {
    let message = message
        .ok_or_else(|| anyhow!("the JetStream pull subscription ended"))?
        .context("failed to receive events from JetStream")?;
    let info = message
        .info()
        .map_err(|e| anyhow!("a JetStream message came without its delivery info: {e}"))?;
    let sequence = info.stream_sequence as i64;
    let event: RecordedEvent = serde_json::from_slice(&message.payload)
        .with_context(|| format!("the message at sequence {sequence} is not an event"))?;
    anyhow::ensure!(
        event.position == sequence,
        "the event at position {} came at sequence {sequence}",
        event.position
    );
    Ok(event)
}

/// Wait until every read model (the webhook endpoints among them) is up to
/// date through `position`; `known` is the position last seen, raised as
/// the wait learns more. `false` on shutdown.
async fn wait_for_projector(
    pool: &PgPool,
    projected: &mut PgListener,
    known: &mut i64,
    position: i64,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    // Notifications that came meanwhile, without waiting.
    while let Ok(Some(n)) = projected.try_recv().now_or_never().transpose() {
        if let Some(n) = n {
            *known = (*known).max(n.payload().trim().parse().unwrap_or(0));
        }
    }
    loop {
        if *known >= position {
            return Ok(true);
        }
        let at: i64 = sqlx::query_scalar("select jeanus_projected_position()")
            .fetch_one(pool)
            .await
            .context("failed to read the projector's position")?;
        *known = (*known).max(at);
        if *known >= position {
            return Ok(true);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            n = projected.recv() => {
                let n = n.context("lost the projector's notifications")?;
                *known = (*known).max(n.payload().trim().parse().unwrap_or(0));
            }
            _ = tokio::time::sleep(PROJECTED_POLL) => {}
        }
    }
}

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
/// written), inserts the deliveries of the events past the checkpoint and
/// raises the checkpoint. Four round trips at most, whatever the batch holds.
async fn take_batch(pool: &PgPool, batch: &[RecordedEvent]) -> anyhow::Result<u64> {
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
                                  $9::text[], $10::jsonb[])
                 as d(id, tenant_id, endpoint_id, event_id, event_position, event_type, payload)
         ), ins as (
             insert into webhook_deliveries
                 (id, tenant_id, endpoint_id, event_id, event_position, event_type, payload,
                  status, attempts, next_attempt_at)
             select d.id, d.tenant_id, d.endpoint_id, d.event_id, d.event_position,
                    d.event_type, d.payload, 'pending', 0, now()
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
    .bind(&rows.payload)
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

/// The deliveries `public` events owe: one row per matching endpoint, with
/// the event's body.
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
            Ok(body) => body,
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
            rows.payload.push(body.clone());
        }
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
    payload: Vec<serde_json::Value>,
}

async fn wait_for_stream(
    js: &jetstream::Context,
    names: &Names,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<jetstream::stream::Stream>> {
    let mut wait = Duration::from_millis(50);
    loop {
        if let Ok(stream) = js.get_stream(names.stream_name()).await {
            return Ok(Some(stream));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
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

    async fn deliveries(pool: &PgPool, endpoint: Uuid) -> Vec<(String, serde_json::Value)> {
        sqlx::query_as("select event_type, payload from webhook_deliveries where endpoint_id = $1")
            .bind(endpoint)
            .fetch_all(pool)
            .await
            .expect("deliveries")
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_batch_taken_twice_creates_each_delivery_once_for_matching_endpoints_only(
        pool: PgPool,
    ) {
        let store = EventStore::spawn(pool.clone());
        let (acme, other) = (Uuid::now_v7(), Uuid::now_v7());
        let subscribed = endpoint(&pool, acme, &["lead.created"], true).await;
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

        assert_eq!(take_batch(&pool, &batch).await.expect("taken"), 1);
        assert_eq!(take_batch(&pool, &batch).await.expect("taken again"), 0);

        let got = deliveries(&pool, subscribed).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "lead.created");
        assert_eq!(got[0].1["data"]["id"], serde_json::json!(lead));
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
