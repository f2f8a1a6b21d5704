//! The query string of a list endpoint, read strictly: every parameter is
//! known, given once and valid, or the request is refused with 400
//! `invalid_param` naming it. An unknown parameter is refused too, like an
//! unknown body field: a typo (`?stages=won`) must not silently list
//! everything.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// The query string as axum hands it over, before any checking.
pub type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;
/// The longest `q` accepted, in characters.
pub const MAX_Q: usize = 200;

pub fn invalid(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParam {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// The parameters of one request, each taken at most once by name.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
    known: &'static [&'static str],
}

impl Params {
    /// Checks that every parameter is one of `known` and none is repeated.
    pub fn parse(raw: RawParams, known: &'static [&'static str]) -> ApiResult<Self> {
        let Query(pairs) = raw.map_err(|e| invalid("query", e.body_text()))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(invalid(
                    name,
                    format!("unknown parameter; use {}", known.join(", ")),
                ));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(invalid(name, "given more than once"));
            }
        }
        Ok(Self { pairs, known })
    }

    fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(
            self.known.contains(&name),
            "{name} is not a known parameter"
        );
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub fn limit(&self) -> ApiResult<i64> {
        Ok(self
            .integer("limit", 1..=MAX_LIMIT)?
            .unwrap_or(DEFAULT_LIMIT))
    }

    /// An integer within `range`.
    pub fn integer(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> ApiResult<Option<i64>> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| match range.end() {
                        &i64::MAX => invalid(
                            name,
                            format!("must be an integer, {} or more", range.start()),
                        ),
                        end => invalid(
                            name,
                            format!("must be an integer from {} to {end}", range.start()),
                        ),
                    })
            })
            .transpose()
    }

    /// Whether the parameter was given at all.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A non-empty text of at most `max` characters, without NUL.
    pub fn text(&self, name: &str, max: usize) -> ApiResult<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some("") => Err(invalid(name, "must not be empty")),
            Some(v) if v.chars().count() > max => {
                Err(invalid(name, format!("must be at most {max} characters")))
            }
            Some(v) if v.contains('\0') => Err(invalid(name, "must not contain NUL characters")),
            Some(v) => Ok(Some(v.to_owned())),
        }
    }

    /// `offset`: 0 or more, default 0.
    pub fn offset(&self) -> ApiResult<i64> {
        match self.get("offset") {
            None => Ok(0),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| invalid("offset", "must be an integer, 0 or more")),
        }
    }

    /// `q`: a prefix of at most [`MAX_Q`] characters; empty means no filter.
    pub fn q(&self) -> ApiResult<Option<String>> {
        match self.get("q") {
            None | Some("") => Ok(None),
            Some(v) if v.chars().count() > MAX_Q => {
                Err(invalid("q", format!("must be at most {MAX_Q} characters")))
            }
            Some(v) if v.contains('\0') => Err(invalid("q", "must not contain NUL characters")),
            Some(v) => Ok(Some(v.to_owned())),
        }
    }

    /// An enumerated value (`stage`, `status`): one of `T`'s serde
    /// (snake_case) names, which is how the read models store it, returned
    /// as given. `allowed` lists the names for the message.
    pub fn one_of<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
        allowed: &str,
    ) -> ApiResult<Option<String>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        T::deserialize(StrDeserializer::<ValueError>::new(v))
            .map(|_: T| Some(v.to_owned()))
            .map_err(|_| invalid(name, format!("must be one of {allowed}")))
    }

    pub fn uuid(&self, name: &str) -> ApiResult<Option<Uuid>> {
        self.get(name)
            .map(|v| Uuid::parse_str(v).map_err(|_| invalid(name, "must be a UUID")))
            .transpose()
    }

    /// An RFC 3339 time (`2026-01-31T09:00:00Z`).
    pub fn time(&self, name: &str) -> ApiResult<Option<DateTime<Utc>>> {
        self.get(name)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        invalid(name, "must be an RFC 3339 time, e.g. 2026-01-31T09:00:00Z")
                    })
            })
            .transpose()
    }

    /// A `YYYY-MM-DD` date, as the start of that day in UTC.
    pub fn date(&self, name: &str) -> ApiResult<Option<DateTime<Utc>>> {
        self.get(name)
            .map(|v| {
                let shaped = v.len() == 10
                    && v.bytes().enumerate().all(|(i, b)| match i {
                        4 | 7 => b == b'-',
                        _ => b.is_ascii_digit(),
                    });
                shaped
                    .then(|| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok())
                    .flatten()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc())
                    .ok_or_else(|| invalid(name, "must be a date, YYYY-MM-DD"))
            })
            .transpose()
    }
}

/// `q` as a LIKE pattern's literal prefix: `\`, `%` and `_` escaped with
/// PostgreSQL's default escape character, so they match themselves. (A `'`
/// needs nothing: the pattern is a bound parameter, never spliced into SQL.)
pub fn like_prefix(q: &str) -> String {
    let mut escaped = String::with_capacity(q.len() + 4);
    for c in q.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::events::LeadStage;

    const KNOWN: &[&str] = &["limit", "offset", "q", "stage", "customer_id", "since"];

    fn params(pairs: &[(&str, &str)]) -> ApiResult<Params> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Params::parse(Ok(Query(pairs)), KNOWN)
    }

    fn refused<T: std::fmt::Debug>(result: ApiResult<T>) -> String {
        match result {
            Err(ApiError::InvalidParam { name, .. }) => name,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_are_fifty_from_the_start() {
        let p = params(&[]).expect("valid");
        assert_eq!(p.limit().expect("limit"), 50);
        assert_eq!(p.offset().expect("offset"), 0);
        assert_eq!(p.q().expect("q"), None);
    }

    #[test]
    fn bounds_are_enforced_by_name() {
        for bad in ["0", "201", "abc", "-1", "1.5", ""] {
            assert_eq!(
                refused(params(&[("limit", bad)]).expect("known").limit()),
                "limit"
            );
        }
        assert_eq!(
            params(&[("limit", "200")])
                .expect("known")
                .limit()
                .expect("ok"),
            200
        );
        assert_eq!(
            params(&[("limit", "1")])
                .expect("known")
                .limit()
                .expect("ok"),
            1
        );
        for bad in ["-1", "x", ""] {
            assert_eq!(
                refused(params(&[("offset", bad)]).expect("known").offset()),
                "offset"
            );
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert_eq!(refused(params(&[("stages", "won")])), "stages");
        assert_eq!(refused(params(&[("limit", "1"), ("limit", "2")])), "limit");
    }

    #[test]
    fn enums_uuids_and_dates_are_checked() {
        let p = params(&[("stage", "meeting_booked")]).expect("known");
        assert_eq!(
            p.one_of::<LeadStage>("stage", "…")
                .expect("valid")
                .as_deref(),
            Some("meeting_booked")
        );
        let p = params(&[("stage", "bogus")]).expect("known");
        assert_eq!(refused(p.one_of::<LeadStage>("stage", "…")), "stage");
        let p = params(&[("customer_id", "xyz")]).expect("known");
        assert_eq!(refused(p.uuid("customer_id")), "customer_id");
        for bad in [
            "2024-13-01",
            "2024-02-30",
            "2024-1-01",
            "yesterday",
            "2024-01-01T00:00:00Z",
        ] {
            let p = params(&[("since", bad)]).expect("known");
            assert_eq!(refused(p.date("since")), "since", "{bad}");
        }
        let p = params(&[("since", "2024-02-29")]).expect("known");
        assert_eq!(
            p.date("since")
                .expect("valid")
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2024-02-29T00:00:00+00:00")
        );
    }

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(like_prefix(r"50%_a\b'c"), r"50\%\_a\\b'c");
        assert_eq!(like_prefix("Zoë"), "Zoë");
    }

    #[test]
    fn an_empty_q_is_no_filter_and_a_long_one_is_refused() {
        assert_eq!(params(&[("q", "")]).expect("known").q().expect("ok"), None);
        let long = "x".repeat(MAX_Q + 1);
        assert_eq!(refused(params(&[("q", &long)]).expect("known").q()), "q");
    }
}
