//! `GET /api/v1/products`: the tenant's products, newest first; `q` is a
//! case-insensitive prefix of the name or the SKU.

use axum::extract::State;
use schema::events::Scope;
use schema::resources::Product;
use utoipa::IntoParams;

use super::params::{Params, RawParams};
use super::query::{Filter, List};
use super::{answer, Page};
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::state::AppState;
use crate::views::ProductView;

const KNOWN: &[&str] = &["q", "limit", "offset"];

/// The query parameters (read by [`Params`]; this type documents them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ProductsQuery {
    /// Case-insensitive prefix of the name or the SKU; `%`, `_`, `'` and
    /// `\` match themselves. Empty: no filter. At most 200 characters.
    q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Matching rows to skip, 0 or more (default 0).
    offset: Option<i64>,
}

/// List products.
#[utoipa::path(
    get,
    path = "/api/v1/products",
    tag = "products",
    params(ProductsQuery),
    responses(
        (status = 200, description = "A page of products, newest first", body = Page<ProductView>),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated, malformed or out of range; the message names it"),
        (status = 401, description = "No valid API key"),
        (status = 403, description = "`missing_scope`: the key lacks the read scope"),
    )
)]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    raw: RawParams,
) -> ApiResult<AppJson<Page<ProductView>>> {
    principal.require(Scope::Read)?;
    let params = Params::parse(raw, KNOWN)?;
    let mut filters = Vec::new();
    if let Some(prefix) = params.q()? {
        filters.push(Filter::Prefix {
            columns: &["name", "sku"],
            prefix,
        });
    }
    let list = List {
        table: "products",
        tenant_id: principal.tenant_id,
        filters,
        limit: params.limit()?,
        offset: params.offset()?,
    };
    answer::<Product, ProductView>(&state, &principal, list).await
}
