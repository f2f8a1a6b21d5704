//! Extractors whose rejections answer in our error envelope: [`AppJson`]
//! wraps axum's `Json` and names the offending field where serde does.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::ApiError;

/// A JSON body (and a JSON response): like `axum::Json`, but a bad body is an
/// [`ApiError`]: `invalid_json`, `missing_field`, `invalid_param`,
/// `unsupported_media_type` or `payload_too_large`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match &rejection {
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                from_serde(&rejection)
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::InvalidJson(rejection.body_text()),
        }
    }
}

type PathError = serde_path_to_error::Error<serde_json::Error>;

/// Finds serde's error under axum's wrappers: with its path for a body that
/// does not fit the type, bare for trailing garbage after a valid document.
fn from_serde(rejection: &JsonRejection) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if let Some(e) = error.downcast_ref::<PathError>() {
            return classify(&e.path().to_string(), e.inner());
        }
        if let Some(e) = error.downcast_ref::<serde_json::Error>() {
            return classify(".", e);
        }
        source = error.source();
    }
    ApiError::InvalidJson(rejection.body_text())
}

fn classify(path: &str, error: &serde_json::Error) -> ApiError {
    let message = without_position(error);
    if !error.is_data() {
        return ApiError::InvalidJson(message);
    }
    // `path` is "." at the top level, else "items[0].price".
    let within = |field: &str| match path {
        "." => field.to_owned(),
        parent => format!("{parent}.{field}"),
    };
    // serde's wording is stable: "missing field `name`".
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return ApiError::MissingField(within(field));
    }
    let name = if path == "." {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    ApiError::InvalidParam { name, message }
}

/// serde_json appends " at line L column C"; the field name says more.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use axum::Router;
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Deserialize, Serialize)]
    struct Lead {
        name: String,
        #[serde(default)]
        estimated_value: Option<f64>,
        #[serde(default)]
        contacts: Vec<Contact>,
    }

    #[derive(Deserialize, Serialize)]
    struct Contact {
        email: String,
    }

    async fn create(AppJson(lead): AppJson<Lead>) -> AppJson<Lead> {
        AppJson(lead)
    }

    async fn send(
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        let app = Router::new()
            .route("/leads", post(create))
            .layer(DefaultBodyLimit::max(64));
        let mut request = Request::post("/leads");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = app
            .oneshot(request.body(body.into()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn a_valid_body_passes() {
        let (status, body) = send(JSON, r#"{"name":"Sarah"}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "Sarah");
    }

    #[tokio::test]
    async fn broken_json_is_invalid_json() {
        let (status, body) = send(JSON, r#"{"name":"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_json");

        let (_, body) = send(JSON, r#"{"name":"x"} trailing"#).await;
        assert_eq!(body["error"]["code"], "invalid_json");
    }

    #[tokio::test]
    async fn a_missing_field_is_named() {
        let (status, body) = send(JSON, r#"{}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "missing_field");
        assert_eq!(body["error"]["message"], "missing required field \"name\"");

        let (_, body) = send(JSON, r#"{"name":"x","contacts":[{}]}"#).await;
        assert_eq!(body["error"]["code"], "missing_field");
        assert_eq!(
            body["error"]["message"],
            "missing required field \"contacts[0].email\""
        );
    }

    #[tokio::test]
    async fn a_wrong_type_is_an_invalid_param_naming_the_field() {
        let (status, body) = send(JSON, r#"{"name":"x","estimated_value":"lots"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_param");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.starts_with("invalid value for \"estimated_value\": invalid type"),
            "{message}"
        );
        assert!(!message.contains("line 1"), "{message}");

        let (_, body) = send(JSON, r#""a string""#).await;
        assert_eq!(body["error"]["code"], "invalid_param");
        assert!(body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("\"body\""));
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_unsupported_media_type() {
        let (status, body) = send(Some("text/plain"), r#"{"name":"x"}"#).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"]["code"], "unsupported_media_type");

        let (status, _) = send(None, r#"{"name":"x"}"#).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_payload_too_large() {
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100));
        let (status, body) = send(JSON, big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
}
