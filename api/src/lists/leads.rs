//! `GET /api/v1/leads`: the tenant's leads, newest first; filtered by
//! `stage`, and by `q`, a case-insensitive prefix of the name or the email.

use schema::events::LeadStage;
use schema::resources::Lead;
use utoipa::IntoParams;

use super::params::Params;
use super::query::Filter;
use super::Listed;
use crate::error::ApiResult;

const STAGES: &str = "new, contacted, qualified, meeting_booked, proposal, won, lost";

impl Listed for Lead {
    const PARAMS: &'static [&'static str] = &["stage", "q", "limit", "offset"];

    fn filters(params: &Params) -> ApiResult<Vec<Filter>> {
        let stage = params
            .one_of::<LeadStage>("stage", STAGES)?
            .map(|value| Filter::Text {
                column: "stage",
                value,
            });
        let q = Filter::prefix(&["name", "email"], params.q()?);
        Ok(stage.into_iter().chain(q).collect())
    }
}

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
