//! Helpers for the hash-chain tests: events in bulk for chosen tenants, the
//! three ways of tampering with the log (alter, remove, swap), and the
//! third-party script `scripts/verify_chain.py`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::Utc;
use schema::envelope::{Metadata, NewEvent};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The event type of [`append_events`]: unknown to every consumer, which
/// skips it (the projector and the dispatcher have nothing to do).
pub const FILLER_TYPE: &str = "AuditFiller";

/// Appends `count` events to one new stream of `tenant`, `per_append` per
/// append (submitted together: the event store groups them into batches),
/// each with about `data_bytes` of data; the stream's id.
pub async fn append_events(
    store: &EventStore,
    tenant: Uuid,
    count: usize,
    per_append: usize,
    data_bytes: usize,
) -> Uuid {
    let stream_id = Uuid::now_v7();
    let filler = "x".repeat(data_bytes);
    let appends = (0..count).step_by(per_append.max(1)).map(|first| {
        let events = (first..count.min(first + per_append))
            .map(|n| NewEvent {
                id: Uuid::now_v7(),
                event_type: FILLER_TYPE,
                schema_version: 1,
                occurred_at: Utc::now(),
                metadata: Metadata::default(),
                data: json!({
                    "n": n,
                    "amount": 12.50,
                    "text": "quote \" tab \t nl \n ctl \u{1} é 漢",
                    "note": filler,
                }),
            })
            .collect();
        store.append(
            StreamRef {
                tenant_id: tenant,
                stream_type: "audit",
                stream_id,
            },
            ExpectedVersion::Any,
            events,
        )
    });
    for appended in futures::future::join_all(appends).await {
        appended.expect("append filler events");
    }
    stream_id
}

/// The tenant of position `p` in a log of [`write_chained_log`]: the
/// `p mod tenants`-th of these fixed ids.
pub fn bulk_tenant(index: i64) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | index as u128)
}

/// Writes events 1 ..= `events` straight into an empty log, each the same
/// `data` and `metadata`, the tenant of position `p` being
/// [`bulk_tenant`]`(p mod tenants)`, chained with migration 0010's own
/// functions as its backfill does; moves the head, then `vacuum analyze`.
/// Far quicker than appending, for logs of many pages.
pub async fn write_chained_log(
    pool: &PgPool,
    events: i64,
    tenants: i64,
    event_type: &str,
    schema_version: i32,
    metadata: &serde_json::Value,
    data: &serde_json::Value,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    sqlx::query(
        "insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                             event_type, schema_version, occurred_at, metadata, data, hash)
         select position, id, tenant_id, 'lead', id, 1, $3, $4, occurred_at, $5, $6,
                jeanus_chain(jeanus_event_canonical(position, id, $3, $4, 'lead', id, 1,
                                                    occurred_at, $5, $6),
                             '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                    over (partition by tenant_id order by position)
           from (select g as position, gen_random_uuid() as id,
                        ('00000000-0000-4000-8000-' || lpad(to_hex(g % $2), 12, '0'))::uuid
                            as tenant_id,
                        now() + make_interval(secs => g / 1000.0) as occurred_at
                   from generate_series(1, $1) g) s",
    )
    .bind(events)
    .bind(tenants)
    .bind(event_type)
    .bind(schema_version)
    .bind(metadata)
    .bind(data)
    .execute(pool)
    .await
    .context("failed to write the log")?;
    sqlx::query("update event_log_head set position = $1")
        .bind(events)
        .execute(pool)
        .await
        .context("failed to move the head")?;
    sqlx::query("vacuum analyze events")
        .execute(pool)
        .await
        .context("failed to vacuum")?;
    Ok(())
}

/// Changes the payload of the event at `position`, as someone with write
/// access to the database could.
pub async fn alter_payload(pool: &PgPool, position: i64) {
    let changed = sqlx::query(
        "update events set data = jsonb_set(data, '{tampered}', 'true') where position = $1",
    )
    .bind(position)
    .execute(pool)
    .await
    .expect("alter an event")
    .rows_affected();
    assert_eq!(changed, 1, "no event at {position}");
}

/// Removes the event at `position`.
pub async fn remove(pool: &PgPool, position: i64) {
    let removed = sqlx::query("delete from events where position = $1")
        .bind(position)
        .execute(pool)
        .await
        .expect("remove an event")
        .rows_affected();
    assert_eq!(removed, 1, "no event at {position}");
}

/// Swaps the contents (every column, the hash too) of two positions.
pub async fn swap(pool: &PgPool, a: i64, b: i64) {
    let mut tx = pool.begin().await.expect("a transaction");
    // A statement cannot delete a key and insert it again: two statements.
    sqlx::query(
        "create temporary table swapped on commit drop as
         select * from events where position in ($1, $2)",
    )
    .bind(a)
    .bind(b)
    .execute(&mut *tx)
    .await
    .expect("copy two events");
    sqlx::query("delete from events where position in ($1, $2)")
        .bind(a)
        .bind(b)
        .execute(&mut *tx)
        .await
        .expect("remove two events");
    let swapped = sqlx::query(
        "insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                             event_type, schema_version, occurred_at, metadata, data, hash)
         select case when position = $1 then $2 else $1 end, id, tenant_id, stream_type,
                stream_id, stream_version, event_type, schema_version, occurred_at, metadata,
                data, hash
           from swapped",
    )
    .bind(a)
    .bind(b)
    .execute(&mut *tx)
    .await
    .expect("swap two events")
    .rows_affected();
    assert_eq!(swapped, 2, "positions {a} and {b} are not both events");
    tx.commit().await.expect("swapped");
}

/// The positions of `tenant`'s events, in order.
pub async fn positions_of(pool: &PgPool, tenant: Uuid) -> Vec<i64> {
    sqlx::query_scalar("select position from events where tenant_id = $1 order by position")
        .bind(tenant)
        .fetch_all(pool)
        .await
        .expect("positions")
}

/// `scripts/verify_chain.py`.
pub fn verify_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify_chain.py")
}

/// Runs `scripts/verify_chain.py` on an NDJSON history (`args` before the file).
pub fn run_verify_script(ndjson: &[u8], args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("jeanus-chain-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let file = dir.join("history.ndjson");
    std::fs::write(&file, ndjson).expect("write the history");
    let output = Command::new("python3")
        .arg(verify_script())
        .args(args)
        .arg(&file)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    output
}
