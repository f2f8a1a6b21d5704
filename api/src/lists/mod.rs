//! The list endpoints of the v1 resources: `GET /api/v1/customers`,
//! `/products`, `/leads` and `/orders` (read scope): one generic [`list`],
//! one module per resource for its filters (its [`Listed`] impl), sharing
//! the parameter rules ([`params`]), the query ([`query`]) and the page they
//! answer ([`Page`]). The handlers are generated with the resource's others
//! (`crate::routes::resource`).
//!
//! - **Order**: newest first by `(created_at, id)`, a total order, so pages
//!   never overlap on a fixed snapshot. Offset paging while rows are added:
//!   each new row pushes the older ones one place down, so the next page
//!   repeats the previous page's last row(s) — a client sees a row twice,
//!   never misses one (rows deleted meanwhile excepted). Deduplicate by `id`.
//! - **`pagination.total`**: every live row of the tenant matching the
//!   filters, counted in the same statement (same snapshot) as the page.
//! - **Read your writes**: before reading, a list waits, bounded by
//!   [`crate::consistency::READ_CATCH_UP_TIMEOUT`], until the projector has
//!   applied the tenant's last event; so a write acknowledged before the
//!   list began is in it, although the read models are built apart.
//! - **Parameters**: unknown, repeated, malformed or out-of-range
//!   parameters are 400 `invalid_param` naming the parameter.

use schema::events::Scope;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::resources::Resource;
use crate::state::AppState;

pub mod customers;
pub mod leads;
pub mod orders;
pub mod params;
pub mod products;
pub mod query;

use params::{Params, RawParams};
use query::{Filter, List};

/// What a resource's list takes beyond the shared `limit` and `offset`.
pub trait Listed: Resource + DeserializeOwned + Unpin {
    /// Every query parameter it accepts, `limit` and `offset` included;
    /// any other is 400 `invalid_param`.
    const PARAMS: &'static [&'static str];

    /// Its filters, from the parameters; a malformed one is 400
    /// `invalid_param` naming it.
    fn filters(params: &Params) -> ApiResult<Vec<Filter>>;
}

/// `GET /api/v1/<collection>`: a page of the tenant's live `R`, newest
/// first.
pub async fn list<R: Listed>(
    state: &AppState,
    principal: &Principal,
    raw: RawParams,
) -> ApiResult<AppJson<Page<R::View>>> {
    principal.require(Scope::Read)?;
    let params = Params::parse(raw, R::PARAMS)?;
    let list = List {
        table: R::COLLECTION,
        tenant_id: principal.tenant_id,
        filters: R::filters(&params)?,
        limit: params.limit()?,
        offset: params.offset()?,
    };
    answer::<R, R::View>(state, principal, list).await
}

/// A page of a list: `{"data": [...], "pagination": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Pagination {
    /// Every row matching the filters, on every page.
    pub total: i64,
    /// The page size asked for (default 50, at most 200).
    pub limit: i64,
    /// How many matching rows precede this page.
    pub offset: i64,
}

/// Waits for the tenant's writes to be projected, runs `list`, and renders
/// each row (the fold state `T`) as its public view `V`.
async fn answer<T, V>(
    state: &AppState,
    principal: &Principal,
    list: List,
) -> ApiResult<AppJson<Page<V>>>
where
    T: DeserializeOwned + Send + Unpin + 'static,
    V: From<T>,
{
    state
        .projected
        .catch_up_tenant(&state.db, principal.tenant_id)
        .await?;
    let found = list.fetch::<T>(&state.db).await?;
    Ok(AppJson(Page {
        data: found.rows.into_iter().map(V::from).collect(),
        pagination: Pagination {
            total: found.total,
            limit: list.limit,
            offset: list.offset,
        },
    }))
}
