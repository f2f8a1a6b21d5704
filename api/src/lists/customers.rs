//! `GET /api/v1/customers`: the tenant's customers, newest first; `q` is a
//! case-insensitive prefix of the name or the email.

use schema::resources::Customer;
use utoipa::IntoParams;

use super::params::Params;
use super::query::Filter;
use super::Listed;
use crate::error::ApiResult;

impl Listed for Customer {
    const PARAMS: &'static [&'static str] = &["q", "limit", "offset"];

    fn filters(params: &Params) -> ApiResult<Vec<Filter>> {
        Ok(Filter::prefix(&["name", "email"], params.q()?)
            .into_iter()
            .collect())
    }
}

/// The query parameters (read by [`Params`]; this type documents them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CustomersQuery {
    /// Case-insensitive prefix of the name or the email; `%`, `_`, `'` and
    /// `\` match themselves. Empty: no filter. At most 200 characters.
    q: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<i64>,
    /// Matching rows to skip, 0 or more (default 0).
    offset: Option<i64>,
}
