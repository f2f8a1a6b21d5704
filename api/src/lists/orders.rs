//! `GET /api/v1/orders`: the tenant's orders, newest first; filtered by
//! `status`, `customer_id` and `since` (created on or after that UTC date).

use axum::extract::State;
use schema::events::{OrderStatus, Scope};
use schema::resources::Order;
use utoipa::IntoParams;

use super::params::{Params, RawParams};
use super::query::{Filter, List};
use super::{answer, Page};
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::state::AppState;
use crate::views::OrderView;

const KNOWN: &[&str] = &["status", "customer_id", "since", "limit", "offset"];
const STATUSES: &str = "open, delivered, cancelled";

/// The query parameters (read by [`Params`]; this type documents them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OrdersQuery {
    /// Only orders in this status: `open`, `delivered` or `cancelled`.
    status: Option<String>,
    /// Only this customer's orders.
    customer_id: Option<uuid::Uuid>,
    /// `YYYY-MM-DD`: only orders created on or after that day (00:00 UTC).
    since: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Matching rows to skip, 0 or more (default 0).
    offset: Option<i64>,
}

/// List orders.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "orders",
    params(OrdersQuery),
    responses(
        (status = 200, description = "A page of orders, newest first", body = Page<OrderView>),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated, malformed or out of range; the message names it"),
        (status = 401, description = "No valid API key"),
        (status = 403, description = "`missing_scope`: the key lacks the read scope"),
    )
)]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    raw: RawParams,
) -> ApiResult<AppJson<Page<OrderView>>> {
    principal.require(Scope::Read)?;
    let params = Params::parse(raw, KNOWN)?;
    let mut filters = Vec::new();
    if let Some(status) = params.one_of::<OrderStatus>("status", STATUSES)? {
        filters.push(Filter::Text {
            column: "status",
            value: status,
        });
    }
    if let Some(customer_id) = params.uuid("customer_id")? {
        filters.push(Filter::Uuid {
            column: "customer_id",
            value: customer_id,
        });
    }
    if let Some(at) = params.date("since")? {
        filters.push(Filter::Since {
            column: "created_at",
            at,
        });
    }
    let list = List {
        table: "orders",
        tenant_id: principal.tenant_id,
        filters,
        limit: params.limit()?,
        offset: params.offset()?,
    };
    answer::<Order, OrderView>(&state, &principal, list).await
}
