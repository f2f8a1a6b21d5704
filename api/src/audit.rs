//! The audit log: one row per `/api/v1` and `/admin/v1` request, success or
//! failure, committed before the response leaves, and the queries that read
//! it back.
//!
//! **Architecture Invariant**: no response without its audit entry. The
//! middleware awaits the commit of the request's row (a group commit through
//! one [`Batcher`] per process: one round trip and one WAL flush for every
//! request that finished meanwhile) before it hands the response to the
//! server, so a process killed with SIGKILL right after a client got its
//! answer has already made that answer's entry durable. When the write
//! fails, the client gets 503 `unavailable` instead of the answer it would
//! have had (and the failure is logged): a handler's effects may then exist
//! without an entry, but no answer the client saw lacks one.
//!
//! The log is neither an event stream nor a read model: the api writes it,
//! nothing updates it. No bodies, no keys, no `Authorization` header.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schema::batch::Batcher;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::auth::client_ip::ClientIp;
use crate::error::{ApiError, ErrorCode};
use crate::request_id;

/// Entries one group commit carries at most.
const MAX_BATCH: usize = 1024;
/// Batches in flight at once (each on its own connection). One: a second
/// batch in flight gathers while the first runs, which saves a waiting
/// request half a round trip but halves the batches, and PostgreSQL's CPU
/// goes mostly to the per-batch work. `scripts/bench auth` measured, with
/// two in flight, 6,424 `/api/v1/me` req/s at 128 µs of PostgreSQL CPU per
/// request; with one, 8,554 req/s at 71 µs (BENCHMARKS.md).
const IN_FLIGHT: usize = 1;
/// How long a request waits for its entry to commit before it is answered
/// 503 instead: long enough to ride out a WAL flush stalled behind a
/// checkpoint, short enough that a hung database does not hold requests.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest user agent kept, in characters.
pub const MAX_USER_AGENT: usize = 512;
/// The longest path and query kept, in characters (a request line can be
/// longer; the log need not be).
const MAX_TARGET: usize = 2048;

/// Whom a request acted as, put in the response's extensions by the
/// authentication middleware once it has found the key (also when it then
/// refuses a revoked or expired one), so that the entry lands in the key's
/// tenant's log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub key_label: String,
}

/// One row of `audit_log`, as written.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub at: DateTime<Utc>,
    pub key_id: Option<Uuid>,
    pub key_label: Option<String>,
    pub method: String,
    pub route: Option<String>,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log could not be written: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("the audit log's writer has stopped")]
    Stopped,
    #[error("the audit log did not commit within {} s", WRITE_TIMEOUT.as_secs())]
    TimedOut,
}

/// This process's audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    writer: Batcher<Entry, Result<(), AuditError>>,
    /// The writer's own connection, closed by [`AuditLog::close`].
    db: PgPool,
}

impl AuditLog {
    /// Start the group-commit task on the current runtime, on a connection
    /// of its own.
    pub fn spawn(db: &PgPool) -> Self {
        let db = crate::ratelimit::own_connections(db, IN_FLIGHT as u32);
        let writer = Batcher::spawn_pipelined(IN_FLIGHT, MAX_BATCH, MAX_BATCH, |_: &Entry| 1, {
            let db = db.clone();
            move |entries: Vec<Entry>| write_batch(db.clone(), entries)
        });
        Self { writer, db }
    }

    /// Close the writer's connection (at shutdown, once no request is left).
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Write `entry` and wait until it is committed.
    pub async fn record(&self, entry: Entry) -> Result<(), AuditError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.submit(entry)).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::TimedOut),
        }
    }
}

async fn write_batch(db: PgPool, entries: Vec<Entry>) -> Vec<Result<(), AuditError>> {
    let n = entries.len();
    let mut result = insert(&db, &entries).await;
    if let Err(e) = &result {
        // Once more: a connection lost mid-batch is replaced by the pool.
        // `on conflict do nothing` makes a retry after an unseen commit harmless.
        tracing::warn!(error = %e, entries = n, "audit log write failed; retrying once");
        result = insert(&db, &entries).await;
    }
    match result {
        Ok(()) => vec![Ok(()); n],
        Err(e) => {
            tracing::error!(error = %e, entries = n, "audit log write failed");
            let e = Arc::new(e);
            (0..n)
                .map(|_| Err(AuditError::Database(e.clone())))
                .collect()
        }
    }
}

/// Every entry in one statement (and one commit), a column per array:
/// binary parameters, nothing for PostgreSQL to parse.
async fn insert(db: &PgPool, entries: &[Entry]) -> Result<(), sqlx::Error> {
    fn column<'a, T>(entries: &'a [Entry], field: impl Fn(&'a Entry) -> T) -> Vec<T> {
        entries.iter().map(field).collect()
    }
    sqlx::query(
        "insert into audit_log (id, tenant_id, at, key_id, key_label, method, route, path, \
             query, status, error_code, request_id, client_ip, user_agent, latency_ms) \
         select * from unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::uuid[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::int2[], $11::text[], $12::text[], \
             $13::text[]::inet[], $14::text[], $15::float8[]) \
         on conflict (id) do nothing",
    )
    .bind(column(entries, |e| e.id))
    .bind(column(entries, |e| e.tenant_id))
    .bind(column(entries, |e| e.at))
    .bind(column(entries, |e| e.key_id))
    .bind(column(entries, |e| e.key_label.as_deref()))
    .bind(column(entries, |e| e.method.as_str()))
    .bind(column(entries, |e| e.route.as_deref()))
    .bind(column(entries, |e| e.path.as_str()))
    .bind(column(entries, |e| e.query.as_deref()))
    .bind(column(entries, |e| i16::try_from(e.status).unwrap_or(i16::MAX)))
    .bind(column(entries, |e| e.error_code))
    .bind(column(entries, |e| e.request_id.as_str()))
    .bind(column(entries, |e| e.client_ip.map(|ip| ip.to_string())))
    .bind(column(entries, |e| e.user_agent.as_deref()))
    .bind(column(entries, |e| e.latency_ms))
    .execute(db)
    .await?;
    Ok(())
}

/// Requests that are audited: the tenant API and the operator API (health
/// checks are not).
pub fn audited(path: &str) -> bool {
    under(path, "/api/v1") || under(path, "/admin/v1")
}

fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The tenant an `/admin/v1/tenants/{tenant_id}/…` request is about.
pub fn tenant_in_admin_path(path: &str) -> Option<Uuid> {
    path.strip_prefix("/admin/v1/tenants/")?
        .split('/')
        .next()
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// Writes the entry of every audited request before its response is sent;
/// answers 503 `unavailable` instead when that fails.
pub async fn middleware(State(audit): State<AuditLog>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !audited(path) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let at = Utc::now();
    let admin_tenant = tenant_in_admin_path(path);
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let path = truncate(path, MAX_TARGET);
    let query = request.uri().query().map(|q| truncate(q, MAX_TARGET));
    let client_ip = request.extensions().get::<ClientIp>().map(|c| c.0);
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .map(|v| truncate(&String::from_utf8_lossy(v.as_bytes()), MAX_USER_AGENT));

    let response = next.run(request).await;

    let actor = response.extensions().get::<Actor>();
    let entry = Entry {
        id: Uuid::now_v7(),
        tenant_id: actor.map(|a| a.tenant_id).or(admin_tenant),
        at,
        key_id: actor.map(|a| a.key_id),
        key_label: actor.map(|a| a.key_label.clone()),
        method,
        route,
        path,
        query,
        status: response.status().as_u16(),
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0),
        request_id: request_id::current()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        client_ip,
        user_agent,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    match audit.record(entry).await {
        Ok(()) => response,
        Err(e) => {
            tracing::error!(
                error = %e,
                status = response.status().as_u16(),
                "audit entry not written: answering 503 instead of the response"
            );
            ApiError::Unavailable.into_response()
        }
    }
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

// ---- reading ---------------------------------------------------------------

/// Whose entries a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Tenant(Uuid),
    /// Requests that could not be tied to any tenant.
    Untenanted,
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// The filters of the audit-log endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub key_id: Option<Uuid>,
    pub status: Option<i16>,
    /// Entries at or after.
    pub since: Option<DateTime<Utc>>,
    /// Entries strictly before.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            key_id: None,
            status: None,
            since: None,
            until: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

/// One entry as the endpoints show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct Record {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub at: DateTime<Utc>,
    pub key_id: Option<Uuid>,
    pub key_label: Option<String>,
    pub method: String,
    /// The route's template (`/api/v1/leads/{id}`); `null` when no route
    /// matched.
    pub route: Option<String>,
    pub path: String,
    pub query: Option<String>,
    pub status: i16,
    /// The error envelope's `code`, for an error.
    pub error_code: Option<String>,
    pub request_id: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AuditLogPage)]
pub struct Page {
    pub data: Vec<Record>,
    /// The same shape as a resource list's.
    #[schema(value_type = crate::lists::Pagination)]
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pagination {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// `owner`'s entries matching `filter`, newest first, with the total count.
pub async fn list(db: &PgPool, owner: Owner, filter: &Filter) -> Result<Page, sqlx::Error> {
    let mut select = QueryBuilder::<Postgres>::new(
        "select id, tenant_id, at, key_id, key_label, method, route, path, query, status, \
         error_code, request_id, host(client_ip) as client_ip, user_agent, latency_ms \
         from audit_log",
    );
    conditions(&mut select, owner, filter);
    select
        .push(" order by at desc, id desc limit ")
        .push_bind(filter.limit)
        .push(" offset ")
        .push_bind(filter.offset);
    let data = select.build_query_as::<Record>().fetch_all(db).await?;

    let mut count = QueryBuilder::<Postgres>::new("select count(*) from audit_log");
    conditions(&mut count, owner, filter);
    let total: i64 = count.build_query_scalar().fetch_one(db).await?;
    Ok(Page {
        data,
        pagination: Pagination {
            total,
            limit: filter.limit,
            offset: filter.offset,
        },
    })
}

fn conditions(q: &mut QueryBuilder<'_, Postgres>, owner: Owner, filter: &Filter) {
    match owner {
        Owner::Tenant(id) => q.push(" where tenant_id = ").push_bind(id),
        Owner::Untenanted => q.push(" where tenant_id is null"),
    };
    if let Some(key_id) = filter.key_id {
        q.push(" and key_id = ").push_bind(key_id);
    }
    if let Some(status) = filter.status {
        q.push(" and status = ").push_bind(status);
    }
    if let Some(since) = filter.since {
        q.push(" and at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        q.push(" and at < ").push_bind(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_apis_are_audited() {
        assert!(audited("/api/v1"));
        assert!(audited("/api/v1/keys"));
        assert!(audited("/admin/v1/tenants"));
        assert!(!audited("/api/v10/keys"));
        assert!(!audited("/healthz"));
        assert!(!audited("/readyz"));
        assert!(!audited("/"));
    }

    #[test]
    fn the_tenant_of_an_admin_path_is_found() {
        let id = Uuid::now_v7();
        assert_eq!(
            tenant_in_admin_path(&format!("/admin/v1/tenants/{id}/keys")),
            Some(id)
        );
        assert_eq!(
            tenant_in_admin_path(&format!("/admin/v1/tenants/{id}")),
            Some(id)
        );
        assert_eq!(tenant_in_admin_path("/admin/v1/tenants"), None);
        assert_eq!(tenant_in_admin_path("/admin/v1/tenants/nope/keys"), None);
        assert_eq!(tenant_in_admin_path("/admin/v1/audit-log"), None);
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("ééé", 2), "éé");
    }
}
