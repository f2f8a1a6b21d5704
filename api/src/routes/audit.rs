//! The audit log's read endpoints: `GET /api/v1/audit-log` for a tenant's
//! `admin` key, and for the operator `GET /admin/v1/tenants/{tenant_id}/audit-log`
//! and `GET /admin/v1/audit-log` (the requests no tenant could be tied to).
//! Filters `key_id`, `status`, `since`, `until` (RFC 3339; `since`
//! inclusive, `until` exclusive), `limit` (default 50, at most 200) and
//! `offset`; newest first.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use schema::events::Scope;
use uuid::Uuid;

use crate::audit::{self, Filter, Owner, Page, MAX_LIMIT};
use crate::auth::admin::{self, Operator};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::extract::AppJson;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit-log", get(tenant_log))
        .route(
            "/admin/v1/tenants/{tenant_id}/audit-log",
            get(operator_tenant_log).fallback(admin::method_not_allowed),
        )
        .route(
            "/admin/v1/audit-log",
            get(operator_untenanted_log).fallback(admin::method_not_allowed),
        )
}

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query parameters (read by `parse_filter`; this type documents them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditQuery {
    /// Only the requests of this key.
    key_id: Option<Uuid>,
    /// Only responses with this HTTP status, 100 to 599.
    #[param(minimum = 100, maximum = 599)]
    status: Option<i16>,
    /// RFC 3339: entries at or after this time.
    since: Option<DateTime<Utc>>,
    /// RFC 3339: entries strictly before this time.
    until: Option<DateTime<Utc>>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Matching entries to skip, 0 or more (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// The tenant's audit log, newest first (`admin` scope): one entry per
/// request, success or failure, without bodies or keys.
#[utoipa::path(
    get,
    path = "/api/v1/audit-log",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries, newest first", body = Page),
        (status = 400, description = "`invalid_param`: a parameter is unknown, malformed or out of range; the message names it.", body = ErrorResponse),
        (status = 403, description = "`missing_scope`: the key lacks the admin scope.", body = ErrorResponse),
    )
)]
pub async fn tenant_log(
    principal: Principal,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<AppJson<Page>> {
    principal.require(Scope::Admin)?;
    let filter = parse_filter(params)?;
    let page = audit::list(&state.db, Owner::Tenant(principal.tenant_id), &filter).await?;
    Ok(AppJson(page))
}

/// A tenant's audit log, newest first. An unknown tenant has no entries
/// (requests about it may still have been logged under its id, which is
/// what the operator wants to see).
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{tenant_id}/audit-log",
    tag = "operator",
    params(("tenant_id" = Uuid, Path, description = "The tenant"), AuditQuery),
    responses(
        (status = 200, description = "A page of entries, newest first", body = Page),
        (status = 400, description = "`invalid_param`: a parameter is unknown, malformed or out of range; the message names it.", body = ErrorResponse),
        (status = 404, description = "`not_found`: `tenant_id` is not a UUID.", body = ErrorResponse),
    )
)]
pub async fn operator_tenant_log(
    _: Operator,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    params: Params,
) -> ApiResult<AppJson<Page>> {
    // Not a UUID: names nothing, 404 like an unknown id.
    let tenant_id = Uuid::parse_str(&tenant_id).map_err(|_| ApiError::NotFound)?;
    let filter = parse_filter(params)?;
    let page = audit::list(&state.db, Owner::Tenant(tenant_id), &filter).await?;
    Ok(AppJson(page))
}

/// The requests that could not be tied to any tenant (no valid key, an
/// unknown key, operator requests about no tenant), newest first.
#[utoipa::path(
    get,
    path = "/admin/v1/audit-log",
    tag = "operator",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries, newest first", body = Page),
        (status = 400, description = "`invalid_param`: a parameter is unknown, malformed or out of range; the message names it.", body = ErrorResponse),
    )
)]
pub async fn operator_untenanted_log(
    _: Operator,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<AppJson<Page>> {
    let filter = parse_filter(params)?;
    let page = audit::list(&state.db, Owner::Untenanted, &filter).await?;
    Ok(AppJson(page))
}

fn invalid(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParam {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// The query string as a [`Filter`]; each bad or unknown parameter is an
/// `invalid_param` naming it.
fn parse_filter(params: Params) -> ApiResult<Filter> {
    let Query(pairs) = params.map_err(|e| invalid("query", e.body_text()))?;
    let mut filter = Filter::default();
    for (name, value) in pairs {
        match name.as_str() {
            "key_id" => {
                filter.key_id =
                    Some(Uuid::parse_str(&value).map_err(|_| invalid("key_id", "must be a UUID"))?);
            }
            "status" => {
                filter.status = Some(
                    value
                        .parse::<i16>()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| invalid("status", "must be an HTTP status, 100 to 599"))?,
                );
            }
            "since" => filter.since = Some(parse_time("since", &value)?),
            "until" => filter.until = Some(parse_time("until", &value)?),
            "limit" => {
                filter.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| invalid("limit", format!("must be 1 to {MAX_LIMIT}")))?;
            }
            "offset" => {
                filter.offset = value
                    .parse::<i64>()
                    .ok()
                    .filter(|o| *o >= 0)
                    .ok_or_else(|| invalid("offset", "must be 0 or more"))?;
            }
            other => {
                return Err(invalid(
                    other,
                    "unknown parameter; use key_id, status, since, until, limit, offset",
                ))
            }
        }
    }
    Ok(filter)
}

fn parse_time(name: &str, value: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| invalid(name, "must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pairs: &[(&str, &str)]) -> ApiResult<Filter> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_filter(Ok(Query(pairs)))
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        match filter(pairs) {
            Err(ApiError::InvalidParam { name, .. }) => name,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_are_fifty_from_the_newest() {
        assert_eq!(filter(&[]).expect("valid"), Filter::default());
        assert_eq!(Filter::default().limit, 50);
    }

    #[test]
    fn every_filter_is_read() {
        let key = Uuid::now_v7();
        let f = filter(&[
            ("key_id", &key.to_string()),
            ("status", "429"),
            ("since", "2030-01-01T00:00:00Z"),
            ("until", "2030-01-02T00:00:00+02:00"),
            ("limit", "200"),
            ("offset", "10"),
        ])
        .expect("valid");
        assert_eq!(f.key_id, Some(key));
        assert_eq!(f.status, Some(429));
        assert_eq!(
            f.since.map(|t| t.to_rfc3339()).as_deref(),
            Some("2030-01-01T00:00:00+00:00")
        );
        assert_eq!(
            f.until.map(|t| t.to_rfc3339()).as_deref(),
            Some("2030-01-01T22:00:00+00:00")
        );
        assert_eq!((f.limit, f.offset), (200, 10));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        assert_eq!(refused(&[("key_id", "x")]), "key_id");
        assert_eq!(refused(&[("status", "99")]), "status");
        assert_eq!(refused(&[("since", "yesterday")]), "since");
        assert_eq!(refused(&[("until", "2030-01-01")]), "until");
        assert_eq!(refused(&[("limit", "0")]), "limit");
        assert_eq!(refused(&[("limit", "201")]), "limit");
        assert_eq!(refused(&[("offset", "-1")]), "offset");
        assert_eq!(refused(&[("tenant_id", "x")]), "tenant_id");
    }
}
