//! `Idempotency-Key` on the resources' POST and PATCH ([`middleware`]), and
//! the ids of what a request appends ([`EventIds`]).
//!
//! Per tenant, a key names one request (its method, path and body, hashed)
//! for [`REPLAY_WINDOW`]:
//! - the first request claims the key in `idempotency_keys` before it does
//!   anything, then stores its response when it is final;
//! - a retry of the same request replays that response (status, body, ETag,
//!   Location) with `Idempotent-Replayed: true`, and appends nothing;
//! - another request under the same key is 422 `idempotency_conflict`;
//! - a retry while the first is still running is 409
//!   `idempotency_in_progress`.
//!
//! Only final answers are stored: a 5xx, a 409 (a lost race) or a 429 may
//! succeed when retried, and a 403 is about the key rather than the
//! request, so they release the key instead, as does a request that is
//! dropped half-way (a timeout, a client that hung up). Other 4xx are final
//! and stored (validation failures included, so a retry of a bad request is
//! answered without running it).
//!
//! Crash safety: a request that dies after appending but before storing its
//! response leaves its claim in flight; after [`LEASE`] a retry takes the key
//! over. The retry must not append a second time, so the ids of everything
//! an idempotent request appends, and of the resource a POST creates, are
//! derived from the tenant, the key and the claim's `generation`
//! ([`EventIds`]), which a takeover keeps: the event store treats ids it
//! already holds as a no-op. Ids are random UUIDv7 without a key.
//!
//! Expired keys are ignored by age (a request under a key older than 24 h
//! starts it afresh, with a new generation) and deleted by [`spawn_sweeper`]
//! every [`SWEEP_INTERVAL`].

mod claims;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use claims::{claim, Claim, Lease};

pub use claims::{spawn_sweeper, sweep};

pub static HEADER: HeaderName = HeaderName::from_static("idempotency-key");
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a key's response is replayed.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a claim stays in flight before a retry may take it over: longer
/// than any request may run (`crate::REQUEST_TIMEOUT`).
pub const LEASE: Duration = Duration::from_secs(60);
/// How often expired keys are deleted.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The longest key accepted.
pub const MAX_KEY: usize = 255;

/// The UUIDv5 namespace of derived ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_0b5e_93c4_4d2a_b7e8_2f50_c1d9_8e34);

/// The ids a request gives the resource it creates and the events it
/// appends: derived from its idempotency key when it has one, so that a
/// retry derives the same ones; else fresh UUIDv7s.
#[derive(Debug, Clone)]
pub struct EventIds {
    seed: Option<Uuid>,
}

impl EventIds {
    pub fn random() -> Self {
        Self { seed: None }
    }

    /// The ids of the request holding `key` of `tenant_id` at `generation`.
    pub fn derived(tenant_id: Uuid, key: &str, generation: Uuid) -> Self {
        let name = [tenant_id.as_bytes(), generation.as_bytes(), key.as_bytes()].concat();
        Self {
            seed: Some(Uuid::new_v5(&NAMESPACE, &name)),
        }
    }

    /// The id of the resource a POST creates.
    pub fn resource_id(&self) -> Uuid {
        match &self.seed {
            Some(seed) => Uuid::new_v5(seed, b"resource"),
            None => Uuid::now_v7(),
        }
    }

    /// The id of the `index`th event of the request's append.
    pub fn event_id(&self, index: usize) -> Uuid {
        match &self.seed {
            Some(seed) => Uuid::new_v5(seed, format!("event/{index}").as_bytes()),
            None => Uuid::now_v7(),
        }
    }
}

/// Set by [`middleware`] on a request it claimed a key for; random otherwise.
impl<S: Send + Sync> FromRequestParts<S> for EventIds {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<EventIds>()
            .cloned()
            .unwrap_or_else(EventIds::random))
    }
}

/// The route layer of the resources' routes: see the module's documentation.
/// Requests other than POST and PATCH, and requests without the header, pass
/// through untouched.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !matches!(*request.method(), Method::POST | Method::PATCH) {
        return next.run(request).await;
    }
    let Some(value) = request.headers().get(&HEADER) else {
        return next.run(request).await;
    };
    let key = match parse_key(value) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    // Set by the authentication layer on every /api/v1 request; without it
    // the handler refuses the request anyway.
    let Some(tenant_id) = request.extensions().get::<Principal>().map(|p| p.tenant_id) else {
        return next.run(request).await;
    };
    match idempotent(&state.db, tenant_id, key, request, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// 1 to 255 printable ASCII characters.
fn parse_key(value: &HeaderValue) -> ApiResult<String> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(|b| (0x20..=0x7e).contains(b))
    {
        return Err(ApiError::InvalidParam {
            name: "Idempotency-Key".to_owned(),
            message: format!("must be 1 to {MAX_KEY} printable ASCII characters"),
        });
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

async fn idempotent(
    db: &PgPool,
    tenant_id: Uuid,
    key: String,
    request: Request,
    next: Next,
) -> ApiResult<Response> {
    let (mut parts, body) = request.into_parts();
    // The only way reading can fail short of the limit is a client that has
    // gone away, which reads no answer.
    let body = axum::body::to_bytes(body, crate::BODY_LIMIT)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let hash = request_hash(&parts.method, parts.uri.path(), &body);
    let owner = Uuid::now_v7();
    let generation = match claim(db, tenant_id, &key, &hash, owner).await? {
        Claim::Owned { generation } => generation,
        Claim::Done(stored) => return Ok(stored.replay()),
        Claim::OtherRequest => return Err(ApiError::IdempotencyConflict),
        Claim::InFlight => return Err(ApiError::IdempotencyInProgress),
    };
    parts
        .extensions
        .insert(EventIds::derived(tenant_id, &key, generation));
    let mut lease = Lease::new(db.clone(), tenant_id, key, owner);
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    Ok(lease.settle(response).await)
}

/// SHA-256 of the method, the path and the body.
fn request_hash(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(path.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    hash.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(parse_key(&HeaderValue::from_static("a")).is_ok());
        assert!(parse_key(&HeaderValue::from_static("order 42 / retry ~1")).is_ok());
        let longest = "k".repeat(MAX_KEY);
        assert!(parse_key(&HeaderValue::from_str(&longest).expect("header")).is_ok());
        let over = "k".repeat(MAX_KEY + 1);
        assert!(parse_key(&HeaderValue::from_str(&over).expect("header")).is_err());
        assert!(parse_key(&HeaderValue::from_static("")).is_err());
        assert!(parse_key(&HeaderValue::from_str("a\tb").expect("header")).is_err());
        assert!(parse_key(&HeaderValue::from_bytes(b"caf\xc3\xa9").expect("header")).is_err());
    }

    #[test]
    fn derived_ids_repeat_per_generation_and_differ_otherwise() {
        let (tenant, generation) = (Uuid::now_v7(), Uuid::new_v4());
        let a = EventIds::derived(tenant, "k", generation);
        let b = EventIds::derived(tenant, "k", generation);
        assert_eq!(a.resource_id(), b.resource_id());
        assert_eq!(a.event_id(0), b.event_id(0));
        assert_ne!(a.event_id(0), a.event_id(1));
        assert_ne!(a.event_id(0), a.resource_id());

        let other_generation = EventIds::derived(tenant, "k", Uuid::new_v4());
        let other_key = EventIds::derived(tenant, "k2", generation);
        let other_tenant = EventIds::derived(Uuid::now_v7(), "k", generation);
        for other in [other_generation, other_key, other_tenant] {
            assert_ne!(a.event_id(0), other.event_id(0));
            assert_ne!(a.resource_id(), other.resource_id());
        }

        let random = EventIds::random();
        assert_ne!(random.event_id(0), random.event_id(0));
    }

    #[test]
    fn the_hash_covers_method_path_and_body() {
        let base = request_hash(&Method::POST, "/api/v1/leads", b"{}");
        assert_eq!(base, request_hash(&Method::POST, "/api/v1/leads", b"{}"));
        assert_ne!(base, request_hash(&Method::PATCH, "/api/v1/leads", b"{}"));
        assert_ne!(
            base,
            request_hash(&Method::POST, "/api/v1/customers", b"{}")
        );
        assert_ne!(base, request_hash(&Method::POST, "/api/v1/leads", b"{ }"));
    }
}
