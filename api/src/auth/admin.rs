//! The operator: who may call `/admin/v1`. [`Operator`] is an extractor that
//! succeeds only for `Authorization: Bearer <JEANUS_ADMIN_TOKEN>`, compared
//! in constant time. With the variable unset the operator API does not
//! exist: every `/admin` route answers 404 `not_found`, before anything
//! else is looked at.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::ApiError;
use crate::state::AppState;

/// Proof that the request carries the operator token. Take it as the first
/// argument of every `/admin` handler (and of their method fallbacks).
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        check(state.config.admin_token.as_ref(), &parts.headers)
    }
}

/// The decision, apart from axum: unset → `not_found`; no bearer token →
/// `missing_auth`; a different one → `invalid_admin_token`.
pub fn check(expected: Option<&Secret>, headers: &HeaderMap) -> Result<Operator, ApiError> {
    let expected = expected.ok_or(ApiError::NotFound)?;
    let presented = bearer(headers).ok_or(ApiError::MissingAuth)?;
    if same_secret(expected.expose(), presented) {
        Ok(Operator)
    } else {
        Err(ApiError::InvalidAdminToken)
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive),
/// if present and non-empty.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares the SHA-256 digests in constant time: comparing the strings
/// themselves would leak the expected token's length through timing.
fn same_secret(expected: &str, presented: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a.ct_eq(&b).into()
}

/// The method fallback of `/admin` routes: a wrong method is a 405 only for
/// the operator; for anyone else the route does not exist or is refused.
pub async fn method_not_allowed(_: Operator) -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    fn code(expected: Option<&str>, authorization: Option<&str>) -> &'static str {
        let secret = expected.map(Secret::new);
        match check(secret.as_ref(), &headers(authorization)) {
            Ok(Operator) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn only_the_exact_token_passes() {
        let t = Some("s3cret-token");
        assert_eq!(code(t, Some("Bearer s3cret-token")), "ok");
        assert_eq!(code(t, Some("bearer s3cret-token")), "ok");
        assert_eq!(code(t, Some("Bearer s3cret-tokeN")), "invalid_admin_token");
        assert_eq!(code(t, Some("Bearer s3cret-token2")), "invalid_admin_token");
        assert_eq!(code(t, Some("Bearer s3cret")), "invalid_admin_token");
    }

    #[test]
    fn no_bearer_token_is_missing_auth() {
        let t = Some("s3cret-token");
        assert_eq!(code(t, None), "missing_auth");
        assert_eq!(code(t, Some("Bearer ")), "missing_auth");
        assert_eq!(code(t, Some("Basic s3cret-token")), "missing_auth");
        assert_eq!(code(t, Some("s3cret-token")), "missing_auth");
    }

    #[test]
    fn without_a_configured_token_everything_is_not_found() {
        assert_eq!(code(None, Some("Bearer anything")), "not_found");
        assert_eq!(code(None, None), "not_found");
    }
}
