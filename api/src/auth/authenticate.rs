//! Authentication of `/api/v1` requests: `Authorization: Bearer <key>` to a
//! [`Principal`], through an in-process cache of key lookups, with
//! revocations pushed by NATS.
//!
//! 1. No `Authorization` header, several, a scheme other than `Bearer`, or
//!    an empty token: 401 `missing_auth` (a request that does not present an
//!    API key at all).
//! 2. A token that is not a well-formed key (prefix, length, alphabet,
//!    checksum): 401 `invalid_format`, decided by [`PlainKey::parse`] alone,
//!    with no database query.
//! 3. The key's SHA-256 is looked up in `api_keys` joined with `tenants` (read
//!    models the projector maintains), through [`KeyCache`]: unknown → 401
//!    `invalid_key`, revoked → `revoked`, past `expires_at` → `expired`.
//!
//! The cache keeps a found key for [`FOUND_TTL`] and an unknown one for only
//! [`UNKNOWN_TTL`], so that a key minted a moment after someone guessed it
//! still works at once. Revocation does not wait for either: every api
//! process subscribes (core NATS) to `<prefix>.events.*.api_key.KeyRevoked`
//! and records a tombstone for the key id, checked on every request. A
//! tombstone rather than an eviction, because the projector may not have
//! applied the revocation yet, and a re-read of `api_keys` could still say
//! the key is live. `FOUND_TTL` bounds how long a revocation can be missed
//! while this process is cut off from NATS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use ipnet::IpNet;
use moka::future::Cache;
use moka::Expiry;
use schema::events::{stream_types, EventData, KeyRevoked, Scope};
use schema::nats::Names;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Actor;
use crate::auth::key::PlainKey;
use crate::auth::Principal;
use crate::error::ApiError;

/// How long a found key is trusted without a re-read: the longest a
/// revocation can go unnoticed while NATS is unreachable.
pub const FOUND_TTL: Duration = Duration::from_secs(10);
/// How long an unknown key is remembered as unknown.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(1);
/// Keys cached at most (each entry is a few hundred bytes).
const MAX_KEYS: u64 = 100_000;
/// How long a tombstone is kept. A revocation is forever, but once the
/// projector has applied it (normally within milliseconds) `api_keys` says so
/// too; an hour is ample.
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
const MAX_TOMBSTONES: u64 = 1_000_000;
/// How long a lookup may take before the request is answered 503.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Key lookups this process has sent to PostgreSQL, for tests and the
/// benchmark (a malformed key must never add to it).
static DATABASE_LOOKUPS: AtomicU64 = AtomicU64::new(0);

pub fn database_lookups() -> u64 {
    DATABASE_LOOKUPS.load(Ordering::Relaxed)
}

/// What a lookup by hash found.
#[derive(Debug, Clone)]
enum Lookup {
    Found(Arc<KeyRecord>),
    Unknown,
}

#[derive(Debug)]
struct KeyRecord {
    principal: Principal,
    revoked_at: Option<DateTime<Utc>>,
}

/// Found keys live [`FOUND_TTL`], unknown ones [`UNKNOWN_TTL`].
struct ByOutcome;

impl Expiry<String, Lookup> for ByOutcome {
    fn expire_after_create(&self, _: &String, value: &Lookup, _: Instant) -> Option<Duration> {
        Some(match value {
            Lookup::Found(_) => FOUND_TTL,
            Lookup::Unknown => UNKNOWN_TTL,
        })
    }
}

/// Why a request was not authenticated, and, when the key was found, whom it
/// belongs to (so that even a refused request lands in its tenant's audit log).
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub actor: Option<Actor>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self { error, actor: None }
    }
}

/// This process's cache of key lookups and revocation tombstones. Cheap to
/// clone (one reference count: the middleware clones it for every request).
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    /// By the key's SHA-256 (hex): never the key itself.
    keys: Cache<String, Lookup>,
    /// Key ids revoked according to NATS.
    revoked: Cache<Uuid, ()>,
}

impl KeyCache {
    pub fn new(db: PgPool) -> Self {
        let inner = Inner {
            db,
            keys: Cache::builder()
                .max_capacity(MAX_KEYS)
                .expire_after(ByOutcome)
                .build(),
            revoked: Cache::builder()
                .max_capacity(MAX_TOMBSTONES)
                .time_to_live(TOMBSTONE_TTL)
                .build(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The caller behind `headers`' `Authorization`, or why there is none.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        let presented = bearer_token(headers).ok_or(ApiError::MissingAuth)?;
        let key = PlainKey::parse(presented).map_err(|_| ApiError::InvalidFormat)?;
        let hash = key.hash();
        let lookup = self
            .inner
            .keys
            .try_get_with(hash.clone(), load(self.inner.db.clone(), hash))
            .await
            .map_err(|e| {
                tracing::error!(error = format!("{e:#}"), "API key lookup failed");
                ApiError::Unavailable
            })?;
        let record = match lookup {
            Lookup::Found(record) => record,
            Lookup::Unknown => return Err(ApiError::InvalidKey.into()),
        };
        let principal = &record.principal;
        let refuse = |error| Refusal {
            error,
            actor: Some(actor_of(principal)),
        };
        if record.revoked_at.is_some() || self.inner.revoked.contains_key(&principal.key_id) {
            return Err(refuse(ApiError::Revoked));
        }
        if principal.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(refuse(ApiError::Expired));
        }
        Ok(principal.clone())
    }

    /// Refuse `key_id` from now on in this process (what a KeyRevoked on NATS
    /// does; the revoking handler may call it too, to not wait for NATS).
    pub async fn tombstone(&self, key_id: Uuid) {
        self.inner.revoked.insert(key_id, ()).await;
    }

    /// Subscribe to every tenant's KeyRevoked and tombstone each revoked key
    /// until the NATS connection closes. Returns once the subscription is
    /// registered, so a revocation published afterwards is seen.
    pub async fn watch_revocations(
        &self,
        nats: &async_nats::Client,
        names: &Names,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let subject =
            names.event_type_in_all_tenants(stream_types::API_KEY, KeyRevoked::EVENT_TYPE);
        let mut subscription = nats
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("failed to subscribe to {subject}"))?;
        // The subscription is registered once the server has seen it.
        nats.flush()
            .await
            .context("failed to flush the NATS subscription")?;
        let cache = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                match serde_json::from_slice::<RevokedEvent>(&message.payload) {
                    Ok(event) => {
                        cache.tombstone(event.stream_id).await;
                        tracing::info!(key.id = %event.stream_id, "API key revoked: refused from now on");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, subject = %message.subject, "unreadable KeyRevoked message skipped");
                    }
                }
            }
            tracing::debug!("revocation subscription ended");
        }))
    }
}

/// The part of a published event (`schema::envelope::RecordedEvent`) that
/// names the revoked key: a KeyRevoked's stream id is the key id.
#[derive(serde::Deserialize)]
struct RevokedEvent {
    stream_id: Uuid,
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), if
/// the request has exactly one such header with a non-empty token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    tenant_id: Uuid,
    tenant_name: String,
    label: String,
    key_start: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    allowed_ips: Vec<String>,
    rate_limit_per_minute: i32,
    revoked_at: Option<DateTime<Utc>>,
}

async fn load(db: PgPool, hash: String) -> anyhow::Result<Lookup> {
    DATABASE_LOOKUPS.fetch_add(1, Ordering::Relaxed);
    let query = sqlx::query_as::<_, KeyRow>(
        "select k.id, k.tenant_id, t.name as tenant_name, k.label, k.key_start, k.scopes, \
                k.expires_at, k.allowed_ips, k.rate_limit_per_minute, k.revoked_at \
         from api_keys k join tenants t on t.id = k.tenant_id \
         where k.key_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&db);
    // Authentication sits outside the request timeout: bound it here.
    let row = tokio::time::timeout(LOOKUP_TIMEOUT, query)
        .await
        .context("the API key lookup timed out")?
        .context("failed to look up the API key")?;
    let Some(row) = row else {
        return Ok(Lookup::Unknown);
    };
    let key_id = row.id;
    record_of(row)
        .map(|record| Lookup::Found(Arc::new(record)))
        .with_context(|| format!("API key {key_id} has an unreadable row"))
}

fn record_of(row: KeyRow) -> anyhow::Result<KeyRecord> {
    let scopes = row
        .scopes
        .iter()
        .map(|s| serde_json::from_value::<Scope>(serde_json::Value::String(s.clone())))
        .collect::<Result<Vec<_>, _>>()
        .context("unknown scope")?;
    // An allowlist we cannot read fails closed (an error), never open.
    let allowed_ips = row
        .allowed_ips
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        })
        .collect::<Result<Vec<_>, _>>()
        .context("unreadable CIDR in allowed_ips")?;
    Ok(KeyRecord {
        principal: Principal {
            tenant_id: row.tenant_id,
            tenant_name: row.tenant_name,
            key_id: row.id,
            label: row.label,
            key_start: row.key_start,
            scopes,
            expires_at: row.expires_at,
            rate_limit_per_minute: u32::try_from(row.rate_limit_per_minute).unwrap_or(0),
            allowed_ips,
        },
        revoked_at: row.revoked_at,
    })
}

fn actor_of(principal: &Principal) -> Actor {
    Actor {
        tenant_id: principal.tenant_id,
        key_id: principal.key_id,
        key_label: principal.label.clone(),
    }
}

/// Whether `path` is under `/api/v1`, where every request needs a key.
pub fn is_api_path(path: &str) -> bool {
    path.strip_prefix("/api/v1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a request to `path` needs a key: under `/api/v1`, except the
/// OpenAPI document, which is public. Without a [`Principal`], the IP
/// allowlist and the rate limit let such a request through too.
pub fn needs_key(path: &str) -> bool {
    is_api_path(path) && !crate::openapi::is_public(path)
}

/// Authenticates every `/api/v1` request: inserts the [`Principal`] for the
/// layers and handlers inside, and the [`Actor`] into the response for the
/// audit log; answers 401 itself when there is no valid key.
pub async fn middleware(
    State(keys): State<KeyCache>,
    mut request: Request,
    next: Next,
) -> Response {
    if !needs_key(request.uri().path()) {
        return next.run(request).await;
    }
    match keys.authenticate(request.headers()).await {
        Ok(principal) => {
            let actor = actor_of(&principal);
            request.extensions_mut().insert(principal);
            let mut response = next.run(request).await;
            response.extensions_mut().insert(actor);
            response
        }
        Err(Refusal { error, actor }) => {
            tracing::info!(code = error.code(), "request refused: not authenticated");
            let mut response = error.into_response();
            if let Some(actor) = actor {
                response.extensions_mut().insert(actor);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn only_one_bearer_header_with_a_token_counts() {
        assert_eq!(bearer_token(&with_auth(&["Bearer abc"])), Some("abc"));
        assert_eq!(bearer_token(&with_auth(&["bearer  abc "])), Some("abc"));
        assert_eq!(bearer_token(&HeaderMap::new()), None);
        assert_eq!(bearer_token(&with_auth(&["Basic dXNlcjpwYXNz"])), None);
        assert_eq!(bearer_token(&with_auth(&["Bearer"])), None);
        assert_eq!(bearer_token(&with_auth(&["Bearer "])), None);
        assert_eq!(bearer_token(&with_auth(&["abc"])), None);
        assert_eq!(bearer_token(&with_auth(&["Bearer a", "Bearer b"])), None);
    }

    #[test]
    fn the_api_paths_are_recognised() {
        assert!(is_api_path("/api/v1"));
        assert!(is_api_path("/api/v1/me"));
        assert!(!is_api_path("/api/v1me"));
        assert!(!is_api_path("/api/v2/me"));
        assert!(!is_api_path("/admin/v1/tenants"));
        assert!(!is_api_path("/healthz"));
        assert!(needs_key("/api/v1/me"));
        assert!(!needs_key("/api/v1/openapi.json"));
        assert!(!needs_key("/healthz"));
    }

    #[tokio::test]
    async fn a_malformed_key_is_refused_without_a_lookup() {
        // A pool that cannot connect: any query would fail with an error,
        // not with invalid_format.
        let db = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(50))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let cache = KeyCache::new(db);
        let before = database_lookups();
        for token in [
            "jns_live_short",
            "nope",
            "jns_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000",
        ] {
            let refusal = cache
                .authenticate(&with_auth(&[&format!("Bearer {token}")]))
                .await
                .expect_err("refused");
            assert_eq!(refusal.error.code(), "invalid_format", "{token}");
            assert!(refusal.actor.is_none());
        }
        let refusal = cache
            .authenticate(&with_auth(&["Basic abc"]))
            .await
            .expect_err("refused");
        assert_eq!(refusal.error.code(), "missing_auth");
        assert_eq!(database_lookups(), before);
    }
}
