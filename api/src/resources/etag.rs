//! Entity tags: a resource's `ETag` is its stream version, `"3"`, and
//! `If-Match` ([`IfMatch`]) makes a PATCH or DELETE conditional on it, so
//! that of two clients that read version 3, only the first to write wins
//! and the other gets 412 instead of overwriting unseen changes.

use axum::extract::FromRequestParts;
use axum::http::header::IF_MATCH;
use axum::http::request::Parts;
use axum::http::HeaderValue;

use crate::error::{ApiError, ApiResult};

/// The `ETag` of a resource at stream version `version`.
pub fn etag(version: i64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A request's `If-Match`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No `If-Match`: the write applies to whatever version is current.
    Absent,
    /// `*`: any current version (the resource must exist).
    Any,
    /// The entity tags listed, unquoted; weak tags (`W/"3"`) are kept with
    /// their prefix so that they never match (If-Match compares strongly).
    Tags(Vec<String>),
}

impl IfMatch {
    pub fn parse(value: Option<&HeaderValue>) -> ApiResult<Self> {
        let Some(value) = value else {
            return Ok(Self::Absent);
        };
        let malformed = || ApiError::InvalidParam {
            name: "If-Match".to_owned(),
            message:
                "must be * or a list of entity tags such as \"3\", as the ETag header gives them"
                    .to_owned(),
        };
        let text = value.to_str().map_err(|_| malformed())?.trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        let mut tags = Vec::new();
        for tag in text.split(',').map(str::trim) {
            let (weak, quoted) = match tag.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, tag),
            };
            let inner = quoted
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| !t.contains('"'))
                .ok_or_else(malformed)?;
            tags.push(if weak {
                format!("W/{inner}")
            } else {
                inner.to_owned()
            });
        }
        Ok(Self::Tags(tags))
    }

    /// Whether the write is tied to particular versions: then losing a race
    /// is 412. Without `If-Match`, or with `*` (any version will do), the
    /// write is tried again on the new version instead.
    pub fn pins_version(&self) -> bool {
        matches!(self, Self::Tags(_))
    }

    /// 412 `precondition_failed` unless the resource's current `version`
    /// satisfies the condition.
    pub fn check(&self, version: i64) -> ApiResult<()> {
        let current = version.to_string();
        match self {
            Self::Absent | Self::Any => Ok(()),
            Self::Tags(tags) if tags.contains(&current) => Ok(()),
            Self::Tags(_) => Err(ApiError::PreconditionFailed),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::parse(parts.headers.get(IF_MATCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ApiResult<IfMatch> {
        IfMatch::parse(Some(&HeaderValue::from_str(text).expect("a header value")))
    }

    #[test]
    fn an_etag_is_the_quoted_version() {
        assert_eq!(etag(3), "\"3\"");
    }

    #[test]
    fn a_listed_strong_tag_matches() {
        assert!(parse("\"3\"").expect("valid").check(3).is_ok());
        assert!(parse("\"1\", \"3\"").expect("valid").check(3).is_ok());
        assert!(parse("*").expect("valid").check(9).is_ok());
        assert!(IfMatch::parse(None).expect("valid").check(9).is_ok());
    }

    #[test]
    fn only_listed_tags_pin_a_version() {
        assert!(parse("\"3\"").expect("valid").pins_version());
        assert!(!parse("*").expect("valid").pins_version());
        assert!(!IfMatch::parse(None).expect("valid").pins_version());
    }

    #[test]
    fn a_stale_or_weak_tag_fails_the_precondition() {
        for text in ["\"2\"", "W/\"3\"", "\"abc\""] {
            let err = parse(text).expect("valid").check(3).expect_err(text);
            assert_eq!(err.code(), "precondition_failed");
        }
    }

    #[test]
    fn a_malformed_header_is_an_invalid_param() {
        for text in ["3", "\"3", "\"3\"\"", ""] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.code(), "invalid_param", "{text}");
        }
    }
}
