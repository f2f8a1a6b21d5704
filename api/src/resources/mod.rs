//! The v1 resources' write side and lookup, once for all four: a
//! [`Resource`] says what is particular to customers, products, leads or
//! orders (their fields, their events, their cross-field rules); the
//! commands in [`commands`] create, read, patch and delete any of them the
//! same way; `routes::{customers, products, leads, orders}` are thin HTTP
//! handlers over those commands.
//!
//! Decisions on writes are taken on the event log, folded with the same
//! `schema::resources` fold the projector uses: a command loads the stream,
//! validates against its current state and appends with the version it
//! read (`ExpectedVersion::Exact`), so two writers can never both win on
//! stale state. `GET /{id}` reads the read model, after waiting for the
//! projector to catch up with the tenant's writes.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use schema::events::{EventPayload, Scope};
use schema::resources::{Fold, Meta};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::AppJson;
use crate::tenancy::Data;

pub mod commands;
pub mod docs;
pub mod etag;
pub mod fields;
pub mod load;

pub use commands::{create, delete, find, update};
pub use etag::IfMatch;
pub use fields::{Fallback, Field, Kind};

/// A JSON object body, checked field by field by [`fields`].
pub type Body = Map<String, Value>;

/// What is particular to one kind of resource. Implemented on its folded
/// state (`schema::resources::Customer`, …).
pub trait Resource: Fold + Clone + Send + Sync + 'static {
    /// The collection's path segment under `/api/v1/`, and its read model's
    /// table.
    const COLLECTION: &'static str;
    /// The stream type of its events.
    const STREAM_TYPE: &'static str;
    /// Its body's fields, in the order they are checked.
    const FIELDS: &'static [Field];
    /// The field that moves only by an event of its own (`stage`, `status`),
    /// never by the `*Updated` patch.
    const TRANSITION: Option<&'static str> = None;

    /// What clients see: every field but the bookkeeping of [`Meta`] beyond
    /// `id`, `created_at` and `updated_at`.
    type View: Serialize + From<Self> + Send;

    /// The `*Created` event of a checked create body (every field present).
    fn created(fields: Body) -> serde_json::Result<EventPayload>;

    /// The `*Updated` event carrying the changed fields as a merge patch.
    fn updated(patch: Body) -> EventPayload;

    fn deleted() -> EventPayload;

    /// The event that moves [`Self::TRANSITION`] to `to`, if that differs
    /// from the current value.
    fn transitioned(&self, to: &Value) -> serde_json::Result<Option<EventPayload>> {
        let _ = to;
        Ok(None)
    }

    /// Rules across fields or across streams, once each field is valid:
    /// `input` is the checked body (a create's holds every field, a patch's
    /// those given) and may be completed here (a derived total); `current`
    /// is the state a patch applies to.
    fn check(
        db: &PgPool,
        tenant_id: Uuid,
        input: &mut Body,
        current: Option<&Self>,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        let _ = (db, tenant_id, input, current);
        async { Ok(()) }
    }
}

/// The caller of a write: a principal with the `write` scope (403
/// `missing_scope` otherwise). Checked before the body is read, so a
/// read-only key learns that first.
pub struct Writer(pub Principal);

/// The caller of a lookup: a principal with the `read` scope.
pub struct Reader(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(Scope::Write)?;
        Ok(Self(principal))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(Scope::Read)?;
        Ok(Self(principal))
    }
}

/// A resource id from the path; anything but a UUID is simply not found.
pub fn path_id(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound)
}

/// `{"data": …}` with the resource's `ETag`, and on a create its `Location`.
fn respond<R: Resource>(status: StatusCode, resource: R) -> Response {
    let Meta { id, version, .. } = *resource.meta();
    let mut response = (
        status,
        AppJson(Data {
            data: R::View::from(resource),
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag::etag(version));
    if status == StatusCode::CREATED {
        if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/{}/{id}", R::COLLECTION)) {
            headers.insert(header::LOCATION, location);
        }
    }
    response
}

/// An error that is a bug or a corrupted log, never the client's doing.
fn internal(e: impl std::error::Error + Send + Sync + 'static, what: &'static str) -> ApiError {
    ApiError::Internal(anyhow::Error::new(e).context(what))
}
