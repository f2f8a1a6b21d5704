//! The `api_keys` read model: one row per key, from `KeyMinted`, marked
//! revoked (never deleted) by `KeyRevoked`.

use anyhow::Context as _;
use schema::envelope::RecordedEvent;
use schema::events::{EventPayload, KeyMinted};
use sqlx::PgConnection;

/// Applies one event to `table` (`api_keys`, or the rebuild's copy of it).
pub async fn apply(
    conn: &mut PgConnection,
    table: &str,
    event: &RecordedEvent,
    payload: &EventPayload,
) -> anyhow::Result<()> {
    match payload {
        EventPayload::KeyMinted(minted) => insert_key(conn, table, event, minted).await,
        EventPayload::KeyRevoked(_) => revoke_key(conn, table, event).await,
        _ => Ok(()),
    }
}

/// A plain insert, not an upsert: a key's stream starts with exactly one
/// KeyMinted, so a second insert can only mean the event was applied twice,
/// and that must fail loudly rather than be absorbed.
async fn insert_key(
    conn: &mut PgConnection,
    table: &str,
    event: &RecordedEvent,
    minted: &KeyMinted,
) -> anyhow::Result<()> {
    let scopes: Vec<String> = minted.scopes.iter().map(scope_name).collect();
    let allowed_ips: Vec<String> = minted.allowed_ips.iter().map(ToString::to_string).collect();
    // The api bounds it to 1..=10000; a larger value cannot come from it.
    let rate_limit = i32::try_from(minted.rate_limit_per_minute)
        .with_context(|| format!("key {} has an out-of-range rate limit", event.stream_id))?;
    sqlx::query(&format!(
        "insert into {table} (id, tenant_id, label, scopes, key_hash, key_start, expires_at,
                              allowed_ips, rate_limit_per_minute, created_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(event.stream_id)
    .bind(event.tenant_id)
    .bind(&minted.label)
    .bind(&scopes)
    .bind(&minted.key_sha256)
    .bind(&minted.key_start)
    .bind(minted.expires_at)
    .bind(&allowed_ips)
    .bind(rate_limit)
    .bind(event.occurred_at)
    .execute(conn)
    .await
    .with_context(|| format!("failed to insert api key {}", event.stream_id))?;
    Ok(())
}

/// The first revocation's time stands: the api appends at most one
/// KeyRevoked per key, but should a second one ever be in the log, replaying
/// it must not move the time the key stopped working.
async fn revoke_key(
    conn: &mut PgConnection,
    table: &str,
    event: &RecordedEvent,
) -> anyhow::Result<()> {
    let done = sqlx::query(&format!(
        "update {table} set revoked_at = coalesce(revoked_at, $2) where id = $1 and tenant_id = $3"
    ))
    .bind(event.stream_id)
    .bind(event.occurred_at)
    .bind(event.tenant_id)
    .execute(conn)
    .await
    .with_context(|| format!("failed to revoke api key {}", event.stream_id))?;
    anyhow::ensure!(
        done.rows_affected() == 1,
        "KeyRevoked at position {} names key {}, which this tenant never minted",
        event.position,
        event.stream_id
    );
    Ok(())
}

/// The name stored in `scopes`: the same snake_case as in the events.
fn scope_name(scope: &schema::events::Scope) -> String {
    use schema::events::Scope;
    match scope {
        Scope::Read => "read",
        Scope::Write => "write",
        Scope::Admin => "admin",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, SubsecRound, Utc};
    use schema::envelope::Metadata;
    use schema::events::{stream_types, KeyRevoked, Scope};
    use sqlx::PgPool;
    use uuid::Uuid;

    use super::*;

    const TABLE: &str = "api_keys";

    fn recorded(
        tenant_id: Uuid,
        key_id: Uuid,
        version: i64,
        at: DateTime<Utc>,
        payload: &EventPayload,
    ) -> RecordedEvent {
        RecordedEvent {
            position: version,
            id: Uuid::now_v7(),
            tenant_id,
            stream_type: stream_types::API_KEY.to_owned(),
            stream_id: key_id,
            stream_version: version,
            event_type: payload.event_type().to_owned(),
            schema_version: payload.schema_version(),
            occurred_at: at,
            metadata: Metadata::default(),
            data: payload.to_data(),
        }
    }

    fn minted() -> EventPayload {
        EventPayload::from(KeyMinted {
            label: "zapier".into(),
            scopes: vec![Scope::Read, Scope::Write],
            key_sha256: "ab".repeat(32),
            key_start: "jns_live_a1b2".into(),
            expires_at: None,
            allowed_ips: vec![
                "10.0.0.0/8".parse().expect("cidr"),
                "2001:db8::1/128".parse().expect("cidr"),
            ],
            rate_limit_per_minute: 60,
        })
    }

    #[derive(sqlx::FromRow, Debug)]
    struct Row {
        tenant_id: Uuid,
        scopes: Vec<String>,
        allowed_ips: Vec<String>,
        rate_limit_per_minute: i32,
        created_at: DateTime<Utc>,
        revoked_at: Option<DateTime<Utc>>,
    }

    async fn row(pool: &PgPool, id: Uuid) -> Row {
        sqlx::query_as(
            "select tenant_id, scopes, allowed_ips, rate_limit_per_minute, created_at, revoked_at
               from api_keys where id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("the key's row")
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_minted_key_is_inserted_and_a_revocation_keeps_the_first_time(pool: PgPool) {
        let mut conn = pool.acquire().await.expect("connection");
        let (tenant, key) = (Uuid::now_v7(), Uuid::now_v7());
        let minted_at = Utc::now().trunc_subsecs(6);
        let payload = minted();
        apply(
            &mut conn,
            TABLE,
            &recorded(tenant, key, 1, minted_at, &payload),
            &payload,
        )
        .await
        .expect("mint");

        let r = row(&pool, key).await;
        assert_eq!(r.tenant_id, tenant);
        assert_eq!(r.scopes, ["read", "write"]);
        assert_eq!(r.allowed_ips, ["10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(r.rate_limit_per_minute, 60);
        assert_eq!(r.created_at, minted_at);
        assert_eq!(r.revoked_at, None);

        let revoked = EventPayload::from(KeyRevoked {});
        let first = minted_at + Duration::seconds(5);
        apply(
            &mut conn,
            TABLE,
            &recorded(tenant, key, 2, first, &revoked),
            &revoked,
        )
        .await
        .expect("revoke");
        assert_eq!(row(&pool, key).await.revoked_at, Some(first));

        let later = first + Duration::seconds(5);
        apply(
            &mut conn,
            TABLE,
            &recorded(tenant, key, 3, later, &revoked),
            &revoked,
        )
        .await
        .expect("a second revocation is harmless");
        assert_eq!(row(&pool, key).await.revoked_at, Some(first));
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_second_application_of_a_mint_fails_loudly(pool: PgPool) {
        let mut conn = pool.acquire().await.expect("connection");
        let payload = minted();
        let event = recorded(Uuid::now_v7(), Uuid::now_v7(), 1, Utc::now(), &payload);
        apply(&mut conn, TABLE, &event, &payload)
            .await
            .expect("first");
        assert!(apply(&mut conn, TABLE, &event, &payload).await.is_err());
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn revoking_another_tenants_key_is_an_error(pool: PgPool) {
        let mut conn = pool.acquire().await.expect("connection");
        let key = Uuid::now_v7();
        let payload = minted();
        apply(
            &mut conn,
            TABLE,
            &recorded(Uuid::now_v7(), key, 1, Utc::now(), &payload),
            &payload,
        )
        .await
        .expect("mint");
        let revoked = EventPayload::from(KeyRevoked {});
        let err = apply(
            &mut conn,
            TABLE,
            &recorded(Uuid::now_v7(), key, 2, Utc::now(), &revoked),
            &revoked,
        )
        .await
        .expect_err("not this tenant's key");
        assert!(err.to_string().contains("never minted"), "{err:#}");
        assert_eq!(row(&pool, key).await.revoked_at, None);
    }
}
