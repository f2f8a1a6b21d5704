//! The resource read models checked against the event log: every row of
//! `customers`, `products`, `leads` and `orders` must equal
//! `Fold::from_events` of its stream, and every stream must have its row.

use std::collections::BTreeMap;

use schema::envelope::{Decoded, RecordedEvent};
use schema::events::{stream_types, EventPayload};
use schema::resources::{Customer, Fold, Lead, Order, Product};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// Every event of the four resource stream types, by stream, oldest first.
async fn resource_streams(pool: &PgPool) -> BTreeMap<(String, Uuid), Vec<RecordedEvent>> {
    let events: Vec<RecordedEvent> = sqlx::query_as(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, metadata, data
           from events
          where stream_type = any($1)
          order by position",
    )
    .bind([
        stream_types::CUSTOMER,
        stream_types::PRODUCT,
        stream_types::LEAD,
        stream_types::ORDER,
    ])
    .fetch_all(pool)
    .await
    .expect("read the resource events");
    let mut streams: BTreeMap<(String, Uuid), Vec<RecordedEvent>> = BTreeMap::new();
    for event in events {
        streams
            .entry((event.stream_type.clone(), event.stream_id))
            .or_default()
            .push(event);
    }
    streams
}

/// A fresh fold of one stream, skipping the types this build does not know
/// (as the projector does).
fn fold<T: Fold>(events: &[RecordedEvent]) -> T {
    let decoded: Vec<(&RecordedEvent, EventPayload)> = events
        .iter()
        .filter_map(|e| match e.decode().expect("a stored event decodes") {
            Decoded::Known(payload) => Some((e, payload)),
            Decoded::Unknown => None,
        })
        .collect();
    T::from_events(decoded.iter().map(|(e, p)| (*e, p)))
        .expect("the stream folds")
        .expect("the stream has events")
}

async fn rows<T: Fold + Send + Unpin + 'static>(pool: &PgPool, table: &str) -> Vec<T> {
    sqlx::query_scalar::<_, Json<T>>(&format!("select to_jsonb(t) from {table} t order by id"))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"))
        .into_iter()
        .map(|Json(row)| row)
        .collect()
}

async fn check<T>(
    pool: &PgPool,
    table: &str,
    stream_type: &str,
    streams: &BTreeMap<(String, Uuid), Vec<RecordedEvent>>,
    id: impl Fn(&T) -> Uuid,
) -> usize
where
    T: Fold + Send + Unpin + PartialEq + std::fmt::Debug + 'static,
{
    let expected: BTreeMap<Uuid, T> = streams
        .iter()
        .filter(|((ty, _), _)| ty == stream_type)
        .map(|((_, stream_id), events)| (*stream_id, fold::<T>(events)))
        .collect();
    let actual: BTreeMap<Uuid, T> = rows::<T>(pool, table)
        .await
        .into_iter()
        .map(|row| (id(&row), row))
        .collect();
    for (stream_id, folded) in &expected {
        match actual.get(stream_id) {
            Some(row) => assert_eq!(row, folded, "{table} row {stream_id} differs from its fold"),
            None => panic!("{table} has no row for stream {stream_id}"),
        }
    }
    for stream_id in actual.keys() {
        assert!(
            expected.contains_key(stream_id),
            "{table} has a row {stream_id} that no stream explains"
        );
    }
    expected.len()
}

/// Asserts that each resource read model holds exactly one row per stream of
/// its type, equal to a fresh fold of that stream's events from the log.
/// Returns the number of rows compared, per table (customers, products,
/// leads, orders).
pub async fn assert_read_models_match_log(pool: &PgPool) -> [usize; 4] {
    let streams = resource_streams(pool).await;
    [
        check::<Customer>(pool, "customers", stream_types::CUSTOMER, &streams, |r| {
            r.meta.id
        })
        .await,
        check::<Product>(pool, "products", stream_types::PRODUCT, &streams, |r| {
            r.meta.id
        })
        .await,
        check::<Lead>(pool, "leads", stream_types::LEAD, &streams, |r| r.meta.id).await,
        check::<Order>(pool, "orders", stream_types::ORDER, &streams, |r| r.meta.id).await,
    ]
}

/// `jeanus_projected_position()`: every read model is up to date through it.
pub async fn projected(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select jeanus_projected_position()")
        .fetch_one(pool)
        .await
        .expect("the projected position")
}

/// Waits (up to `within`) until every read model is up to date with the
/// whole log; the log's head.
pub async fn wait_until_projected(pool: &PgPool, within: std::time::Duration) -> i64 {
    let head = schema::store::head(pool).await.expect("the log's head");
    crate::eventually("the projector to reach the log's head", within, || async {
        (projected(pool).await >= head).then_some(())
    })
    .await;
    head
}

/// Every row of `table` as JSON, in id order.
pub async fn table_rows(pool: &PgPool, table: &str) -> Vec<serde_json::Value> {
    sqlx::query_scalar(&format!("select to_jsonb(t) from {table} t order by id"))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"))
}

/// The table's identity: a rebuild's swap gives the name to another table.
pub async fn table_oid(pool: &PgPool, table: &str) -> u32 {
    let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("select $1::regclass::oid")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("the oid of {table}: {e}"));
    oid.0
}

/// `(index name, definition)` of every index of `table`.
pub async fn table_indexes(pool: &PgPool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "select indexname::text, indexdef from pg_indexes where tablename = $1 order by indexname",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("the indexes of {table}: {e}"))
}

/// The checkpoint of the projection `name`.
pub async fn checkpoint(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("select position from projector_checkpoint where name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("the checkpoint of {name}: {e}"))
}
