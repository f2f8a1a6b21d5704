//! The `tenants` read model: one row per workspace, from `TenantCreated`.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use schema::envelope::RecordedEvent;
use schema::events::EventPayload;
use sqlx::PgConnection;
use uuid::Uuid;

/// Applies one event to `table` (`tenants`, or the rebuild's copy of it).
pub async fn apply(
    conn: &mut PgConnection,
    table: &str,
    event: &RecordedEvent,
    payload: &EventPayload,
) -> anyhow::Result<()> {
    match payload {
        // A TenantCreated's stream id is the tenant id.
        EventPayload::TenantCreated(created) => {
            insert_tenant(
                conn,
                table,
                event.stream_id,
                &created.name,
                event.occurred_at,
            )
            .await
        }
        _ => Ok(()),
    }
}

/// A plain insert, not an upsert: a tenant's stream starts with exactly one
/// TenantCreated, so a second insert can only mean the event was applied
/// twice, and that must fail loudly rather than be absorbed.
async fn insert_tenant(
    conn: &mut PgConnection,
    table: &str,
    id: Uuid,
    name: &str,
    created_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "insert into {table} (id, name, created_at) values ($1, $2, $3)"
    ))
    .bind(id)
    .bind(name)
    .bind(created_at)
    .execute(conn)
    .await
    .with_context(|| format!("failed to insert tenant {id}"))?;
    Ok(())
}
