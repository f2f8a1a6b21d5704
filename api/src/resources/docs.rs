//! What the OpenAPI document says of every resource write and lookup alike:
//! the error responses and the header and path parameters. Documentation
//! only; the behaviour is in [`super::commands`] and `crate::idempotency`.
#![allow(dead_code)]

use utoipa::{IntoParams, IntoResponses};

use crate::error::ErrorResponse;

/// `Idempotency-Key`, on POST and PATCH.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// 1 to 255 printable ASCII characters, unique per request (a UUID is a
    /// good choice). A retry with the same key, method, path and body within
    /// 24 hours answers the first response again, with `Idempotent-Replayed:
    /// true`, and changes nothing; the same key with another request is 422
    /// `idempotency_conflict`; while the first is still running, 409
    /// `idempotency_in_progress`. Responses 5xx, 403, 409 and 429 are not kept:
    /// retry them with the same key.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// `If-Match`, on PATCH and DELETE.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatchHeader {
    /// The `ETag` of the version the change is based on (`"3"`), or `*`.
    /// If the resource has changed since, nothing is written and the answer
    /// is 412 `precondition_failed`. Without it, a write that races another
    /// is retried on the new version.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

#[derive(IntoResponses)]
pub enum CreateErrors {
    /// `invalid_json`, `missing_field` (names the field) or `invalid_param`
    /// (names the field, or `Idempotency-Key`). Nothing is written.
    #[response(status = 400)]
    BadRequest(ErrorResponse),
    /// `missing_auth`, `invalid_key`, …: no valid API key.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// `missing_scope`: the key lacks the write scope.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// `idempotency_in_progress`: a request with this key is still running.
    #[response(status = 409)]
    Conflict(ErrorResponse),
    /// `payload_too_large`: the body is over 1 MiB.
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// `unsupported_media_type`: the body is not sent as application/json.
    #[response(status = 415)]
    MediaType(ErrorResponse),
    /// `idempotency_conflict`: the key was used with another request.
    #[response(status = 422)]
    KeyReused(ErrorResponse),
}

#[derive(IntoResponses)]
pub enum FindErrors {
    /// `missing_auth`, `invalid_key`, …: no valid API key.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// `missing_scope`: the key lacks the read scope.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// `not_found`: no live resource of this tenant has this id.
    #[response(status = 404)]
    NotFound(ErrorResponse),
}

#[derive(IntoResponses)]
pub enum PatchErrors {
    /// `invalid_json`, `invalid_param` (names the field, `If-Match` or
    /// `Idempotency-Key`; `null` on a required field), or `missing_field`
    /// (an amount left without its currency). Nothing is written.
    #[response(status = 400)]
    BadRequest(ErrorResponse),
    /// `missing_auth`, `invalid_key`, …: no valid API key.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// `missing_scope`: the key lacks the write scope.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// `not_found`: no live resource of this tenant has this id.
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// `idempotency_in_progress`, or `conflict`: the resource kept changing
    /// under the request; retry it.
    #[response(status = 409)]
    Conflict(ErrorResponse),
    /// `precondition_failed`: the resource changed since the `If-Match` ETag.
    #[response(status = 412)]
    Precondition(ErrorResponse),
    /// `payload_too_large`: the body is over 1 MiB.
    #[response(status = 413)]
    TooLarge(ErrorResponse),
    /// `unsupported_media_type`: the body is not sent as application/json.
    #[response(status = 415)]
    MediaType(ErrorResponse),
    /// `idempotency_conflict`: the key was used with another request.
    #[response(status = 422)]
    KeyReused(ErrorResponse),
}

#[derive(IntoResponses)]
pub enum DeleteErrors {
    /// `invalid_param`: a malformed `If-Match`.
    #[response(status = 400)]
    BadRequest(ErrorResponse),
    /// `missing_auth`, `invalid_key`, …: no valid API key.
    #[response(status = 401)]
    Unauthorized(ErrorResponse),
    /// `missing_scope`: the key lacks the write scope.
    #[response(status = 403)]
    Forbidden(ErrorResponse),
    /// `not_found`: no live resource of this tenant has this id (deleting
    /// twice is 404 the second time).
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// `conflict`: the resource kept changing under the request; retry it.
    #[response(status = 409)]
    Conflict(ErrorResponse),
    /// `precondition_failed`: the resource changed since the `If-Match` ETag.
    #[response(status = 412)]
    Precondition(ErrorResponse),
}

#[cfg(test)]
mod tests {
    use schema::resources::{Customer, Lead, Order, Product};
    use utoipa::openapi::{RefOr, Schema};
    use utoipa::{OpenApi, PartialSchema};

    use crate::resources::fields::Presence;
    use crate::resources::Resource;
    use crate::routes::{customers, leads, orders, products};

    #[derive(OpenApi)]
    #[openapi(paths(
        customers::create,
        customers::find,
        customers::update,
        customers::delete,
        products::create,
        products::find,
        products::update,
        products::delete,
        leads::create,
        leads::find,
        leads::update,
        leads::delete,
        orders::create,
        orders::find,
        orders::update,
        orders::delete,
    ))]
    struct Writes;

    #[test]
    fn every_write_and_lookup_is_in_the_document() {
        let doc = Writes::openapi();
        for collection in ["customers", "products", "leads", "orders"] {
            let list = &doc.paths.paths[&format!("/api/v1/{collection}")];
            let post = list.post.as_ref().expect("POST");
            assert!(post.request_body.is_some(), "{collection}");
            assert!(post.responses.responses.contains_key("201"));
            assert!(post.responses.responses.contains_key("422"));
            let one = &doc.paths.paths[&format!("/api/v1/{collection}/{{id}}")];
            assert!(one.get.is_some() && one.delete.is_some(), "{collection}");
            let patch = one.patch.as_ref().expect("PATCH");
            assert!(patch.responses.responses.contains_key("412"));
            let params: Vec<&str> = patch
                .parameters
                .iter()
                .flatten()
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(
                params,
                ["id", "If-Match", "Idempotency-Key"],
                "{collection}"
            );
        }
    }

    /// The property names and the required ones of a documented body.
    fn shape<T: PartialSchema>() -> (Vec<String>, Vec<String>) {
        match T::schema() {
            RefOr::T(Schema::Object(object)) => (
                object.properties.keys().cloned().collect(),
                object.required.clone(),
            ),
            _ => panic!("not an object schema"),
        }
    }

    /// The documented bodies cannot drift from the fields a resource checks.
    fn documents<R: Resource, New: PartialSchema, Patch: PartialSchema>() {
        let mut names: Vec<String> = R::FIELDS.iter().map(|f| f.name.to_owned()).collect();
        names.sort();
        let required: Vec<String> = R::FIELDS
            .iter()
            .filter(|f| matches!(f.presence, Presence::Required))
            .map(|f| f.name.to_owned())
            .collect();
        assert_eq!(shape::<New>(), (names.clone(), required), "{}", R::NAME);
        assert_eq!(shape::<Patch>(), (names, Vec::new()), "{}", R::NAME);
    }

    #[test]
    fn the_documented_bodies_are_the_checked_fields() {
        documents::<Customer, customers::NewCustomer, customers::CustomerPatch>();
        documents::<Product, products::NewProduct, products::ProductPatch>();
        documents::<Lead, leads::NewLead, leads::LeadPatch>();
        documents::<Order, orders::NewOrder, orders::OrderPatch>();
    }
}
