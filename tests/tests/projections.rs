//! The four resource projections against real PostgreSQL: random histories
//! appended through the event store, applied in batches of random sizes
//! (as the consumer would), give rows that equal `Fold::from_events` of
//! their streams; a batch applied twice, or an event that does not fit its
//! row, fails loudly and writes nothing; an event of an unknown type in a
//! stream (skipped by the consumer) is no error.

use jeanus_tests::histories::{self, Plan};
use jeanus_tests::read_models::assert_read_models_match_log;
use jeanus_tests::seed;
use projector::projections::Projection;
use rand::{Rng, SeedableRng};
use schema::envelope::{Decoded, Metadata, NewEvent, RecordedEvent};
use schema::events::{stream_types, EventPayload, LeadStage, LeadUpdated};
use schema::store::{self, EventStore, ExpectedVersion, StreamRef};
use sqlx::PgPool;
use uuid::Uuid;

const RESOURCES: [Projection; 4] = [
    Projection::Customers,
    Projection::Products,
    Projection::Leads,
    Projection::Orders,
];

/// The log's events of the types this build knows, as the consumer hands
/// them to the projections (it skips the others).
async fn log(pool: &PgPool) -> Vec<(RecordedEvent, EventPayload)> {
    let events = store::read_after(pool, 0, i64::MAX)
        .await
        .expect("read the log");
    events
        .into_iter()
        .filter_map(|e| match e.decode().expect("decodes") {
            Decoded::Known(payload) => Some((e, payload)),
            Decoded::Unknown => None,
        })
        .collect()
}

/// Applies `events` to the four resource projections in one transaction.
async fn apply(pool: &PgPool, events: &[(RecordedEvent, EventPayload)]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for projection in RESOURCES {
        projection.apply(&mut tx, events).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_row_equals_the_fold_of_its_stream_for_random_histories(pool: PgPool) {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7(), Uuid::now_v7()];
    let appended = histories::append_random(
        &store,
        &tenants,
        Plan {
            streams_per_writer: 60,
            appends_per_writer: 400,
            writers: 6,
            seed,
        },
    )
    .await;
    let events = log(&pool).await;
    assert_eq!(events.len(), appended);

    // Batches of 1 to 700 events, as the consumer cuts them.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rest = &events[..];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=700).min(rest.len());
        let (batch, after) = rest.split_at(n);
        apply(&pool, batch).await.expect("a batch applies");
        rest = after;
    }

    let rows = assert_read_models_match_log(&pool).await;
    assert!(
        rows.iter().all(|&n| n > 0),
        "every table got rows: {rows:?}"
    );
    let deleted: i64 = sqlx::query_scalar(
        "select (select count(*) from customers where deleted_at is not null)
              + (select count(*) from products where deleted_at is not null)
              + (select count(*) from leads where deleted_at is not null)
              + (select count(*) from orders where deleted_at is not null)",
    )
    .fetch_one(&pool)
    .await
    .expect("count deleted");
    assert!(deleted > 0, "the histories delete some rows");
}

fn lead_stream(tenant_id: Uuid, id: Uuid) -> StreamRef {
    StreamRef {
        tenant_id,
        stream_type: stream_types::LEAD,
        stream_id: id,
    }
}

fn rename(name: &str) -> EventPayload {
    let patch = serde_json::json!({ "name": name });
    LeadUpdated {
        patch: patch.as_object().expect("an object").clone(),
    }
    .into()
}

async fn append(store: &EventStore, stream: StreamRef, version: i64, payload: EventPayload) {
    store
        .append(
            stream,
            ExpectedVersion::Exact(version),
            vec![NewEvent::new(&payload, Metadata::default())],
        )
        .await
        .expect("append");
}

async fn lead_name(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("select name from leads where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("the lead's row")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_batch_applied_twice_fails_and_writes_nothing(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let (tenant, id) = (Uuid::now_v7(), Uuid::now_v7());
    append(
        &store,
        lead_stream(tenant, id),
        0,
        seed::lead("Sarah", None, LeadStage::New),
    )
    .await;
    append(&store, lead_stream(tenant, id), 1, rename("Sarah Patel")).await;
    let events = log(&pool).await;
    apply(&pool, &events).await.expect("first application");
    assert_eq!(lead_name(&pool, id).await, "Sarah Patel");

    // The update alone again: its version does not follow the row's.
    let err = apply(&pool, &events[1..]).await.expect_err("applied twice");
    assert!(format!("{err:#}").contains("applied twice"), "{err:#}");
    // The create again: a second create does not fold.
    let err = apply(&pool, &events[..1]).await.expect_err("created twice");
    assert!(format!("{err:#}").contains("version"), "{err:#}");
    assert_eq!(lead_name(&pool, id).await, "Sarah Patel");
    assert_eq!(count(&pool, "leads").await, 1);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_update_without_its_create_or_of_another_tenant_fails(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let (tenant, id) = (Uuid::now_v7(), Uuid::now_v7());
    append(
        &store,
        lead_stream(tenant, id),
        0,
        seed::lead("Sarah", None, LeadStage::New),
    )
    .await;
    append(&store, lead_stream(tenant, id), 1, rename("Sarah Patel")).await;
    let events = log(&pool).await;

    // The create never applied: the update has nothing to fold onto.
    let err = apply(&pool, &events[1..]).await.expect_err("no create");
    assert!(format!("{err:#}").contains("does not apply"), "{err:#}");
    assert_eq!(count(&pool, "leads").await, 0);

    // The same stream's update, claimed by another tenant.
    apply(&pool, &events[..1]).await.expect("the create");
    let mut stolen = events[1].clone();
    stolen.0.tenant_id = Uuid::now_v7();
    let err = apply(&pool, &[stolen]).await.expect_err("another tenant");
    assert!(format!("{err:#}").contains("belongs to tenant"), "{err:#}");
    assert_eq!(lead_name(&pool, id).await, "Sarah");
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn events_of_other_streams_leave_the_resource_tables_alone(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let tenant = Uuid::now_v7();
    let payload = EventPayload::from(schema::events::TenantCreated {
        name: "Acme".into(),
    });
    store
        .append(
            StreamRef {
                tenant_id: tenant,
                stream_type: stream_types::TENANT,
                stream_id: tenant,
            },
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&payload, Metadata::default())],
        )
        .await
        .expect("append");
    apply(&pool, &log(&pool).await).await.expect("a no-op");
    for table in ["customers", "products", "leads", "orders"] {
        assert_eq!(count(&pool, table).await, 0, "{table}");
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_unknown_event_type_in_a_stream_leaves_a_version_hole_that_is_no_error(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let (tenant, id) = (Uuid::now_v7(), Uuid::now_v7());
    append(
        &store,
        lead_stream(tenant, id),
        0,
        seed::lead("Sarah", None, LeadStage::New),
    )
    .await;
    // Written by a newer build: this one skips it.
    let future = NewEvent {
        id: Uuid::now_v7(),
        event_type: "LeadArchived",
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: Metadata::default(),
        data: serde_json::json!({"reason": "stale"}),
    };
    store::append_in(
        &pool,
        lead_stream(tenant, id),
        ExpectedVersion::Exact(1),
        vec![future],
    )
    .await
    .expect("append an unknown type");
    append(&store, lead_stream(tenant, id), 2, rename("Sarah Patel")).await;

    let events = log(&pool).await;
    assert_eq!(events.len(), 2, "the unknown event is skipped");
    apply(&pool, &events[..1]).await.expect("the create");
    apply(&pool, &events[1..])
        .await
        .expect("the update, at version 3");
    assert_eq!(lead_name(&pool, id).await, "Sarah Patel");
    let version: i64 = sqlx::query_scalar("select version from leads where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("the version");
    assert_eq!(version, 3, "the stream's version, hole included");
}
