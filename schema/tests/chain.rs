//! The hash chain written by `jeanus_append` (migrations 0010, 0016 to 0018)
//! against its definition: the canonical bytes are the jsonb text of the
//! event object, as PostgreSQL prints it, and as `schema::chain` writes it;
//! each hash links to the same tenant's previous one, whether the event
//! store's writer computed it or the database did.

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

/// Checks every stored event against the chain's definition: its canonical
/// bytes as `schema::chain` writes them equal PostgreSQL's jsonb text and
/// `jeanus_event_canonical`, and its hash links to its tenant's previous
/// one. `events` is how many there must be; returns how many chains.
async fn assert_chained(pool: &PgPool, events: usize) -> usize {
    let rows = rows(pool).await;
    assert_eq!(rows.len(), events);
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
    prev.len()
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

    let chains = assert_chained(&pool, 5).await;
    // Two chains, two tenants: b's first event starts from the genesis.
    assert_eq!(chains, 2);
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

/// The writer prints payloads as PostgreSQL prints them once stored as
/// `jsonb`, or declines: what it prints goes into the hashes it computes.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_writer_prints_jsonb_as_postgresql_does_or_declines(pool: PgPool) {
    let printed = |value: serde_json::Value| {
        let pool = pool.clone();
        async move {
            let text: String = sqlx::query_scalar("select $1::jsonb::text")
                .bind(sqlx::types::Json(value))
                .fetch_one(&pool)
                .await
                .expect("printed by PostgreSQL");
            text
        }
    };
    let metadata = Metadata {
        request_id: Some("req_1".into()),
        key_id: Some(Uuid::now_v7()),
    };
    let predictable = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-17),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(2.0),
        json!(0.1),
        json!(-0.00125),
        json!(123456.789),
        json!("quote \" back \\ slash / tab \t nl \n cr \r ff \u{c} bs \u{8} bell \u{7} del \u{7f} é 漢 😀 \u{2028}"),
        json!([]),
        json!({}),
        json!([1, [2, [3, {}]], "x"]),
        json!({"b": 1, "a": 2, "aa": 3, "é": 4, "z": 5, "": 6, "ab": {"y": [null], "x": {}}, "ba": "é"}),
        serde_json::to_value(&metadata).expect("metadata"),
    ];
    for value in predictable {
        let mut ours = Vec::new();
        assert!(chain::write_jsonb_text(&value, &mut ours), "{value}");
        assert_eq!(
            String::from_utf8(ours).expect("utf-8"),
            printed(value.clone()).await,
            "{value}"
        );
    }
    // Numbers PostgreSQL rewrites (as `numeric`): the writer declines, and
    // rightly, for serde's text is not PostgreSQL's.
    for value in [
        json!(1e21),
        json!(1.5e-7),
        json!(-0.0),
        json!({"a": [1e300]}),
    ] {
        let mut ours = Vec::new();
        assert!(!chain::write_jsonb_text(&value, &mut ours), "{value}");
        assert_ne!(value.to_string(), printed(value.clone()).await, "{value}");
    }
}

/// One writer alone chains its own batches once it knows the log's end; a
/// second writer's append makes it hand the next batch to the database;
/// either way every hash is the chain's.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_writer_chains_its_batches_as_the_database_would(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let other = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7(), Uuid::now_v7()];
    let lead = |i: usize| {
        event(
            "LeadCreated",
            json!({ "i": i, "name": "Zoë \"Q\"", "value": 12.5, "tags": ["a", {}] }),
            "2026-01-01T00:00:00.123456Z",
        )
    };
    let mut written = 0;
    for i in 0..6 {
        store
            .append(
                stream(tenants[i % 2]),
                ExpectedVersion::NoStream,
                vec![lead(i), lead(i + 100)],
            )
            .await
            .expect("appended");
        written += 2;
    }
    // The first batch of each tenant taught the writer where it stands.
    let alone = store.batches_chained_by_writer();
    assert_eq!(alone, 4);

    // Another writer (another api instance) appends meanwhile: this
    // writer's knowledge is stale, and the database must not take its
    // hashes.
    other
        .append(stream(tenants[0]), ExpectedVersion::NoStream, vec![lead(7)])
        .await
        .expect("appended by the other writer");
    store
        .append(stream(tenants[0]), ExpectedVersion::NoStream, vec![lead(8)])
        .await
        .expect("appended");
    written += 2;
    assert_eq!(store.batches_chained_by_writer(), alone);
    store
        .append(stream(tenants[1]), ExpectedVersion::NoStream, vec![lead(9)])
        .await
        .expect("appended");
    written += 1;
    assert_eq!(
        store.batches_chained_by_writer(),
        alone,
        "tenant 1's tip was forgotten with the rest when the head moved"
    );
    store
        .append(
            stream(tenants[0]),
            ExpectedVersion::NoStream,
            vec![lead(10)],
        )
        .await
        .expect("appended");
    written += 1;
    assert_eq!(store.batches_chained_by_writer(), alone + 1);

    // A payload whose jsonb text the writer cannot be sure of, an append
    // whose stream version it cannot know, and a conflict: the database
    // chains (or writes nothing), and the writer carries on after them.
    store
        .append(
            stream(tenants[0]),
            ExpectedVersion::NoStream,
            vec![event(
                "LeadCreated",
                json!({ "x": 1e21 }),
                "2026-01-01T00:00:00Z",
            )],
        )
        .await
        .expect("appended");
    store
        .append(stream(tenants[0]), ExpectedVersion::Any, vec![lead(11)])
        .await
        .expect("appended");
    written += 2;
    let conflict = store
        .append(
            stream(tenants[0]),
            ExpectedVersion::Exact(3),
            vec![lead(12)],
        )
        .await;
    assert!(conflict.is_err(), "{conflict:?}");
    assert_eq!(store.batches_chained_by_writer(), alone + 1);
    store
        .append(
            stream(tenants[1]),
            ExpectedVersion::NoStream,
            vec![lead(13)],
        )
        .await
        .expect("appended");
    written += 1;
    assert_eq!(store.batches_chained_by_writer(), alone + 2);

    assert_eq!(assert_chained(&pool, written).await, 2);
}

/// `jeanus_append` stores the hashes it is sent for an append only when the
/// prediction they were computed from holds for it; otherwise it chains the
/// append itself.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_database_chains_a_batch_the_writer_mispredicted(pool: PgPool) {
    let tenant = Uuid::now_v7();
    let bogus = vec![0xab_u8; 32];
    let append = |expected: i64, extra_conflict: bool| {
        let one = |expected: i64| {
            json!({
                "tenant_id": tenant, "stream_type": "lead", "stream_id": Uuid::now_v7(),
                "expected": expected,
                "events": [{
                    "id": Uuid::now_v7(), "event_type": "LeadCreated", "schema_version": 1,
                    "occurred_at": "2026-01-01T00:00:00Z", "metadata": {}, "data": {"n": 1}
                }]
            })
        };
        // A refused append moves every position after it (migration 0018).
        let mut batch = if extra_conflict { vec![one(5)] } else { vec![] };
        batch.push(one(expected));
        serde_json::Value::Array(batch)
    };
    // Each: (head, tenants, seeds, hashes) as sent; whether each append's
    // hashes are the writer's.
    let call = |batch: serde_json::Value,
                head: i64,
                tenants: Vec<Uuid>,
                seeds: Vec<Vec<u8>>,
                hashes: Vec<Vec<u8>>| {
        let pool = pool.clone();
        async move {
            append_directly(&pool, batch, head, tenants, seeds, hashes)
                .await
                .iter()
                .map(|a| a.writer_chained)
                .collect::<Vec<_>>()
        }
    };

    // Each case bends the right prediction one way, on a log that grows by
    // one event a case (so that from the second case on the tenant's tip is
    // not the genesis): (why, head off by, tip sent, hashes sent, a
    // conflicting append in the batch too).
    enum Tip {
        Right,
        None,
    }
    let cases = [
        ("another writer appended since", 1, Tip::Right, 1, false),
        (
            "a tenant of the batch without a tip",
            0,
            Tip::None,
            1,
            false,
        ),
        ("no hash for the event", 0, Tip::Right, 0, false),
        ("an append refused: positions moved", 0, Tip::Right, 2, true),
    ];
    for (why, off, sent, hashes, conflict) in cases {
        let (head, seed) = head_and_tip(&pool, tenant).await;
        let (tenants, seeds) = match sent {
            Tip::Right => (vec![tenant], vec![seed.to_vec()]),
            Tip::None => (vec![], vec![]),
        };
        let answer = call(
            append(0, conflict),
            head + off,
            tenants,
            seeds,
            vec![bogus.clone(); hashes],
        )
        .await;
        assert_eq!(answer.last(), Some(&Some(false)), "{why}");
    }
    assert_eq!(assert_chained(&pool, 4).await, 1);

    // The prediction holds: the writer's hash is stored as sent. The
    // database trusts its one caller here; `verify` is what checks them.
    let (head, seed) = head_and_tip(&pool, tenant).await;
    let answer = call(
        append(0, false),
        head,
        vec![tenant],
        vec![seed.to_vec()],
        vec![bogus.clone()],
    )
    .await;
    assert_eq!(answer, [Some(true)]);
    let stored: Vec<u8> = sqlx::query_scalar("select hash from events where position = $1")
        .bind(head + 1)
        .fetch_one(&pool)
        .await
        .expect("the hash");
    assert_eq!(stored, bogus);

    // So is a tip sent with the right head (migration 0017): the head
    // vouches for it, since a writer learns tips only from an unbroken run
    // of its own batches. A wrong one is that writer's bug, stored as sent
    // like a wrong hash, and `verify` names it.
    let (head, _) = head_and_tip(&pool, tenant).await;
    let answer = call(
        append(0, false),
        head,
        vec![tenant],
        vec![GENESIS.to_vec()],
        vec![bogus.clone()],
    )
    .await;
    assert_eq!(answer, [Some(true)]);
}

/// One append's answer from `jeanus_append`.
#[derive(sqlx::FromRow)]
struct Answer {
    writer_chained: Option<bool>,
    last_position: Option<i64>,
    last_hash: Option<Vec<u8>>,
}

/// `jeanus_append` called as a writer would, with `batch` and the
/// prediction sent with it (the head expected, each tenant chained with the
/// tip it was chained from, one hash per event): each append's answer, in
/// batch order.
async fn append_directly(
    pool: &PgPool,
    batch: serde_json::Value,
    head: i64,
    tenants: Vec<Uuid>,
    seeds: Vec<Vec<u8>>,
    hashes: Vec<Vec<u8>>,
) -> Vec<Answer> {
    sqlx::query_as(
        "select writer_chained, last_position, last_hash
           from jeanus_append($1, $2, $3, $4, $5) order by idx",
    )
    .bind(sqlx::types::Json(batch))
    .bind(head)
    .bind(tenants)
    .bind(seeds)
    .bind(hashes)
    .fetch_all(pool)
    .await
    .expect("appended")
}

/// The log's head, and the hash `tenant`'s next event chains from.
async fn head_and_tip(pool: &PgPool, tenant: Uuid) -> (i64, Hash) {
    let head: i64 = sqlx::query_scalar("select position from event_log_head")
        .fetch_one(pool)
        .await
        .expect("the head");
    let tip: Option<Vec<u8>> = sqlx::query_scalar(
        "select hash from events where tenant_id = $1 order by position desc limit 1",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await
    .expect("the tenant's last hash");
    let tip = tip.map_or(GENESIS, |hash| {
        Hash::try_from(hash.as_slice()).expect("32 bytes")
    });
    (head, tip)
}

/// Migration 0018: in a batch the writer predicted only in part, the
/// appends before the first mispredicted one keep the writer's hashes, and
/// the rest are chained by the database from them; every stored hash is the
/// chain's, and each answer names the hash stored for its last event.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_writer_keeps_its_hashes_up_to_the_first_append_it_mispredicted(pool: PgPool) {
    let (known, unknown) = (Uuid::now_v7(), Uuid::now_v7());
    let lead = |i: i64| event("LeadCreated", json!({ "i": i }), "2026-01-01T00:00:00Z");
    let (stored_stream, stored_event) = (stream(known), lead(0));
    EventStore::spawn(pool.clone())
        .append(
            stored_stream,
            ExpectedVersion::NoStream,
            vec![stored_event.clone()],
        )
        .await
        .expect("appended");
    let append = |stream: &StreamRef, event: &NewEvent| {
        json!({
            "tenant_id": stream.tenant_id, "stream_type": stream.stream_type,
            "stream_id": stream.stream_id, "expected": 0, "events": [event],
        })
    };
    let duplicate = append(&stored_stream, &stored_event);
    let bogus = vec![0xab_u8; 32];
    let mut written = 1;

    // Each batch: why the writer gets only its first append right, the
    // tenant and payload of each new append, and where a duplicate goes.
    let cases = [
        (
            "an append refused after the first",
            [(known, 1), (known, 2), (unknown, 3)],
            Some(1),
        ),
        (
            "a tenant without a tip after the first",
            [(known, 4), (unknown, 5), (known, 6)],
            None,
        ),
    ];
    for (why, appends, refused_at) in cases {
        let appends = appends.map(|(tenant, i)| (stream(tenant), lead(i)));
        let (head, tip) = head_and_tip(&pool, known).await;
        // The writer's first hash is right; the others it would compute
        // from positions or tips that do not hold, and must not be stored.
        let (first_stream, first_event) = &appends[0];
        let first_hash = chain::Unplaced::of(
            first_stream.stream_type,
            first_stream.stream_id,
            first_event,
        )
        .expect("certain jsonb text")
        .link(&tip, head + 1, 1);
        let mut batch: Vec<_> = appends.iter().map(|(s, e)| append(s, e)).collect();
        let mut hashes = vec![first_hash.to_vec(), bogus.clone(), bogus.clone()];
        if let Some(at) = refused_at {
            batch.insert(at, duplicate.clone());
            hashes.push(bogus.clone());
        }
        let answer = append_directly(
            &pool,
            serde_json::Value::Array(batch),
            head,
            vec![known],
            vec![tip.to_vec()],
            hashes,
        )
        .await;
        written += appends.len();

        let chained: Vec<Option<bool>> = answer.iter().map(|a| a.writer_chained).collect();
        let expected = match refused_at {
            Some(_) => vec![Some(true), None, Some(false), Some(false)],
            None => vec![Some(true), Some(false), Some(false)],
        };
        assert_eq!(chained, expected, "{why}");
        assert_eq!(
            answer[0].last_hash.as_deref(),
            Some(first_hash.as_slice()),
            "{why}"
        );
        for a in &answer {
            let Some(position) = a.last_position else {
                continue;
            };
            let stored: Vec<u8> = sqlx::query_scalar("select hash from events where position = $1")
                .bind(position)
                .fetch_one(&pool)
                .await
                .expect("the stored hash");
            assert_eq!(
                a.last_hash.as_ref(),
                Some(&stored),
                "{why}: position {position}"
            );
        }
    }
    assert_eq!(assert_chained(&pool, written).await, 2);
}

/// Concurrent appends through one event store, some of them refused, make
/// batches whose prediction fails part-way (migration 0018): every stored
/// hash is still the chain's, and the writer carries on chaining.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn batches_refused_part_way_still_chain(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7(), Uuid::now_v7()];
    let lead = |i: usize| event("LeadCreated", json!({ "i": i }), "2026-01-01T00:00:00Z");
    for tenant in tenants {
        store
            .append(stream(tenant), ExpectedVersion::NoStream, vec![lead(0)])
            .await
            .expect("appended");
    }
    let taught = store.batches_chained_by_writer();

    // Every seventh append expects a version its new stream is not at.
    let refused = |i: usize| i % 7 == 3;
    let appends = (0..200).map(|i| {
        let expected = if refused(i) {
            ExpectedVersion::Exact(5)
        } else {
            ExpectedVersion::NoStream
        };
        store.append(
            stream(tenants[i % 2]),
            expected,
            vec![lead(i), lead(i + 1000)],
        )
    });
    let results = futures::future::join_all(appends).await;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_err(), refused(i), "append {i}: {result:?}");
    }
    let written = 2 + 2 * results.iter().filter(|r| r.is_ok()).count();
    assert!(
        store.batches_chained_by_writer() > taught,
        "the writer chained none of the batches"
    );
    assert_eq!(assert_chained(&pool, written).await, 2);

    // After them the writer still knows where each tenant stands.
    let before = store.batches_chained_by_writer();
    store
        .append(stream(tenants[0]), ExpectedVersion::NoStream, vec![lead(9)])
        .await
        .expect("appended");
    assert_eq!(store.batches_chained_by_writer(), before + 1);
    assert_eq!(assert_chained(&pool, written + 1).await, 2);
}
