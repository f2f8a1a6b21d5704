//! Schema evolution, replayed: `KeyMinted` is at schema version 2 (its
//! `key_hash` renamed `key_sha256`); a log holding version-1 `KeyMinted`
//! events, written raw as the old code wrote them, rebuilt through the real
//! decode path (`RecordedEvent` → `EventPayload::decode` → `KeyMinted::upcast`)
//! gives today's `api_keys` read model: the old keys authenticate, the
//! revoked one is refused, and their rows have the shape of a key minted
//! today.

use std::time::Duration;

use api::auth::key::{Mode, PlainKey};
use jeanus_tests::read_models::{table_oid, table_rows, wait_until_projected};
use jeanus_tests::stack::{send, MintedKey};
use jeanus_tests::{spawn_stack, TestEnv};
use projector::projections::Projection;
use projector::rebuild::{rebuild, Options};
use reqwest::{Method, StatusCode};
use schema::envelope::{Metadata, NewEvent};
use schema::events::{stream_types, KeyMinted};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Appends one event of `event_type` at `schema_version` with `data` exactly
/// as given: what an older build appended.
async fn append_raw(
    store: &EventStore,
    tenant_id: Uuid,
    stream_id: Uuid,
    expected: ExpectedVersion,
    event_type: &'static str,
    schema_version: i32,
    data: Value,
) {
    store
        .append(
            StreamRef {
                tenant_id,
                stream_type: stream_types::API_KEY,
                stream_id,
            },
            expected,
            vec![NewEvent {
                id: Uuid::now_v7(),
                event_type,
                schema_version,
                occurred_at: chrono::Utc::now(),
                metadata: Metadata::default(),
                data,
            }],
        )
        .await
        .expect("append a raw event");
}

/// A `KeyMinted` as version 1 stored it.
fn key_minted_v1(key: &PlainKey, label: &str) -> Value {
    json!({
        "label": label,
        "scopes": ["read", "write"],
        "key_hash": key.hash(),
        "key_start": key.start(),
        "expires_at": null,
        "allowed_ips": [],
        "rate_limit_per_minute": 1000,
    })
}

async fn stored(pool: &PgPool, key_id: Uuid) -> (i32, Value) {
    sqlx::query_as(
        "select schema_version, data from events where stream_id = $1 and event_type = 'KeyMinted'",
    )
    .bind(key_id)
    .fetch_one(pool)
    .await
    .expect("the KeyMinted event")
}

/// A row with what differs from key to key (id, label, hash, start, times)
/// taken out: the shape every key minted with the same settings shares.
fn shape(row: &Value) -> Value {
    let mut row = row.clone();
    for field in [
        "id",
        "label",
        "key_hash",
        "key_start",
        "created_at",
        "revoked_at",
    ] {
        row.as_object_mut().expect("a row").remove(field);
    }
    row
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_replay_of_version_1_key_mints_upcasts_them_to_todays_read_model(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;

    // History as the old code wrote it: two keys at version 1, one revoked.
    let store = EventStore::spawn(pool.clone());
    let (old, old_id) = (PlainKey::generate(Mode::Live), Uuid::now_v7());
    let (revoked, revoked_id) = (PlainKey::generate(Mode::Live), Uuid::now_v7());
    for (key, id, label) in [(&old, old_id, "old"), (&revoked, revoked_id, "revoked")] {
        append_raw(
            &store,
            tenant,
            id,
            ExpectedVersion::NoStream,
            "KeyMinted",
            1,
            key_minted_v1(key, label),
        )
        .await;
    }
    append_raw(
        &store,
        tenant,
        revoked_id,
        ExpectedVersion::Exact(1),
        "KeyRevoked",
        1,
        json!({}),
    )
    .await;
    // And a key minted today.
    let today: MintedKey = stack
        .mint_key_with(
            tenant,
            json!({"label": "today", "scopes": ["read", "write"], "rate_limit_per_minute": 1000}),
        )
        .await;

    let (version, data) = stored(&pool, old_id).await;
    assert_eq!(version, 1);
    assert_eq!(data["key_hash"], old.hash());
    // Today's shape does not read it: only the upcast does.
    assert!(serde_json::from_value::<KeyMinted>(data).is_err());
    let (version, data) = stored(&pool, today.id).await;
    assert_eq!(version, 2);
    assert!(
        data.get("key_hash").is_none() && data["key_sha256"].is_string(),
        "{data}"
    );

    wait_until_projected(&pool, Duration::from_secs(60)).await;
    let live_table = table_oid(&pool, "api_keys").await;
    let report = rebuild(&pool, &[Projection::ApiKeys], &Options::default())
        .await
        .expect("the rebuild reads version-1 history");
    assert_eq!(report.events, 4, "three mints and a revocation");
    assert_ne!(table_oid(&pool, "api_keys").await, live_table, "swapped in");

    let rows = table_rows(&pool, "api_keys").await;
    let row = |id: Uuid| {
        rows.iter()
            .find(|r| r["id"] == id.to_string())
            .unwrap_or_else(|| panic!("no row for {id}"))
    };
    assert_eq!(row(old_id)["key_hash"], old.hash());
    assert_eq!(row(old_id)["label"], "old");
    assert!(row(old_id)["revoked_at"].is_null());
    assert!(row(revoked_id)["revoked_at"].is_string());
    assert_eq!(
        shape(row(old_id)),
        shape(row(today.id)),
        "an old key's row is shaped like today's"
    );

    // The api, reading the rebuilt table, lets the old key in (its first
    // use: no cache stands in for the table) and keeps the revoked one out.
    let me = |key: &str| stack.with_key(Method::GET, "/api/v1/me", key);
    let (status, body) = send(me(old.expose())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["tenant"]["id"], tenant.to_string(), "{body}");
    assert_eq!(body["data"]["key"]["id"], old_id.to_string(), "{body}");
    let (status, _) = send(me(revoked.expose())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(me(&today.key)).await;
    assert_eq!(status, StatusCode::OK);
    stack.shutdown().await;
}
