//! `GET /api/v1/orders`: the tenant's orders, newest first; filtered by
//! `status`, `customer_id` and `since` (created on or after that UTC date).

use schema::events::OrderStatus;
use schema::resources::Order;
use utoipa::IntoParams;

use super::params::Params;
use super::query::Filter;
use super::Listed;
use crate::error::ApiResult;

const STATUSES: &str = "open, delivered, cancelled";

impl Listed for Order {
    const PARAMS: &'static [&'static str] = &["status", "customer_id", "since", "limit", "offset"];

    fn filters(params: &Params) -> ApiResult<Vec<Filter>> {
        let mut filters = Vec::new();
        if let Some(value) = params.one_of::<OrderStatus>("status", STATUSES)? {
            filters.push(Filter::Text {
                column: "status",
                value,
            });
        }
        if let Some(value) = params.uuid("customer_id")? {
            filters.push(Filter::Uuid {
                column: "customer_id",
                value,
            });
        }
        if let Some(at) = params.date("since")? {
            filters.push(Filter::Since {
                column: "created_at",
                at,
            });
        }
        Ok(filters)
    }
}

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
