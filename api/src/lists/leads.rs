//! `GET /api/v1/leads`: the tenant's leads, newest first; filtered by
//! `stage`, and by `q`, a case-insensitive prefix of the name or the email.

use axum::extract::State;
use schema::events::{LeadStage, Scope};
use schema::resources::Lead;
use utoipa::IntoParams;

use super::params::{Params, RawParams};
use super::query::{Filter, List};
use super::{answer, Page};
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::state::AppState;
use crate::views::LeadView;

const KNOWN: &[&str] = &["stage", "q", "limit", "offset"];
const STAGES: &str = "new, contacted, qualified, meeting_booked, proposal, won, lost";

/// The query parameters (read by [`Params`]; this type documents them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LeadsQuery {
    /// Only leads in this stage: `new`, `contacted`, `qualified`,
    /// `meeting_booked`, `proposal`, `won` or `lost`.
    stage: Option<String>,
    /// Case-insensitive prefix of the name or the email; `%`, `_`, `'` and
    /// `\` match themselves. Empty: no filter. At most 200 characters.
    q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Matching rows to skip, 0 or more (default 0).
    offset: Option<i64>,
}

/// List leads.
#[utoipa::path(
    get,
    path = "/api/v1/leads",
    tag = "leads",
    params(LeadsQuery),
    responses(
        (status = 200, description = "A page of leads, newest first", body = Page<LeadView>),
        (status = 400, description = "`invalid_param`: a parameter is unknown, repeated, malformed or out of range; the message names it"),
        (status = 401, description = "No valid API key"),
        (status = 403, description = "`missing_scope`: the key lacks the read scope"),
    )
)]
pub async fn list(
    principal: Principal,
    State(state): State<AppState>,
    raw: RawParams,
) -> ApiResult<AppJson<Page<LeadView>>> {
    principal.require(Scope::Read)?;
    let params = Params::parse(raw, KNOWN)?;
    let mut filters = Vec::new();
    if let Some(stage) = params.one_of::<LeadStage>("stage", STAGES)? {
        filters.push(Filter::Text {
            column: "stage",
            value: stage,
        });
    }
    if let Some(prefix) = params.q()? {
        filters.push(Filter::Prefix {
            columns: &["name", "email"],
            prefix,
        });
    }
    let list = List {
        table: "leads",
        tenant_id: principal.tenant_id,
        filters,
        limit: params.limit()?,
        offset: params.offset()?,
    };
    answer::<Lead, LeadView>(&state, &principal, list).await
}
