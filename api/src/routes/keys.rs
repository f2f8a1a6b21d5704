//! Self-service keys under `/api/v1/keys`: a tenant mints, lists and revokes
//! its own keys with an `admin`-scoped key, so that it can rotate them (two
//! live at once, then revoke the old) without the operator. Another
//! tenant's key id is 404. The work is done by `crate::tenancy`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::Router;
use schema::events::Scope;

use crate::auth::Principal;
use crate::error::{ApiResult, ErrorResponse};
use crate::extract::AppJson;
use crate::routes::admin::path_id;
use crate::state::AppState;
use crate::tenancy::{self, Data, KeyView, MintRequest, MintedKey};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/keys", post(mint_key).get(list_keys))
        .route("/api/v1/keys/{id}", delete(revoke_key))
}

/// Mint a key for the caller's tenant (`admin` scope). The plaintext `key`
/// is in this response only.
#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = "keys",
    request_body(content = MintRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, with its plaintext", body = Data<MintedKey>),
        (status = 400, description = "`invalid_json`, `missing_field` or `invalid_param` (names the field). Nothing is written.", body = ErrorResponse),
        (status = 403, description = "`missing_scope`: the key lacks the admin scope.", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: the body is over 1 MiB.", body = ErrorResponse),
        (status = 415, description = "`unsupported_media_type`: the body is not sent as application/json.", body = ErrorResponse),
    )
)]
pub async fn mint_key(
    principal: Principal,
    State(state): State<AppState>,
    AppJson(request): AppJson<MintRequest>,
) -> ApiResult<(StatusCode, AppJson<Data<MintedKey>>)> {
    principal.require(Scope::Admin)?;
    let written = tenancy::mint_key(
        &state.db,
        &state.store,
        principal.tenant_id,
        request,
        principal.metadata(),
    )
    .await?;
    state.projected.settle(written.position).await;
    Ok((StatusCode::CREATED, AppJson(Data { data: written.data })))
}

/// The tenant's keys, revoked ones included, newest first, masked
/// (`admin` scope).
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "keys",
    responses(
        (status = 200, description = "Every key of the tenant", body = Data<Vec<KeyView>>),
        (status = 403, description = "`missing_scope`: the key lacks the admin scope.", body = ErrorResponse),
    )
)]
pub async fn list_keys(
    principal: Principal,
    State(state): State<AppState>,
) -> ApiResult<AppJson<Data<Vec<KeyView>>>> {
    principal.require(Scope::Admin)?;
    let keys = tenancy::list_keys(&state.db, principal.tenant_id).await?;
    Ok(AppJson(Data { data: keys }))
}

/// Revoke one of the tenant's keys (`admin` scope). Revoking a revoked key
/// changes nothing and is 204 again. A key may revoke itself: the response
/// is still 204, and its next request is refused.
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{id}",
    tag = "keys",
    params(("id" = Uuid, Path, description = "The key's id; another tenant's is 404")),
    responses(
        (status = 204, description = "Revoked: refused by every api instance within a second"),
        (status = 403, description = "`missing_scope`: the key lacks the admin scope.", body = ErrorResponse),
        (status = 404, description = "`not_found`: no key of this tenant has this id.", body = ErrorResponse),
    )
)]
pub async fn revoke_key(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Scope::Admin)?;
    let written = tenancy::revoke_key(
        &state.db,
        &state.store,
        principal.tenant_id,
        path_id(&id)?,
        principal.metadata(),
    )
    .await?;
    state.projected.settle(written.position).await;
    Ok(StatusCode::NO_CONTENT)
}
