//! Helpers for the end-to-end tests of the resources' writes: a tenant with
//! a read key and a write key (a rate limit that tests never reach), the
//! four methods as that tenant, each [`Answer`] with its headers, and what
//! the event log holds.

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::stack::{MintedKey, Stack};

/// Far above what any test sends in a minute.
const RATE_LIMIT: u32 = 10_000;

/// A status, the headers and the JSON body (`Null` when there is none).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `X-Request-Id`, which every response has.
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("every response has X-Request-Id")
            .to_owned()
    }

    /// A header that must be a number (`X-RateLimit-Remaining`, …).
    pub fn number(&self, name: &str) -> i64 {
        self.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} header in {self:?}"))
    }

    /// An error in the envelope, with `request_id` equal to `X-Request-Id`.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        assert_eq!(
            self.body["request_id"].as_str(),
            Some(self.request_id().as_str()),
            "the envelope's request_id is the X-Request-Id"
        );
    }

    pub fn etag(&self) -> &str {
        self.header("etag")
            .unwrap_or_else(|| panic!("no ETag in {self:?}"))
    }

    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// The `data.id` of a resource answer.
    pub fn id(&self) -> Uuid {
        self.body["data"]["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(|| panic!("no id in {}", self.body))
    }

    /// Asserts the status, and gives back the answer.
    pub fn expect(self, status: StatusCode) -> Self {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self
    }

    /// Asserts an error: its status, its code, and that its message names
    /// `field` (quoted, as `invalid_param` and `missing_field` do) if given.
    pub fn refused(&self, status: StatusCode, code: &str, field: Option<&str>) {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        if let Some(field) = field {
            let message = self.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("\"{field}\"")),
                "the message names {field:?}: {message}"
            );
        }
    }

    /// 400 `invalid_param` naming `field`.
    pub fn invalid(&self, field: &str) {
        self.refused(StatusCode::BAD_REQUEST, "invalid_param", Some(field));
    }

    /// 400 `missing_field` naming `field`.
    pub fn missing(&self, field: &str) {
        self.refused(StatusCode::BAD_REQUEST, "missing_field", Some(field));
    }
}

pub async fn answer(request: RequestBuilder) -> Answer {
    let response = request.send().await.expect("the request is answered");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("the body is read");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// A tenant with a `read` key and a `write` key.
pub struct Tenant<'a> {
    pub stack: &'a Stack,
    pub id: Uuid,
    pub read: MintedKey,
    pub write: MintedKey,
}

impl<'a> Tenant<'a> {
    pub async fn new(stack: &'a Stack, name: &str) -> Self {
        let id = stack.create_tenant(name).await;
        let mint = |scope: &str| {
            stack.mint_key_with(
                id,
                json!({"label": scope, "scopes": [scope], "rate_limit_per_minute": RATE_LIMIT}),
            )
        };
        let read = mint("read").await;
        let write = mint("write").await;
        Self {
            stack,
            id,
            read,
            write,
        }
    }

    /// A request with the write key (which can read too).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.stack.with_key(method, path, &self.write.key)
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        answer(self.request(Method::POST, path).json(&body)).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(self.request(Method::GET, path)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        answer(self.request(Method::PATCH, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        answer(self.request(Method::DELETE, path)).await
    }

    /// POSTs `body` to `/api/v1/{collection}`, expecting 201; the answer.
    pub async fn create(&self, collection: &str, body: Value) -> Answer {
        self.post(&format!("/api/v1/{collection}"), body)
            .await
            .expect(StatusCode::CREATED)
    }
}

/// How many events the log holds.
pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await
        .expect("count the events")
}

/// `(event_type, data)` of every event of the stream, oldest first.
pub async fn stream_events(pool: &PgPool, stream_id: Uuid) -> Vec<(String, Value)> {
    sqlx::query_as(
        "select event_type, data from events where stream_id = $1 order by stream_version",
    )
    .bind(stream_id)
    .fetch_all(pool)
    .await
    .expect("read the stream")
}

/// The event types of the stream, oldest first.
pub async fn stream_types(pool: &PgPool, stream_id: Uuid) -> Vec<String> {
    stream_events(pool, stream_id)
        .await
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect()
}

/// Runs `refusals` (requests expected to be refused) and asserts that the
/// event log holds as many events afterwards as before.
pub async fn writes_nothing<F, Fut>(pool: &PgPool, refusals: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = event_count(pool).await;
    refusals().await;
    assert_eq!(
        event_count(pool).await,
        before,
        "a refused request wrote events"
    );
}
