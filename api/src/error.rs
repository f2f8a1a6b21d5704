//! Every outcome a client can see as an error, and the one envelope they are
//! rendered in: `{"error":{"code","message"},"request_id"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::request_id;

pub type ApiResult<T> = Result<T, ApiError>;

/// An error answered to the client. `code()` is a stable snake_case
/// identifier that clients match on; the message is for humans. A 5xx never
/// carries internal text: the cause is logged once, here, inside the
/// request's span (which holds its request id).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the requested resource does not exist")]
    NotFound,
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid value for {name:?}: {message}")]
    InvalidParam { name: String, message: String },
    #[error("missing required field {0:?}")]
    MissingField(String),
    #[error("the request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {} bytes", crate::BODY_LIMIT)]
    PayloadTooLarge,
    #[error("the request took longer than {} s", crate::REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
    #[error("this request needs an Authorization: Bearer header")]
    MissingAuth,
    #[error("the operator token is not valid")]
    InvalidAdminToken,
    #[error("the API key is malformed: expected jns_live_ or jns_test_ followed by 36 letters and digits")]
    InvalidFormat,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
    #[error("this request needs the {} scope", scope_name(*.0))]
    MissingScope(schema::events::Scope),
    #[error("this API key may not be used from this IP address")]
    IpNotAllowed,
    #[error("rate limit exceeded; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("the resource has changed since the ETag given in If-Match; fetch it again")]
    PreconditionFailed,
    #[error("the resource was changed concurrently too often; retry the request")]
    Conflict,
    #[error("this Idempotency-Key was used with another request (method, path or body)")]
    IdempotencyConflict,
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    IdempotencyInProgress,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidJson(_) | Self::InvalidParam { .. } | Self::MissingField(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(e) if database_unreachable(e) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MissingAuth | Self::InvalidAdminToken => StatusCode::UNAUTHORIZED,
            Self::InvalidFormat | Self::InvalidKey | Self::Revoked | Self::Expired => {
                StatusCode::UNAUTHORIZED
            }
            Self::MissingScope(_) | Self::IpNotAllowed => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::Conflict | Self::IdempotencyInProgress => StatusCode::CONFLICT,
            Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidParam { .. } => "invalid_param",
            Self::MissingField(_) => "missing_field",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Database(e) if database_unreachable(e) => "unavailable",
            Self::Database(_) => "db_error",
            Self::Internal(_) => "internal_error",
            Self::MissingAuth => "missing_auth",
            Self::InvalidAdminToken => "invalid_admin_token",
            Self::InvalidFormat => "invalid_format",
            Self::InvalidKey => "invalid_key",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::MissingScope(_) => "missing_scope",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::PreconditionFailed => "precondition_failed",
            Self::Conflict => "conflict",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::IdempotencyInProgress => "idempotency_in_progress",
        }
    }

    /// The message shown to the client: never internal text for a 5xx.
    pub fn message(&self) -> String {
        match self {
            Self::Database(e) if database_unreachable(e) => Self::Unavailable.to_string(),
            Self::Database(_) => "a database error occurred".to_owned(),
            Self::Internal(_) => "an internal error occurred".to_owned(),
            other => other.to_string(),
        }
    }
}

/// A database that cannot be reached is a retryable 503, not a 500: the pool
/// reconnects by itself once PostgreSQL is back.
fn database_unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Database(e) => tracing::error!(error = %e, "request failed on the database"),
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            Self::Timeout => tracing::warn!("request timed out"),
            _ => {}
        }
        let id = request_id::current();
        let message = self.message();
        let envelope = Envelope {
            error: Body {
                code: self.code(),
                message: &message,
            },
            request_id: id.as_deref(),
        };
        let mut response = (status, axum::Json(envelope)).into_response();
        if let Self::RateLimited { retry_after } = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from((*retry_after).max(1)),
            );
        }
        // For the audit log, which sees only the response.
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// The error envelope as the OpenAPI document describes it (what
/// [`ApiError`] renders).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case identifier: `invalid_param`, `not_found`, …
    #[schema(example = "invalid_param")]
    pub code: String,
    /// For humans; names the offending field or parameter where there is one.
    pub message: String,
}

/// The `code` of an error response, in its extensions: what the audit log
/// records without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// `read`, `write`, `admin`: as clients write scopes.
fn scope_name(scope: schema::events::Scope) -> &'static str {
    match scope {
        schema::events::Scope::Read => "read",
        schema::events::Scope::Write => "write",
        schema::events::Scope::Admin => "admin",
    }
}

/// The router's fallback: no route matches the path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// The fallback for a path that exists under another method. axum still adds
/// the `Allow` header.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn an_error_renders_the_envelope_with_the_request_id() {
        let (status, body) = request_id::scope(
            "req-1".into(),
            render(ApiError::MissingField("name".into())),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({
                "error": {"code": "missing_field", "message": "missing required field \"name\""},
                "request_id": "req-1"
            })
        );
    }

    #[tokio::test]
    async fn outside_a_request_the_request_id_is_null() {
        let (status, body) = render(ApiError::NotFound).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body["request_id"].is_null());
    }

    #[tokio::test]
    async fn a_server_error_never_shows_internal_text() {
        let (status, body) = render(anyhow::anyhow!("secret table xyz broke").into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("xyz"), "{body}");

        let (status, body) = render(sqlx::Error::Protocol("relation xyz".into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "db_error");
        assert!(!body.to_string().contains("xyz"), "{body}");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_retryable_503() {
        let (status, body) = render(sqlx::Error::PoolTimedOut.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "unavailable");
    }
}
