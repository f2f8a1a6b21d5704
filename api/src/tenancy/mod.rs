//! Tenants and their API keys: the commands that create a tenant, mint a key
//! and revoke one (validation included), and the queries that list keys.
//! One function per operation, called alike by the operator API
//! (`routes::admin`), the self-service API (`routes::keys`) and the CLI
//! (`jeanus-api admin …`), so the three can never disagree on a rule.
//!
//! Decisions on writes (does the tenant exist? is the key this tenant's, and
//! already revoked?) are taken on the event log, not on the read models: the
//! CLI runs with no projector, and the log is never behind. Lists read the
//! read models, which a handler brings up to date with its own writes
//! through `consistency` before it answers.

use chrono::{DateTime, SubsecRound, Utc};
use schema::envelope::{Metadata, NewEvent};
use schema::events::{stream_types, EventPayload, KeyMinted, KeyRevoked, Scope, TenantCreated};
use schema::store::{AppendError, Appended, EventStore, ExpectedVersion, StreamRef};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::key::{self, PlainKey};
use crate::error::{ApiError, ApiResult};

mod validate;

use validate::bounded_text;
pub use validate::{
    KeySpec, MintRequest, DEFAULT_RATE_LIMIT, MAX_LABEL, MAX_RATE_LIMIT, MAX_TENANT_NAME,
};

/// The `{"data": …}` wrapper of every successful response (and of the CLI's
/// output).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Data<T> {
    pub data: T,
}

/// The outcome of a command: what to answer, and the position of the event
/// it appended (none when there was nothing to append), which the caller
/// waits for before answering so that its next read sees the write.
pub struct Written<T> {
    pub data: T,
    pub position: Option<i64>,
}

// ---- tenants ----

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewTenant {
    /// 1 to 200 characters, not blank.
    pub name: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Appends a TenantCreated for a new tenant id.
pub async fn create_tenant(
    store: &EventStore,
    request: NewTenant,
    metadata: Metadata,
) -> ApiResult<Written<Tenant>> {
    let name = bounded_text("name", request.name, MAX_TENANT_NAME)?;
    let id = Uuid::now_v7();
    let payload = EventPayload::from(TenantCreated { name: name.clone() });
    let event = stamped(&payload, metadata);
    let created_at = event.occurred_at;
    let stream = StreamRef {
        tenant_id: id,
        stream_type: stream_types::TENANT,
        stream_id: id,
    };
    let appended = append_new(store, stream, event).await?;
    Ok(Written {
        data: Tenant {
            id,
            name,
            created_at,
        },
        position: last_position(&appended),
    })
}

/// The tenant, from the `tenants` read model.
pub async fn find_tenant(db: &PgPool, tenant_id: Uuid) -> ApiResult<Option<Tenant>> {
    let tenant =
        sqlx::query_as::<_, Tenant>("select id, name, created_at from tenants where id = $1")
            .bind(tenant_id)
            .fetch_optional(db)
            .await?;
    Ok(tenant)
}

/// Whether the event log holds the tenant's TenantCreated: true as soon as
/// it is committed, with or without a projector.
async fn tenant_in_log(db: &PgPool, tenant_id: Uuid) -> ApiResult<bool> {
    let found = sqlx::query_scalar(
        "select exists (select 1 from events
                         where stream_id = $1 and tenant_id = $1
                           and stream_type = $2 and event_type = $3)",
    )
    .bind(tenant_id)
    .bind(stream_types::TENANT)
    .bind("TenantCreated")
    .fetch_one(db)
    .await?;
    Ok(found)
}

// ---- minting ----

/// A freshly minted key: the only place its plaintext ever appears. No
/// `Debug`, so that it cannot end up in a log by accident.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(description = "A freshly minted key: the only response that holds its plaintext.")]
pub struct MintedKey {
    pub id: Uuid,
    /// The plaintext key, shown once.
    #[schema(example = "jns_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8")]
    pub key: String,
    #[schema(example = "jns_live_a1b2****")]
    pub masked: String,
    pub label: String,
    #[schema(value_type = Vec<crate::openapi::Scope>)]
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub allowed_ips: Vec<String>,
    pub rate_limit_per_minute: u32,
    pub created_at: DateTime<Utc>,
}

/// Validates `request`, checks that the tenant exists in the event log, and
/// appends a KeyMinted holding the new key's hash and displayable start.
/// Unknown tenant: `not_found`.
pub async fn mint_key(
    db: &PgPool,
    store: &EventStore,
    tenant_id: Uuid,
    request: MintRequest,
    metadata: Metadata,
) -> ApiResult<Written<MintedKey>> {
    let spec = request.validate(Utc::now())?;
    if !tenant_in_log(db, tenant_id).await? {
        return Err(ApiError::NotFound);
    }
    let key = PlainKey::generate(spec.mode);
    let id = Uuid::now_v7();
    let payload = EventPayload::from(KeyMinted {
        label: spec.label.clone(),
        scopes: spec.scopes.clone(),
        key_sha256: key.hash(),
        key_start: key.start(),
        expires_at: spec.expires_at,
        allowed_ips: spec.allowed_ips.clone(),
        rate_limit_per_minute: spec.rate_limit_per_minute,
    });
    let event = stamped(&payload, metadata);
    let created_at = event.occurred_at;
    let stream = StreamRef {
        tenant_id,
        stream_type: stream_types::API_KEY,
        stream_id: id,
    };
    let appended = append_new(store, stream, event).await?;
    Ok(Written {
        data: MintedKey {
            id,
            masked: key::masked(&key.start()),
            key: key.expose().to_owned(),
            label: spec.label,
            scopes: spec.scopes,
            expires_at: spec.expires_at,
            allowed_ips: spec.allowed_ips.iter().map(ToString::to_string).collect(),
            rate_limit_per_minute: spec.rate_limit_per_minute,
            created_at,
        },
        position: last_position(&appended),
    })
}

// ---- listing ----

/// A key as listed: masked, never its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    #[schema(example = "jns_live_a1b2****")]
    pub masked: String,
    pub label: String,
    #[schema(value_type = Vec<crate::openapi::Scope>)]
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The latest request the key authenticated (from the audit log).
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub allowed_ips: Vec<String>,
    pub rate_limit_per_minute: i32,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    label: String,
    scopes: Vec<String>,
    key_start: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    allowed_ips: Vec<String>,
    rate_limit_per_minute: i32,
}

/// The tenant's keys, revoked ones included, newest first. `last_used_at`
/// is the time of the latest request the key authenticated, from the audit
/// log (a 401 for a revoked or expired key does not count as a use).
pub async fn list_keys(db: &PgPool, tenant_id: Uuid) -> ApiResult<Vec<KeyView>> {
    let rows = sqlx::query_as::<_, KeyRow>(
        "select k.id, k.label, k.scopes, k.key_start, k.created_at, used.at as last_used_at,
                k.expires_at, k.revoked_at, k.allowed_ips, k.rate_limit_per_minute
           from api_keys k
           left join lateral (
                select a.at from audit_log a
                 where a.tenant_id = k.tenant_id and a.key_id = k.id and a.status <> 401
                 order by a.at desc
                 limit 1
           ) used on true
          where k.tenant_id = $1
          order by k.created_at desc, k.id desc",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeyView {
            id: r.id,
            masked: key::masked(&r.key_start),
            label: r.label,
            scopes: r.scopes,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            allowed_ips: r.allowed_ips,
            rate_limit_per_minute: r.rate_limit_per_minute,
        })
        .collect())
}

// ---- revocation ----

#[derive(sqlx::FromRow)]
struct KeyStream {
    tenant_id: Uuid,
    version: i64,
    revoked: bool,
}

/// Revokes the tenant's key `key_id`: appends one KeyRevoked, or nothing if
/// the key is revoked already (the position is then `None`). A key of
/// another tenant, or none at all, is `not_found`.
pub async fn revoke_key(
    db: &PgPool,
    store: &EventStore,
    tenant_id: Uuid,
    key_id: Uuid,
    metadata: Metadata,
) -> ApiResult<Written<()>> {
    let stream: Option<KeyStream> = sqlx::query_as(
        "select tenant_id, max(stream_version) as version,
                bool_or(event_type = 'KeyRevoked') as revoked
           from events
          where stream_id = $1 and stream_type = $2
          group by tenant_id",
    )
    .bind(key_id)
    .bind(stream_types::API_KEY)
    .fetch_optional(db)
    .await?;
    let stream = match stream {
        Some(s) if s.tenant_id == tenant_id => s,
        _ => return Err(ApiError::NotFound),
    };
    if stream.revoked {
        return Ok(Written {
            data: (),
            position: None,
        });
    }
    let payload = EventPayload::from(KeyRevoked {});
    let target = StreamRef {
        tenant_id,
        stream_type: stream_types::API_KEY,
        stream_id: key_id,
    };
    // Expecting the version just read: of two revocations racing, one
    // appends and the other conflicts, and a conflict on a key stream can
    // only be that other revocation (nothing else is ever appended to it).
    let appended = store
        .append(
            target,
            ExpectedVersion::Exact(stream.version),
            vec![stamped(&payload, metadata)],
        )
        .await;
    match appended {
        Ok(appended) => Ok(Written {
            data: (),
            position: last_position(&appended),
        }),
        Err(AppendError::Conflict { .. }) => Ok(Written {
            data: (),
            position: None,
        }),
        Err(e) => Err(append_failed(e)),
    }
}

// ---- helpers ----

/// A new event, its time cut to PostgreSQL's microseconds so that what the
/// response shows equals what the read model will hold.
fn stamped(payload: &EventPayload, metadata: Metadata) -> NewEvent {
    let mut event = NewEvent::new(payload, metadata);
    event.occurred_at = event.occurred_at.trunc_subsecs(6);
    event
}

/// Appends the first event of a new stream (whose id was just generated).
async fn append_new(store: &EventStore, stream: StreamRef, event: NewEvent) -> ApiResult<Appended> {
    store
        .append(stream, ExpectedVersion::NoStream, vec![event])
        .await
        .map_err(append_failed)
}

fn last_position(appended: &Appended) -> Option<i64> {
    appended.positions.as_ref().map(|p| *p.end())
}

/// A failed append: 503 when the database or the writer is unavailable
/// (retryable), otherwise a 500 (logged once by `ApiError`).
pub fn append_failed(e: AppendError) -> ApiError {
    match e {
        AppendError::WriterStopped => ApiError::Unavailable,
        AppendError::Database(inner)
            if matches!(
                *inner,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            ) =>
        {
            tracing::warn!(error = %inner, "append failed: the database is unreachable");
            ApiError::Unavailable
        }
        other => ApiError::Internal(other.into()),
    }
}
