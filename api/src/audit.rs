//! The audit log: one row per `/api/v1` and `/admin/v1` request, success or
//! failure, committed before the response leaves, and the queries that read
//! it back.
//!
//! **Architecture Invariant**: no response without its audit entry. The
//! middleware awaits the commit of the request's row (a group commit through
//! the process's [`crate::gate::Gate`]: one round trip and one WAL flush for
//! every request that finished meanwhile) before it hands the response to the
//! server, so a process killed with SIGKILL right after a client got its
//! answer has already made that answer's entry durable. When the write
//! fails, the client gets 503 `unavailable` instead of the answer it would
//! have had (and the failure is logged): a handler's effects may then exist
//! without an entry, but no answer the client saw lacks one.
//!
//! The log is neither an event stream nor a read model: the api writes it,
//! nothing updates it. No bodies, no keys, no `Authorization` header.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::auth::client_ip::ClientIp;
use crate::error::{ApiError, ErrorCode};
use crate::gate::Gate;
use crate::request_id;
use schema::batch::Announced;
use schema::connect::Held;

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
    gate: Gate,
}

impl AuditLog {
    /// Record through `gate`, the process's writer for the request path.
    pub fn new(gate: Gate) -> Self {
        Self { gate }
    }

    /// A request has started: its entry will follow (see [`crate::gate`]).
    pub fn announce(&self) -> Announced {
        self.gate.announce()
    }

    /// Write `entry`, the one `announced` stood for, and wait until it is
    /// committed.
    pub async fn record(&self, entry: Entry, announced: Announced) -> Result<(), AuditError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.gate.record(entry, announced)).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::TimedOut),
        }
    }
}

/// Writes a batch of entries (the entries' writer in [`crate::gate`] calls
/// this).
pub(crate) async fn write_batch(db: &Held, entries: &[Entry]) -> Vec<Result<(), AuditError>> {
    let n = entries.len();
    let columns = Columns::of(entries);
    let insert = |statement: &'static str| {
        let columns = &columns;
        async move {
            let mut args = PgArguments::default();
            columns.add_to(&mut args).map_err(sqlx::Error::Encode)?;
            let mut held = db.checkout().await?;
            sqlx::query_with(statement, args)
                .execute(held.conn())
                .await?;
            held.keep();
            Ok::<_, sqlx::Error>(())
        }
    };
    let mut result = insert(&INSERT).await;
    if let Err(e) = &result {
        // Once more, on a new connection (the failed one was dropped),
        // skipping the rows of an attempt that committed unseen.
        tracing::warn!(error = %e, entries = n, "audit log write failed; retrying once");
        result = insert(&INSERT_AGAIN).await;
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

/// The statement that writes a batch of entries: a column per array
/// (binary parameters, nothing for PostgreSQL to parse), the arrays
/// unnested in the select list, where they advance in lockstep without
/// being copied into a tuplestore first, as `from unnest(…)` would be. The
/// first attempt is a plain insert; its retry skips the rows already there
/// (`on conflict` on the log's one index, migrations 0021 and 0022;
/// see [`write_batch`]). Instructions per batch of 60 entries (BENCHMARKS.md,
/// `auth`, session 9): 4.0 million for `from unnest(…) on conflict (id)`
/// with a primary key beside the index, 2.1 million for this.
fn insert_statement(retry: bool) -> String {
    const TYPES: [&str; 15] = [
        "uuid[]",
        "uuid[]",
        "timestamptz[]",
        "uuid[]",
        "text[]",
        "text[]",
        "text[]",
        "text[]",
        "text[]",
        "int2[]",
        "text[]",
        "text[]",
        "text[]::inet[]",
        "text[]",
        "float8[]",
    ];
    let arrays: Vec<String> = TYPES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("unnest(${}::{t})", i + 1))
        .collect();
    format!(
        "insert into audit_log (id, tenant_id, at, key_id, key_label, method, route, path, \
             query, status, error_code, request_id, client_ip, user_agent, latency_ms) \
         select {}{}",
        arrays.join(", "),
        if retry {
            " on conflict (tenant_id, at, id) do nothing"
        } else {
            ""
        }
    )
}

static INSERT: LazyLock<String> = LazyLock::new(|| insert_statement(false));
static INSERT_AGAIN: LazyLock<String> = LazyLock::new(|| insert_statement(true));

/// A batch of entries as the columns of [`insert_statement`].
struct Columns<'a> {
    ids: Vec<Uuid>,
    tenant_ids: Vec<Option<Uuid>>,
    ats: Vec<DateTime<Utc>>,
    key_ids: Vec<Option<Uuid>>,
    key_labels: Vec<Option<&'a str>>,
    methods: Vec<&'a str>,
    routes: Vec<Option<&'a str>>,
    paths: Vec<&'a str>,
    queries: Vec<Option<&'a str>>,
    statuses: Vec<i16>,
    error_codes: Vec<Option<&'static str>>,
    request_ids: Vec<&'a str>,
    client_ips: Vec<Option<String>>,
    user_agents: Vec<Option<&'a str>>,
    latencies: Vec<f64>,
}

impl<'a> Columns<'a> {
    fn of(entries: &'a [Entry]) -> Self {
        fn column<'a, T>(entries: &'a [Entry], field: impl Fn(&'a Entry) -> T) -> Vec<T> {
            entries.iter().map(field).collect()
        }
        Self {
            ids: column(entries, |e| e.id),
            tenant_ids: column(entries, |e| e.tenant_id),
            ats: column(entries, |e| e.at),
            key_ids: column(entries, |e| e.key_id),
            key_labels: column(entries, |e| e.key_label.as_deref()),
            methods: column(entries, |e| e.method.as_str()),
            routes: column(entries, |e| e.route.as_deref()),
            paths: column(entries, |e| e.path.as_str()),
            queries: column(entries, |e| e.query.as_deref()),
            statuses: column(entries, |e| i16::try_from(e.status).unwrap_or(i16::MAX)),
            error_codes: column(entries, |e| e.error_code),
            request_ids: column(entries, |e| e.request_id.as_str()),
            client_ips: column(entries, |e| e.client_ip.map(|ip| ip.to_string())),
            user_agents: column(entries, |e| e.user_agent.as_deref()),
            latencies: column(entries, |e| e.latency_ms),
        }
    }

    /// Adds the next 15 parameters, in the order of [`insert_statement`].
    fn add_to(&self, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(&self.ids)?;
        args.add(&self.tenant_ids)?;
        args.add(&self.ats)?;
        args.add(&self.key_ids)?;
        args.add(&self.key_labels)?;
        args.add(&self.methods)?;
        args.add(&self.routes)?;
        args.add(&self.paths)?;
        args.add(&self.queries)?;
        args.add(&self.statuses)?;
        args.add(&self.error_codes)?;
        args.add(&self.request_ids)?;
        args.add(&self.client_ips)?;
        args.add(&self.user_agents)?;
        args.add(&self.latencies)
    }
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
    let announced = audit.announce();
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
    match audit.record(entry, announced).await {
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

    fn entry(status: u16, tenant_id: Option<Uuid>, client_ip: Option<IpAddr>) -> Entry {
        Entry {
            id: Uuid::now_v7(),
            tenant_id,
            at: Utc::now(),
            key_id: tenant_id.map(|_| Uuid::now_v7()),
            key_label: tenant_id.map(|_| "ci key".to_owned()),
            method: "GET".to_owned(),
            route: tenant_id.map(|_| "/api/v1/leads/{id}".to_owned()),
            path: "/api/v1/leads/42".to_owned(),
            query: client_ip.map(|_| "limit=5".to_owned()),
            status,
            error_code: (status >= 400).then_some("invalid_key"),
            request_id: format!("req-{status}"),
            client_ip,
            user_agent: client_ip.map(|_| "curl/8.5".to_owned()),
            latency_ms: f64::from(status) / 100.0,
        }
    }

    fn written(e: &Entry) -> Record {
        Record {
            id: e.id,
            tenant_id: e.tenant_id,
            // PostgreSQL keeps microseconds.
            at: DateTime::from_timestamp_micros(e.at.timestamp_micros()).expect("a time"),
            key_id: e.key_id,
            key_label: e.key_label.clone(),
            method: e.method.clone(),
            route: e.route.clone(),
            path: e.path.clone(),
            query: e.query.clone(),
            status: i16::try_from(e.status).expect("a status"),
            error_code: e.error_code.map(str::to_owned),
            request_id: e.request_id.clone(),
            client_ip: e.client_ip.map(|ip| ip.to_string()),
            user_agent: e.user_agent.clone(),
            latency_ms: e.latency_ms,
        }
    }

    async fn read_back(db: &PgPool) -> Vec<Record> {
        sqlx::query_as::<_, Record>(
            "select id, tenant_id, at, key_id, key_label, method, route, path, query, status, \
             error_code, request_id, host(client_ip) as client_ip, user_agent, latency_ms \
             from audit_log order by id",
        )
        .fetch_all(db)
        .await
        .expect("the log reads")
    }

    async fn backend_pid(held: &Held) -> i32 {
        let mut conn = held.checkout().await.expect("a connection");
        let pid = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(conn.conn())
            .await
            .expect("a pid");
        conn.keep();
        pid
    }

    /// Every column lands in its place, nulls included; a batch written
    /// again (a retry after a commit whose answer was lost) fails its plain
    /// insert, and its retry adds nothing.
    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_batch_lands_column_by_column_and_once_however_often_it_is_written(db: PgPool) {
        let tenant = Some(Uuid::now_v7());
        let entries = vec![
            entry(
                200,
                tenant,
                Some("203.0.113.7".parse().expect("an address")),
            ),
            entry(401, None, None),
            entry(
                429,
                tenant,
                Some("2001:db8::1".parse().expect("an address")),
            ),
        ];
        let mut expected: Vec<Record> = entries.iter().map(written).collect();
        expected.sort_by_key(|r| r.id);
        let held = Held::new((*db.connect_options()).clone());

        let first = write_batch(&held, &entries).await;
        assert!(first.iter().all(Result::is_ok), "{first:?}");
        let rows = read_back(&db).await;
        assert_eq!(
            serde_json::to_value(&rows).expect("json"),
            serde_json::to_value(&expected).expect("json")
        );

        // Written again: the plain insert conflicts, its connection is
        // dropped, and the retry (on a new one) adds nothing.
        let before = backend_pid(&held).await;
        let again = write_batch(&held, &entries).await;
        assert!(again.iter().all(Result::is_ok), "{again:?}");
        assert_eq!(read_back(&db).await.len(), entries.len());
        assert_ne!(
            backend_pid(&held).await,
            before,
            "the first attempt did not fail: it was not a plain insert"
        );
        held.close().await;
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("ééé", 2), "éé");
    }
}
