//! `GET /api/v1/customers`: the tenant's customers, newest first; `q` is a
//! case-insensitive prefix of the name or the email.

use axum::extract::State;
use schema::events::Scope;
use schema::resources::Customer;
use utoipa::IntoParams;

use super::params::{Params, RawParams};
use super::query::{Filter, List};
use super::{answer, Page};
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::state::AppState;
use crate::views::CustomerView;

const KNOWN: &[&str] = &["q", "limit", "offset"];

/// The query parameters (read by [`Params`]; this type documents them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CustomersQuery {
    /// Case-insensitive prefix of the name or the email; `%`, `_`, `'` and
    /// `\` match themselves. Empty: no filter. At most 200 characters.
    q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Matching rows to skip, 0 or more (default 0).
    offset: Option<i64>,
}

/// List customers.
#[utoipa::path(
    get,
    path = "/api/v1/customers",
    tag = "customers",
    params(CustomersQuery),
    responses(
        (status = 200, description = "A page of customers, newest first", body = Page<CustomerView>),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated, malformed or out of range; the message names it"),
        (status = 401, description = "No valid API key"),
        (status = 403, description = "`missing_scope`: the key lacks the read scope"),
    )
)]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    raw: RawParams,
) -> ApiResult<AppJson<Page<CustomerView>>> {
    principal.require(Scope::Read)?;
    let params = Params::parse(raw, KNOWN)?;
    let mut filters = Vec::new();
    if let Some(prefix) = params.q()? {
        filters.push(Filter::Prefix {
            columns: &["name", "email"],
            prefix,
        });
    }
    let list = List {
        table: "customers",
        tenant_id: principal.tenant_id,
        filters,
        limit: params.limit()?,
        offset: params.offset()?,
    };
    answer::<Customer, CustomerView>(&state, &principal, list).await
}
