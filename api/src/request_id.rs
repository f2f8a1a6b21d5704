//! The request id: the client's `X-Request-Id` when it is sane, otherwise a
//! new UUIDv7; echoed on every response and readable anywhere in the
//! request's task through [`current`] (the error envelope, the audit log).
//!
//! One middleware instead of tower-http's `SetRequestIdLayer` +
//! `PropagateRequestIdLayer`: those keep any incoming id as is, and we must
//! replace an oversized or binary one before it reaches logs and the audit
//! log. The id is still stored as tower-http's `RequestId` extension.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen id we keep.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// The id of the request this task is serving, if any.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `f` as part of the request `id` (the middleware does this for every
/// request; tests and background work done for a request may too).
pub async fn scope<F: Future>(id: Arc<str>, f: F) -> F::Output {
    CURRENT.scope(id, f).await
}

pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&HEADER) {
        Some(value) if acceptable(value.as_bytes()) => value.clone(),
        _ => generate(),
    };
    // Visible ASCII (checked above, or a UUID): always valid UTF-8.
    let text: Arc<str> = Arc::from(id.to_str().unwrap_or_default());
    request.headers_mut().insert(HEADER, id.clone());
    request.extensions_mut().insert(RequestId::new(id.clone()));

    let mut response = scope(text, next.run(request)).await;
    response.headers_mut().insert(HEADER, id);
    response
}

/// 1 to 128 visible ASCII characters: safe to log, to store and to echo.
fn acceptable(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(|b| b.is_ascii_graphic())
}

fn generate() -> HeaderValue {
    HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
        .expect("a hyphenated UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        assert!(acceptable(b"8f2a-01HW_x.y:z"));
        assert!(acceptable("a".repeat(128).as_bytes()));
        assert!(!acceptable("a".repeat(129).as_bytes()));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"has space"));
        assert!(!acceptable(b"tab\there"));
        assert!(!acceptable("caf\u{e9}".as_bytes()));
    }
}
