//! `POST /api/v1/products`, and `GET`, `PATCH`, `DELETE`
//! `/api/v1/products/{id}`: a product's fields and rules; the work is done
//! by `crate::resources`. (The list is `crate::lists::products`.)

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use schema::events::{stream_types, EventPayload, ProductCreated, ProductDeleted, ProductUpdated};
use schema::resources::{Meta, Product};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::idempotency::EventIds;
use crate::resources::docs::{
    CreateErrors, DeleteErrors, FindErrors, IdempotencyHeader, IfMatchHeader, PatchErrors,
};
use crate::resources::fields::{self, Fallback, MAX_NAME, MAX_NOTES};
use crate::resources::{self, commands, Body, Field, IfMatch, Kind, Reader, Resource, Writer};
use crate::state::AppState;
use crate::tenancy::Data;
use crate::views::ProductView;

/// The longest SKU.
pub const MAX_SKU: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/products", post(create)).route(
        "/api/v1/products/{id}",
        get(find).patch(update).delete(delete),
    )
}

impl Resource for Product {
    const COLLECTION: &'static str = "products";
    const STREAM_TYPE: &'static str = stream_types::PRODUCT;
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Line { max: MAX_NAME }),
        Field::optional("sku", Kind::Line { max: MAX_SKU }),
        Field::optional("description", Kind::Text { max: MAX_NOTES }),
        Field::optional("price", Kind::Money),
        Field::optional("currency", Kind::Currency),
        Field::defaulted("active", Kind::Flag, Fallback::Bool(true)),
    ];
    type View = ProductView;

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn created(fields: Body) -> serde_json::Result<EventPayload> {
        serde_json::from_value::<ProductCreated>(fields.into()).map(Into::into)
    }

    fn updated(patch: Body) -> EventPayload {
        ProductUpdated { patch }.into()
    }

    fn deleted() -> EventPayload {
        ProductDeleted {}.into()
    }

    /// A price needs its currency.
    async fn check(
        _db: &PgPool,
        _tenant_id: Uuid,
        input: &mut Body,
        current: Option<&Self>,
    ) -> ApiResult<()> {
        let current = commands::serialised(current)?;
        let priced = !fields::effective(input, current.as_ref(), "price").is_null();
        fields::require_currency(input, current.as_ref(), priced)
    }
}

/// A product to create. Unknown fields are refused (400 `invalid_param`);
/// a blank string counts as null.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewProduct {
    /// 1 to 200 characters.
    name: String,
    /// At most 100 characters.
    sku: Option<String>,
    /// At most 10,000 characters.
    description: Option<String>,
    /// In minor units of `currency` (cents for USD): an integer ≥ 0, never a
    /// fraction. Requires `currency`.
    price: Option<i64>,
    /// ISO 4217 code in upper case, e.g. `USD`.
    currency: Option<String>,
    /// Default true.
    active: Option<bool>,
}

/// A JSON merge patch of a product: absent fields are unchanged, `null`
/// clears an optional field (`name` and `active` cannot be cleared; nor can
/// `currency` while there is a price).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProductPatch {
    name: Option<String>,
    sku: Option<String>,
    description: Option<String>,
    price: Option<i64>,
    currency: Option<String>,
    active: Option<bool>,
}

/// Create a product.
#[utoipa::path(
    post,
    path = "/api/v1/products",
    tag = "products",
    params(IdempotencyHeader),
    request_body(content = NewProduct, content_type = "application/json"),
    responses(
        (status = 201, description = "The product created", body = Data<ProductView>,
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
    resources::create::<Product>(&state, &caller, &ids, body).await
}

/// Get a product.
#[utoipa::path(
    get,
    path = "/api/v1/products/{id}",
    tag = "products",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
    ),
    responses(
        (status = 200, description = "The product", body = Data<ProductView>,
         headers(("ETag" = String, description = "The version, for If-Match"))),
        FindErrors,
    )
)]
pub async fn find(
    Reader(caller): Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    resources::find::<Product>(&state, &caller, &id).await
}

/// Update a product (JSON merge patch).
#[utoipa::path(
    patch,
    path = "/api/v1/products/{id}",
    tag = "products",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
        IfMatchHeader,
        IdempotencyHeader,
    ),
    request_body(content = ProductPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The product as it is now", body = Data<ProductView>,
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
    resources::update::<Product>(&state, &caller, &ids, &id, &if_match, body).await
}

/// Delete a product (soft: it leaves every list and lookup).
#[utoipa::path(
    delete,
    path = "/api/v1/products/{id}",
    tag = "products",
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
    resources::delete::<Product>(&state, &caller, &ids, &id, &if_match).await
}
