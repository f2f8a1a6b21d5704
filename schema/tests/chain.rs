//! The hash chain written by `jeanus_append` (migration 0010) against its
//! definition: the canonical bytes are the jsonb text of the event object,
//! as PostgreSQL prints it, and as `schema::chain` writes it; each hash
//! links to the same tenant's previous one.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schema::chain::{self, CanonicalEvent, Hash, GENESIS};
use schema::envelope::{Metadata, NewEvent};
use schema::store::{append_in, EventStore, ExpectedVersion, StreamRef};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct Row {
    position: i64,
    id: Uuid,
    tenant_id: Uuid,
    event_type: String,
    schema_version: i32,
    stream_type: String,
    stream_id: Uuid,
    stream_version: i64,
    occurred_at: DateTime<Utc>,
    metadata: String,
    data: String,
    hash: Vec<u8>,
    by_function: Vec<u8>,
    by_jsonb: String,
}

async fn rows(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "select position, id, tenant_id, event_type, schema_version, stream_type, stream_id,
                stream_version, occurred_at, metadata::text as metadata, data::text as data, hash,
                jeanus_event_canonical(position, id, event_type, schema_version, stream_type,
                                       stream_id, stream_version, occurred_at, metadata, data)
                    as by_function,
                jsonb_build_object(
                    'id', id, 'data', data, 'type', event_type, 'metadata', metadata,
                    'position', position, 'stream_id', stream_id,
                    'occurred_at', to_char(occurred_at at time zone 'UTC',
                                           'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    'stream_type', stream_type, 'schema_version', schema_version,
                    'stream_version', stream_version)::text as by_jsonb
           from events order by position",
    )
    .fetch_all(pool)
    .await
    .expect("the events")
}

fn event(event_type: &'static str, data: serde_json::Value, at: &str) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type,
        schema_version: 1,
        occurred_at: DateTime::parse_from_rfc3339(at)
            .expect("a time")
            .with_timezone(&Utc),
        metadata: Metadata {
            request_id: Some("req \"1\"\n".into()),
            key_id: Some(Uuid::now_v7()),
        },
        data,
    }
}

fn stream(tenant_id: Uuid) -> StreamRef {
    StreamRef {
        tenant_id,
        stream_type: "lead",
        stream_id: Uuid::now_v7(),
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn appends_chain_each_tenant_with_the_documented_encoding(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let awkward = json!({
        "zz": 1.50, "a": [1, 2.0, {"y": null, "x": true}], "bb": "quote \" back \\ tab \t bell \u{7} é 漢 \u{2028}",
        "big": 12345678901234567890u64, "neg": -0.000001, "exp": 1e20, "": "empty key",
        "ab": {}, "ba": []
    });
    // Interleaved tenants, several events per append, appends batched together.
    let appends = [
        (
            a,
            vec![event(
                "LeadCreated",
                awkward.clone(),
                "2026-01-01T00:00:00Z",
            )],
        ),
        (
            b,
            vec![event(
                "Lead\"Odd\ntype",
                json!({"k": "v"}),
                "2026-01-01T00:00:00.123456Z",
            )],
        ),
        (
            a,
            vec![
                event(
                    "LeadUpdated",
                    json!({"n": 1}),
                    "1999-12-31T23:59:59.999999+02:00",
                ),
                event("LeadUpdated", json!({"n": 2}), "2026-06-30T12:00:00.5Z"),
            ],
        ),
    ];
    let pending: Vec<_> = appends
        .into_iter()
        .map(|(tenant, events)| store.append(stream(tenant), ExpectedVersion::NoStream, events))
        .collect();
    for appended in futures::future::join_all(pending).await {
        appended.expect("appended");
    }
    // And one in a caller's transaction.
    let mut tx = pool.begin().await.expect("a transaction");
    append_in(
        &mut *tx,
        stream(b),
        ExpectedVersion::NoStream,
        vec![event(
            "LeadCreated",
            json!({"in": "tx"}),
            "2026-01-02T00:00:00Z",
        )],
    )
    .await
    .expect("appended in a transaction");
    tx.commit().await.expect("committed");

    let rows = rows(&pool).await;
    assert_eq!(rows.len(), 5);
    let mut prev: HashMap<Uuid, Hash> = HashMap::new();
    for row in &rows {
        let ours = chain::canonical(&CanonicalEvent {
            position: row.position,
            id: row.id,
            event_type: &row.event_type,
            schema_version: row.schema_version,
            stream_type: &row.stream_type,
            stream_id: row.stream_id,
            stream_version: row.stream_version,
            occurred_at: row.occurred_at,
            metadata: &row.metadata,
            data: &row.data,
        });
        assert_eq!(
            String::from_utf8_lossy(&ours),
            row.by_jsonb,
            "position {}",
            row.position
        );
        assert_eq!(ours, row.by_function, "position {}", row.position);
        let before = prev.get(&row.tenant_id).copied().unwrap_or(GENESIS);
        let expected = chain::next_hash(&before, &ours);
        assert_eq!(row.hash, expected.to_vec(), "position {}", row.position);
        prev.insert(row.tenant_id, expected);
    }
    // Two chains, two tenants: b's first event starts from the genesis.
    assert_eq!(prev.len(), 2);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_migration_backfills_the_chain_of_stored_events(pool: PgPool) {
    // A log written before 0010, rebuilt here: drop the hashes, run the
    // migration's backfill statement again, and compare.
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7(), Uuid::now_v7()];
    for i in 0..6 {
        store
            .append(
                stream(tenants[i % 2]),
                ExpectedVersion::NoStream,
                vec![event(
                    "LeadCreated",
                    json!({ "i": i }),
                    "2026-01-01T00:00:00Z",
                )],
            )
            .await
            .expect("appended");
    }
    let written: Vec<Vec<u8>> = sqlx::query_scalar("select hash from events order by position")
        .fetch_all(&pool)
        .await
        .expect("hashes");

    let migration = include_str!("../migrations/0010_hash_chain.sql");
    let backfill = migration
        .split("-- The chain of the events already stored.")
        .nth(1)
        .and_then(|rest| rest.split(";\n").next())
        .expect("the backfill statement");
    sqlx::query(
        "alter table events drop constraint events_hash_is_sha256, alter column hash drop not null",
    )
    .execute(&pool)
    .await
    .expect("relaxed");
    sqlx::query("update events set hash = null")
        .execute(&pool)
        .await
        .expect("cleared");
    sqlx::query(backfill)
        .execute(&pool)
        .await
        .expect("backfilled");
    let backfilled: Vec<Vec<u8>> = sqlx::query_scalar("select hash from events order by position")
        .fetch_all(&pool)
        .await
        .expect("hashes");
    assert_eq!(backfilled, written);
}
