//! `GET /api/v1/me`: who the presented key is. Any valid key, no scope:
//! clients use it to check a key and to learn their tenant's stable id.

use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use schema::events::Scope;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::key;
use crate::auth::Principal;
use crate::extract::AppJson;
use crate::state::AppState;
use crate::tenancy::Data;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/me", get(me))
}

#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct Me {
    pub tenant: TenantRef,
    pub key: KeyRef,
}

#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct TenantRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize, PartialEq, ToSchema)]
pub struct KeyRef {
    pub id: Uuid,
    pub label: String,
    /// The key's first characters, then `****`.
    #[schema(example = "jns_live_a1b2****")]
    pub masked: String,
    #[schema(value_type = Vec<crate::openapi::Scope>)]
    pub scopes: Vec<Scope>,
    /// `null`: the key does not expire.
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit_per_minute: u32,
    /// CIDRs the key may be used from; empty: anywhere.
    pub allowed_ips: Vec<String>,
}

/// Who the presented key is: its tenant and the key itself. Any valid key,
/// no scope needed.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "keys",
    responses((status = 200, description = "The key and its tenant", body = Data<Me>))
)]
// Everything comes from the principal the authentication layer built: no
// query of its own.
pub async fn me(principal: Principal) -> AppJson<Data<Me>> {
    AppJson(Data {
        data: Me {
            tenant: TenantRef {
                id: principal.tenant_id,
                name: principal.tenant_name,
            },
            key: KeyRef {
                id: principal.key_id,
                label: principal.label,
                masked: key::masked(&principal.key_start),
                scopes: principal.scopes,
                expires_at: principal.expires_at,
                rate_limit_per_minute: principal.rate_limit_per_minute,
                allowed_ips: principal
                    .allowed_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
        },
    })
}
