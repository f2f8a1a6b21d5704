//! The operator API under `/admin/v1`: tenants and their keys. Every handler
//! first takes [`Operator`] (`JEANUS_ADMIN_TOKEN`); the work itself is done
//! by `crate::tenancy`, shared with the self-service API and the CLI.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::Router;
use schema::envelope::Metadata;
use uuid::Uuid;

use crate::auth::admin::{self, Operator};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::extract::AppJson;
use crate::request_id;
use crate::state::AppState;
use crate::tenancy::{self, Data, KeyView, MintRequest, MintedKey, NewTenant, Tenant};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/tenants",
            post(create_tenant).fallback(admin::method_not_allowed),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/keys",
            post(mint_key)
                .get(list_keys)
                .fallback(admin::method_not_allowed),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/keys/{key_id}",
            delete(revoke_key).fallback(admin::method_not_allowed),
        )
}

/// The operator acts with no key: the events carry the request id only.
fn operator_metadata() -> Metadata {
    Metadata {
        request_id: request_id::current().map(|id| id.to_string()),
        key_id: None,
    }
}

/// An id in the path that is not a UUID names nothing: 404, like an unknown one.
pub(crate) fn path_id(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound)
}

/// Create a tenant (TenantCreated).
#[utoipa::path(
    post,
    path = "/admin/v1/tenants",
    tag = "operator",
    request_body(content = NewTenant, content_type = "application/json"),
    responses(
        (status = 201, description = "The tenant", body = Data<Tenant>),
        (status = 400, description = "`invalid_json`, `missing_field` or `invalid_param` (names the field). Nothing is written.", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB.", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as application/json.", body = ErrorResponse),
    )
)]
pub async fn create_tenant(
    _: Operator,
    State(state): State<AppState>,
    AppJson(request): AppJson<NewTenant>,
) -> ApiResult<(StatusCode, AppJson<Data<Tenant>>)> {
    let written = tenancy::create_tenant(&state.store, request, operator_metadata()).await?;
    state.projected.settle(written.position).await;
    Ok((StatusCode::CREATED, AppJson(Data { data: written.data })))
}

/// Mint a key for a tenant (KeyMinted). The plaintext `key` is in this
/// response only.
#[utoipa::path(
    post,
    path = "/admin/v1/tenants/{tenant_id}/keys",
    tag = "operator",
    params(("tenant_id" = Uuid, Path, description = "The tenant")),
    request_body(content = MintRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, with its plaintext", body = Data<MintedKey>),
        (status = 400, description = "`invalid_json`, `missing_field` or `invalid_param` (names the field). Nothing is written.", body = ErrorResponse),
        (status = 404, description = "`not_found`: no tenant has this id.", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB.", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as application/json.", body = ErrorResponse),
    )
)]
pub async fn mint_key(
    _: Operator,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    AppJson(request): AppJson<MintRequest>,
) -> ApiResult<(StatusCode, AppJson<Data<MintedKey>>)> {
    let tenant_id = path_id(&tenant_id)?;
    let written = tenancy::mint_key(
        &state.db,
        &state.store,
        tenant_id,
        request,
        operator_metadata(),
    )
    .await?;
    state.projected.settle(written.position).await;
    Ok((StatusCode::CREATED, AppJson(Data { data: written.data })))
}

/// A tenant's keys, revoked ones included, newest first, masked.
#[utoipa::path(
    get,
    path = "/admin/v1/tenants/{tenant_id}/keys",
    tag = "operator",
    params(("tenant_id" = Uuid, Path, description = "The tenant")),
    responses(
        (status = 200, description = "Every key of the tenant", body = Data<Vec<KeyView>>),
        (status = 404, description = "`not_found`: no tenant has this id.", body = ErrorResponse),
    )
)]
pub async fn list_keys(
    _: Operator,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<AppJson<Data<Vec<KeyView>>>> {
    let tenant_id = path_id(&tenant_id)?;
    if tenancy::find_tenant(&state.db, tenant_id).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let keys = tenancy::list_keys(&state.db, tenant_id).await?;
    Ok(AppJson(Data { data: keys }))
}

/// Revoke a tenant's key (KeyRevoked; soft: its audit history stays).
/// Revoking a revoked key changes nothing and is 204 again.
#[utoipa::path(
    delete,
    path = "/admin/v1/tenants/{tenant_id}/keys/{key_id}",
    tag = "operator",
    params(
        ("tenant_id" = Uuid, Path, description = "The tenant"),
        ("key_id" = Uuid, Path, description = "The key; another tenant's is 404"),
    ),
    responses(
        (status = 204, description = "Revoked: refused by every api instance within a second"),
        (status = 404, description = "`not_found`: this tenant has no key with this id.", body = ErrorResponse),
    )
)]
pub async fn revoke_key(
    _: Operator,
    State(state): State<AppState>,
    Path((tenant_id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (tenant_id, key_id) = (path_id(&tenant_id)?, path_id(&key_id)?);
    let written = tenancy::revoke_key(
        &state.db,
        &state.store,
        tenant_id,
        key_id,
        operator_metadata(),
    )
    .await?;
    state.projected.settle(written.position).await;
    Ok(StatusCode::NO_CONTENT)
}
