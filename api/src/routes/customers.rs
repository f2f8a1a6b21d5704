//! `POST /api/v1/customers`, and `GET`, `PATCH`, `DELETE`
//! `/api/v1/customers/{id}`: a customer's fields and rules; the work is done
//! by `crate::resources`. (The list is `crate::lists::customers`.)

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use schema::events::{
    stream_types, CustomerCreated, CustomerDeleted, CustomerUpdated, EventPayload,
};
use schema::resources::{Customer, Meta};
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::idempotency::EventIds;
use crate::resources::docs::{
    CreateErrors, DeleteErrors, FindErrors, IdempotencyHeader, IfMatchHeader, PatchErrors,
};
use crate::resources::fields::{MAX_NAME, MAX_NOTES};
use crate::resources::{self, Body, Field, IfMatch, Kind, Reader, Resource, Writer};
use crate::state::AppState;
use crate::tenancy::Data;
use crate::views::CustomerView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/customers", post(create))
        .route(
            "/api/v1/customers/{id}",
            get(find).patch(update).delete(delete),
        )
}

impl Resource for Customer {
    const COLLECTION: &'static str = "customers";
    const STREAM_TYPE: &'static str = stream_types::CUSTOMER;
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Line { max: MAX_NAME }),
        Field::optional("email", Kind::Email),
        Field::optional("phone", Kind::Phone),
        Field::optional("company", Kind::Line { max: MAX_NAME }),
        Field::optional("notes", Kind::Text { max: MAX_NOTES }),
    ];
    type View = CustomerView;

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn created(fields: Body) -> serde_json::Result<EventPayload> {
        serde_json::from_value::<CustomerCreated>(fields.into()).map(Into::into)
    }

    fn updated(patch: Body) -> EventPayload {
        CustomerUpdated { patch }.into()
    }

    fn deleted() -> EventPayload {
        CustomerDeleted {}.into()
    }
}

/// A customer to create. Unknown fields are refused (400 `invalid_param`);
/// a blank string counts as null.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewCustomer {
    /// 1 to 200 characters.
    name: String,
    /// An email address's shape, at most 254 characters.
    email: Option<String>,
    /// At most 50 characters, with digits.
    phone: Option<String>,
    /// At most 200 characters.
    company: Option<String>,
    /// At most 10,000 characters.
    notes: Option<String>,
}

/// A JSON merge patch of a customer: absent fields are unchanged, `null`
/// clears an optional field (`name` cannot be cleared).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CustomerPatch {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    company: Option<String>,
    notes: Option<String>,
}

/// Create a customer.
#[utoipa::path(
    post,
    path = "/api/v1/customers",
    tag = "customers",
    params(IdempotencyHeader),
    request_body(content = NewCustomer, content_type = "application/json"),
    responses(
        (status = 201, description = "The customer created", body = Data<CustomerView>,
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
    resources::create::<Customer>(&state, &caller, &ids, body).await
}

/// Get a customer.
#[utoipa::path(
    get,
    path = "/api/v1/customers/{id}",
    tag = "customers",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
    ),
    responses(
        (status = 200, description = "The customer", body = Data<CustomerView>,
         headers(("ETag" = String, description = "The version, for If-Match"))),
        FindErrors,
    )
)]
pub async fn find(
    Reader(caller): Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    resources::find::<Customer>(&state, &caller, &id).await
}

/// Update a customer (JSON merge patch).
#[utoipa::path(
    patch,
    path = "/api/v1/customers/{id}",
    tag = "customers",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
        IfMatchHeader,
        IdempotencyHeader,
    ),
    request_body(content = CustomerPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The customer as it is now", body = Data<CustomerView>,
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
    resources::update::<Customer>(&state, &caller, &ids, &id, &if_match, body).await
}

/// Delete a customer (soft: it leaves every list and lookup).
#[utoipa::path(
    delete,
    path = "/api/v1/customers/{id}",
    tag = "customers",
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
    resources::delete::<Customer>(&state, &caller, &ids, &id, &if_match).await
}
