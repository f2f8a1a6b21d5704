//! `/api/v1/webhooks`: subscribe, list, show, change, unsubscribe, rotate
//! the signing secret, request a test delivery, and the delivery log with
//! its retry and recover commands. Thin handlers over `crate::webhooks`.
//!
//! Not under the `Idempotency-Key` middleware: it stores responses to
//! replay them, and the create and rotate responses carry a secret that
//! must never be stored in plaintext.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use schema::webhook_endpoints::WebhookEndpoint;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::lists::params::RawParams;
use crate::lists::query::List;
use crate::lists::{Page, Pagination};
use crate::resources::docs::{CreateErrors, DeleteErrors, FindErrors, IfMatchHeader, PatchErrors};
use crate::resources::etag::etag;
use crate::resources::{Body, IfMatch, Reader, Writer};
use crate::state::AppState;
use crate::tenancy::Data;
use crate::webhooks::deliveries::{self, AttemptView, DeliveryView, Recovered};
use crate::webhooks::{self, CreatedWebhook, RotatedSecret, TestRequested, WebhookView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/webhooks", post(create).get(list))
        .route(
            "/api/v1/webhooks/{id}",
            get(find).patch(update).delete(delete),
        )
        .route("/api/v1/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/api/v1/webhooks/{id}/test", post(test))
        .route("/api/v1/webhooks/{id}/deliveries", get(list_deliveries))
        .route(
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(retry_delivery),
        )
        .route("/api/v1/webhooks/{id}/recover", post(recover))
}

/// A subscription to create: `{url, events, description?}`, or Zapier's
/// REST Hooks `{target_url, event}`. Unknown fields are refused.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewWebhook {
    /// An absolute `https://` (or `http://`) URL, at most 2,048 characters,
    /// whose host is on the public internet.
    url: Option<String>,
    /// One or more of `lead.created`, `lead.updated`, `lead.stage_changed`,
    /// `lead.deleted`, `customer.created`, `customer.updated`,
    /// `order.created`, `order.status_changed`.
    events: Option<Vec<String>>,
    /// At most 1,000 characters.
    description: Option<String>,
    /// Zapier: the URL, instead of `url`.
    target_url: Option<String>,
    /// Zapier: one event type, instead of `events`.
    event: Option<String>,
}

/// A merge patch of a subscription: absent fields are unchanged.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookPatch {
    url: Option<String>,
    events: Option<Vec<String>>,
    /// `true` resumes deliveries (also after the dispatcher disabled the
    /// endpoint); `false` pauses them.
    enabled: Option<bool>,
    /// `null` clears it.
    description: Option<String>,
}

/// Paging of a list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Rows to skip, 0 or more (default 0).
    offset: Option<i64>,
}

/// The start of the window of `recover`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RecoverQuery {
    /// RFC 3339: failed deliveries created at or after this time are sent
    /// again.
    since: String,
}

fn with_etag(status: StatusCode, endpoint: WebhookEndpoint) -> Response {
    let version = endpoint.meta.version;
    let mut response = (
        status,
        AppJson(Data {
            data: WebhookView::from(endpoint),
        }),
    )
        .into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    response
}

/// Subscribe an endpoint to event types. The answer holds the signing
/// secret, shown this once.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    request_body(content = NewWebhook, content_type = "application/json"),
    responses(
        (status = 201, description = "The subscription, with its secret", body = Data<CreatedWebhook>,
         headers(("Location" = String))),
        CreateErrors,
    )
)]
pub async fn create(
    Writer(caller): Writer,
    State(state): State<AppState>,
    AppJson(body): AppJson<Body>,
) -> ApiResult<Response> {
    let created = webhooks::create(&state, &caller, body).await?;
    let location = HeaderValue::from_str(&format!("/api/v1/webhooks/{}", created.id));
    let mut response = (StatusCode::CREATED, AppJson(Data { data: created })).into_response();
    if let Ok(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// List the tenant's subscriptions, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of subscriptions", body = Page<WebhookView>),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated or out of range"),
        (status = 401, description = "No valid API key"),
        (status = 403, description = "`missing_scope`: the key lacks the read scope"),
    )
)]
pub async fn list(
    Reader(caller): Reader,
    State(state): State<AppState>,
    raw: RawParams,
) -> ApiResult<AppJson<Page<WebhookView>>> {
    let params = crate::lists::params::Params::parse(raw, &["limit", "offset"])?;
    let list = List {
        table: "webhook_endpoints",
        tenant_id: caller.tenant_id,
        filters: Vec::new(),
        limit: params.limit()?,
        offset: params.offset()?,
    };
    state
        .projected
        .catch_up_tenant(&state.db, caller.tenant_id)
        .await?;
    let found = list.fetch::<WebhookEndpoint>(&state.db).await?;
    Ok(AppJson(Page {
        data: found.rows.into_iter().map(WebhookView::from).collect(),
        pagination: Pagination {
            total: found.total,
            limit: list.limit,
            offset: list.offset,
        },
    }))
}

/// Get a subscription (never its secret).
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "404 unless a live subscription of this tenant")),
    responses(
        (status = 200, description = "The subscription", body = Data<WebhookView>,
         headers(("ETag" = String, description = "The version, for If-Match"))),
        FindErrors,
    )
)]
pub async fn find(
    Reader(caller): Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let endpoint = webhooks::find(&state, &caller, &id).await?;
    Ok(with_etag(StatusCode::OK, endpoint))
}

/// Change a subscription's URL, event types, description, or pause and
/// resume it.
#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "404 unless a live subscription of this tenant"),
        IfMatchHeader,
    ),
    request_body(content = WebhookPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The subscription as it is now", body = Data<WebhookView>,
         headers(("ETag" = String))),
        PatchErrors,
    )
)]
pub async fn update(
    Writer(caller): Writer,
    State(state): State<AppState>,
    if_match: IfMatch,
    Path(id): Path<String>,
    AppJson(body): AppJson<Body>,
) -> ApiResult<Response> {
    let endpoint = webhooks::update(&state, &caller, &id, &if_match, body).await?;
    Ok(with_etag(StatusCode::OK, endpoint))
}

/// Unsubscribe. Idempotent: deleting a deleted subscription is 204 too.
#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "404 unless a subscription of this tenant"),
        IfMatchHeader,
    ),
    responses((status = 204, description = "Unsubscribed"), DeleteErrors)
)]
pub async fn delete(
    Writer(caller): Writer,
    State(state): State<AppState>,
    if_match: IfMatch,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    webhooks::delete(&state, &caller, &id, &if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret, shown this once; the previous one keeps signing
/// beside it for 24 hours.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "404 unless a live subscription of this tenant")),
    responses(
        (status = 200, description = "The new secret", body = Data<RotatedSecret>),
        FindErrors,
    )
)]
pub async fn rotate_secret(
    Writer(caller): Writer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<AppJson<Data<RotatedSecret>>> {
    let rotated = webhooks::rotate(&state, &caller, &id).await?;
    Ok(AppJson(Data { data: rotated }))
}

/// Send a `webhook.test` event to this endpoint.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/test",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "404 unless a live subscription of this tenant")),
    responses(
        (status = 202, description = "The test event, on its way", body = Data<TestRequested>),
        FindErrors,
    )
)]
pub async fn test(
    Writer(caller): Writer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, AppJson<Data<TestRequested>>)> {
    let requested = webhooks::request_test(&state, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, AppJson(Data { data: requested })))
}

/// The delivery log: every attempt to deliver to this endpoint, newest
/// first.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "404 unless a live subscription of this tenant"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of attempts", body = Page<AttemptView>),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated or out of range"),
        FindErrors,
    )
)]
pub async fn list_deliveries(
    Reader(caller): Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: RawParams,
) -> ApiResult<AppJson<Page<AttemptView>>> {
    Ok(AppJson(
        deliveries::attempts(&state, &caller, &id, raw).await?,
    ))
}

/// Send one delivery again, now.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "404 unless a live subscription of this tenant"),
        ("delivery_id" = Uuid, Path, description = "404 unless a delivery to this endpoint"),
    ),
    responses(
        (status = 202, description = "The delivery, due now", body = Data<DeliveryView>),
        FindErrors,
    )
)]
pub async fn retry_delivery(
    Writer(caller): Writer,
    State(state): State<AppState>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, AppJson<Data<DeliveryView>>)> {
    let delivery = deliveries::retry(&state, &caller, &id, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, AppJson(Data { data: delivery })))
}

/// Send again every delivery to this endpoint that failed (its retries
/// exhausted) since a time.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/recover",
    tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "404 unless a live subscription of this tenant"),
        RecoverQuery,
    ),
    responses(
        (status = 202, description = "How many deliveries are due again", body = Data<Recovered>),
        (status = 400, description = "`invalid_param`: `since` is missing or not RFC 3339"),
        FindErrors,
    )
)]
pub async fn recover(
    Writer(caller): Writer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    raw: RawParams,
) -> ApiResult<(StatusCode, AppJson<Data<Recovered>>)> {
    let recovered = deliveries::recover(&state, &caller, &id, raw).await?;
    Ok((StatusCode::ACCEPTED, AppJson(Data { data: recovered })))
}
