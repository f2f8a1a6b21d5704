//! `POST /api/v1/orders`, and `GET`, `PATCH`, `DELETE` `/api/v1/orders/{id}`:
//! an order's fields and rules; the work is done by `crate::resources`.
//! (The list is `crate::lists::orders`.)
//!
//! Rules across fields and streams, checked on the event log:
//! - `customer_id` is a live customer of this tenant, and every item's
//!   `product_id` a live product of this tenant (a product already on the
//!   order stays acceptable after it is deleted; so does the customer);
//! - with items, `total` is their sum of `quantity × unit_price`: derived
//!   when absent, refused when it disagrees; a PATCH that removes every
//!   item (`"items": []`) clears the derived total unless it sets one;
//! - an amount (a total, or items) needs a `currency`.
//!
//! The status moves only by OrderStatusChanged, as a lead's stage does;
//! any status may follow any other.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use schema::events::{
    stream_types, EventPayload, OrderCreated, OrderDeleted, OrderItem, OrderStatus,
    OrderStatusChanged, OrderUpdated,
};
use schema::resources::{Customer, Meta, Order, Product};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::idempotency::EventIds;
use crate::resources::docs::{
    CreateErrors, DeleteErrors, FindErrors, IdempotencyHeader, IfMatchHeader, PatchErrors,
};
use crate::resources::fields::{self, Fallback, MAX_NOTES};
use crate::resources::{
    self, commands, load, Body, Field, IfMatch, Kind, Reader, Resource, Writer,
};
use crate::state::AppState;
use crate::tenancy::Data;
use crate::views::OrderView;

/// The statuses, as `OrderStatus` spells them (a test keeps the two in step).
pub const STATUSES: &[&str] = &["open", "delivered", "cancelled"];

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/orders", post(create)).route(
        "/api/v1/orders/{id}",
        get(find).patch(update).delete(delete),
    )
}

impl Resource for Order {
    const COLLECTION: &'static str = "orders";
    const STREAM_TYPE: &'static str = stream_types::ORDER;
    const FIELDS: &'static [Field] = &[
        Field::required("customer_id", Kind::Id),
        Field::defaulted("status", Kind::Choice(STATUSES), Fallback::Text("open")),
        Field::optional("currency", Kind::Currency),
        Field::defaulted("items", Kind::Items, Fallback::EmptyList),
        Field::optional("total", Kind::Money),
        Field::optional("notes", Kind::Text { max: MAX_NOTES }),
    ];
    const TRANSITION: Option<&'static str> = Some("status");
    type View = OrderView;

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn created(fields: Body) -> serde_json::Result<EventPayload> {
        serde_json::from_value::<OrderCreated>(fields.into()).map(Into::into)
    }

    fn updated(patch: Body) -> EventPayload {
        OrderUpdated { patch }.into()
    }

    fn deleted() -> EventPayload {
        OrderDeleted {}.into()
    }

    fn transitioned(&self, to: &Value) -> serde_json::Result<Option<EventPayload>> {
        let status: OrderStatus = serde_json::from_value(to.clone())?;
        Ok((status != self.status).then(|| {
            OrderStatusChanged {
                previous_status: self.status,
                status,
            }
            .into()
        }))
    }

    async fn check(
        db: &PgPool,
        tenant_id: Uuid,
        input: &mut Body,
        current: Option<&Self>,
    ) -> ApiResult<()> {
        if let Some(id) = input.get("customer_id").and_then(Value::as_str) {
            let id = Uuid::parse_str(id).map_err(|_| invalid("customer_id", "must be a UUID"))?;
            let unchanged = current.is_some_and(|c| c.customer_id == id);
            if !unchanged && load::live::<Customer>(db, tenant_id, id).await?.is_none() {
                return Err(invalid(
                    "customer_id",
                    "must be the id of a customer of this tenant that exists and is not deleted",
                ));
            }
        }

        let given: Option<Vec<OrderItem>> = input
            .get("items")
            .map(|items| serde_json::from_value(items.clone()))
            .transpose()
            .map_err(|e| {
                ApiError::Internal(anyhow::Error::new(e).context("checked items did not parse"))
            })?;
        if let Some(items) = &given {
            check_products(db, tenant_id, items, current).await?;
        }
        let items: &[OrderItem] = match (&given, current) {
            (Some(items), _) => items,
            (None, Some(current)) => &current.items,
            (None, None) => &[],
        };
        if !items.is_empty() {
            let sum = total(items).ok_or_else(|| {
                invalid("items", "the total of quantity × unit_price is too large")
            })?;
            if let Some(stated) = input.get("total").and_then(Value::as_i64) {
                if stated != sum {
                    return Err(invalid(
                        "total",
                        format!("must equal the items' sum of quantity × unit_price, {sum}, or be left out"),
                    ));
                }
            }
            input.insert("total".to_owned(), Value::from(sum));
        } else if given.is_some()
            && current.is_some_and(|c| !c.items.is_empty())
            && !input.contains_key("total")
        {
            input.insert("total".to_owned(), Value::Null);
        }

        let current = commands::serialised(current)?;
        let has_amount =
            !items.is_empty() || !fields::effective(input, current.as_ref(), "total").is_null();
        fields::require_currency(input, current.as_ref(), has_amount)
    }
}

fn invalid(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParam {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// Every item's product is a live product of the tenant, or already on the
/// order.
async fn check_products(
    db: &PgPool,
    tenant_id: Uuid,
    items: &[OrderItem],
    current: Option<&Order>,
) -> ApiResult<()> {
    let on_order: HashSet<Uuid> = current
        .map(|c| c.items.iter().map(|i| i.product_id).collect())
        .unwrap_or_default();
    let wanted: Vec<Uuid> = items
        .iter()
        .map(|i| i.product_id)
        .filter(|id| !on_order.contains(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let live = load::live_many::<Product>(db, tenant_id, &wanted).await?;
    match items
        .iter()
        .position(|i| !on_order.contains(&i.product_id) && !live.contains_key(&i.product_id))
    {
        Some(i) => Err(invalid(
            &format!("items[{i}].product_id"),
            "must be the id of a product of this tenant that exists and is not deleted",
        )),
        None => Ok(()),
    }
}

/// The sum of `quantity × unit_price`; `None` on overflow.
fn total(items: &[OrderItem]) -> Option<i64> {
    items.iter().try_fold(0i64, |sum, item| {
        item.quantity
            .checked_mul(item.unit_price)
            .and_then(|line| sum.checked_add(line))
    })
}

/// The statuses, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Status {
    Open,
    Delivered,
    Cancelled,
}

/// One line of an order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewOrderItem {
    /// A live product of this tenant.
    product_id: Uuid,
    /// An integer ≥ 1.
    quantity: i64,
    /// In minor units of the order's currency: an integer ≥ 0.
    unit_price: i64,
}

/// An order to create. Unknown fields are refused (400 `invalid_param`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewOrder {
    /// A live customer of this tenant.
    customer_id: Uuid,
    /// Default `open`.
    status: Option<Status>,
    /// ISO 4217 code in upper case, e.g. `USD`; required with a total or items.
    currency: Option<String>,
    /// At most 500; default none.
    items: Option<Vec<NewOrderItem>>,
    /// In minor units of `currency`: an integer ≥ 0. Derived from the items
    /// when they are given (a different value is refused).
    total: Option<i64>,
    /// At most 10,000 characters.
    notes: Option<String>,
}

/// A JSON merge patch of an order: absent fields are unchanged, `null`
/// clears an optional field (`customer_id`, `status` and `items` cannot be
/// cleared; send `"items": []` to remove every item). Another `status`
/// appends an OrderStatusChanged event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OrderPatch {
    customer_id: Option<Uuid>,
    status: Option<Status>,
    currency: Option<String>,
    items: Option<Vec<NewOrderItem>>,
    total: Option<i64>,
    notes: Option<String>,
}

/// Create an order.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "orders",
    params(IdempotencyHeader),
    request_body(content = NewOrder, content_type = "application/json"),
    responses(
        (status = 201, description = "The order created", body = Data<OrderView>,
         headers(("ETag" = String, description = "The version: \"1\""), ("Location" = String))),
        CreateErrors,
    )
)]
pub async fn create(
    Writer(caller): Writer,
    State(state): State<AppState>,
    ids: EventIds,
    AppJson(body): AppJson<Body>,
) -> ApiResult<Response> {
    resources::create::<Order>(&state, &caller, &ids, body).await
}

/// Get an order.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
    ),
    responses(
        (status = 200, description = "The order", body = Data<OrderView>,
         headers(("ETag" = String, description = "The version, for If-Match"))),
        FindErrors,
    )
)]
pub async fn find(
    Reader(caller): Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    resources::find::<Order>(&state, &caller, &id).await
}

/// Update an order (JSON merge patch).
#[utoipa::path(
    patch,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
        IfMatchHeader,
        IdempotencyHeader,
    ),
    request_body(content = OrderPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The order as it is now", body = Data<OrderView>,
         headers(("ETag" = String))),
        PatchErrors,
    )
)]
pub async fn update(
    Writer(caller): Writer,
    State(state): State<AppState>,
    ids: EventIds,
    if_match: IfMatch,
    Path(id): Path<String>,
    AppJson(body): AppJson<Body>,
) -> ApiResult<Response> {
    resources::update::<Order>(&state, &caller, &ids, &id, &if_match, body).await
}

/// Delete an order (soft: it leaves every list and lookup).
#[utoipa::path(
    delete,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
        IfMatchHeader,
    ),
    responses((status = 204, description = "Deleted"), DeleteErrors)
)]
pub async fn delete(
    Writer(caller): Writer,
    State(state): State<AppState>,
    ids: EventIds,
    if_match: IfMatch,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    resources::delete::<Order>(&state, &caller, &ids, &id, &if_match).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_list_is_order_status() {
        for status in STATUSES {
            let parsed: OrderStatus =
                serde_json::from_value(Value::from(*status)).expect("an OrderStatus");
            assert_eq!(serde_json::to_value(parsed).expect("serialises"), *status);
        }
    }

    #[test]
    fn the_total_is_checked_for_overflow() {
        let item = |quantity, unit_price| OrderItem {
            product_id: Uuid::nil(),
            quantity,
            unit_price,
        };
        assert_eq!(total(&[item(2, 500), item(1, 99)]), Some(1099));
        assert_eq!(total(&[]), Some(0));
        assert_eq!(total(&[item(2, i64::MAX)]), None);
        assert_eq!(total(&[item(1, i64::MAX), item(1, 1)]), None);
    }
}
