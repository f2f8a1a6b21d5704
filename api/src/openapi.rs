//! The OpenAPI 3.1 document of the api, generated from the handlers'
//! `#[utoipa::path]` annotations, and served without authentication at
//! `GET /api/v1/openapi.json` ([`PATH`]).
//!
//! What every request goes through is documented here once, by [`Layers`],
//! as `crate::app` adds it once: the security schemes, the errors of the
//! authentication, IP allowlist, rate limit, audit and timeout layers, the
//! rate-limit headers and `X-Request-Id`. The handlers' annotations say what
//! is particular to each operation.
//!
//! `tests/tests/openapi.rs` holds the document to the router: every route
//! the source declares is in it with its methods, and every operation in it
//! is served.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Object, PathItem, RefOr, Response, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::{ApiError, ErrorResponse};
use crate::routes::{
    admin, audit, customers, events, health, keys, leads, me, orders, products, webhooks,
};
use crate::state::AppState;

/// Where the document is served. Under `/api/v1` but public: the
/// authentication layer lets this one path through (`is_public`).
pub const PATH: &str = "/api/v1/openapi.json";

/// The security scheme of `/api/v1`: `Authorization: Bearer <API key>`.
pub const API_KEY: &str = "api_key";
/// The security scheme of `/admin/v1`: `Authorization: Bearer <JEANUS_ADMIN_TOKEN>`.
pub const OPERATOR_TOKEN: &str = "operator_token";

/// The one media type of every JSON body we answer, errors included.
const JSON: &str = "application/json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Jeanus API",
        description = "The Jeanus REST API. Every error is the envelope \
            `{\"error\":{\"code\",\"message\"},\"request_id\"}` (`ErrorResponse`); `code` \
            is a stable snake_case identifier to match on. Every `/api/v1` request needs \
            an API key (`Authorization: Bearer jns_live_…`) and is rate limited per key; \
            `/admin/v1` is the operator's, with `JEANUS_ADMIN_TOKEN`."
    ),
    paths(
        health::healthz,
        health::readyz,
        serve,
        me::me,
        keys::mint_key,
        keys::list_keys,
        keys::revoke_key,
        audit::tenant_log,
        events::list,
        events::head,
        admin::create_tenant,
        admin::mint_key,
        admin::list_keys,
        admin::revoke_key,
        audit::operator_tenant_log,
        audit::operator_untenanted_log,
        customers::list,
        customers::create,
        customers::find,
        customers::update,
        customers::delete,
        products::list,
        products::create,
        products::find,
        products::update,
        products::delete,
        leads::list,
        leads::create,
        leads::find,
        leads::update,
        leads::delete,
        orders::list,
        orders::create,
        orders::find,
        orders::update,
        orders::delete,
        webhooks::create,
        webhooks::list,
        webhooks::find,
        webhooks::update,
        webhooks::delete,
        webhooks::rotate_secret,
        webhooks::test,
        webhooks::list_deliveries,
        webhooks::retry_delivery,
        webhooks::recover,
    ),
    components(schemas(ErrorResponse, Scope)),
    modifiers(&Layers),
    tags(
        (name = "health", description = "Liveness and readiness, without authentication"),
        (name = "meta", description = "This document"),
        (name = "keys", description = "The caller's key, and the tenant's own keys (`admin` scope)"),
        (name = "audit", description = "Every request, success or failure"),
        (name = "events", description = "The tenant's event history, hash-chained (`admin` scope)"),
        (name = "operator", description = "Tenants and their keys, for the operator"),
        (name = "customers"),
        (name = "products"),
        (name = "leads"),
        (name = "orders"),
        (name = "webhooks", description = "Subscriptions, their signing secrets, and the delivery log"),
    )
)]
struct ApiDoc;

// The documentation of `schema::events::Scope`, which has no schema of its
// own (`schema` does not depend on utoipa).
/// A key's permission: `read` lists and gets; `write` also creates, updates
/// and deletes; `admin` also manages keys and reads the audit log.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

/// The document, built from the annotations (anew on each call; the
/// handler serves a copy rendered once).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as served: rendered once, on first use.
static RENDERED: LazyLock<Result<String, serde_json::Error>> =
    LazyLock::new(|| document().to_pretty_json());

/// The path is spelled out (it is [`PATH`]) for the route table read by
/// `tests/src/declared_routes.rs`.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(serve))
}

/// Whether `path` is served without an API key although under `/api/v1`.
pub fn is_public(path: &str) -> bool {
    path == PATH
}

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value))
)]
pub async fn serve() -> Result<impl IntoResponse, ApiError> {
    match &*RENDERED {
        Ok(json) => Ok(([(header::CONTENT_TYPE, JSON)], json.as_str())),
        Err(e) => Err(ApiError::Internal(anyhow::anyhow!(
            "the OpenAPI document does not serialize: {e}"
        ))),
    }
}

/// Who answers a path: which layers it goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// Health and this document: no key, no rate limit. (This document's
    /// requests are audited, as every `/api/v1` one, under no tenant.)
    Public,
    /// `/api/v1`: API key, IP allowlist, rate limit, audit.
    Tenant,
    /// `/admin/v1`: the operator token, audit.
    Operator,
}

impl Area {
    fn of(path: &str) -> Self {
        if is_public(path) {
            Self::Public
        } else if crate::auth::authenticate::is_api_path(path) {
            Self::Tenant
        } else if path.starts_with("/admin/v1/") {
            Self::Operator
        } else {
            Self::Public
        }
    }
}

/// Documents the layers `crate::app` puts around every route, operation by
/// operation, so that no handler has to repeat them.
struct Layers;

impl Modify for Layers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("jns_live_…")
                    .description(Some(
                        "An API key of the tenant, `jns_live_` (or `jns_test_`) followed by \
                         36 letters and digits, from `POST /admin/v1/tenants/{tenant_id}/keys` \
                         or `POST /api/v1/keys`. Its scopes decide what it may do.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            OPERATOR_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator's token, `JEANUS_ADMIN_TOKEN`. While it is unset, \
                         every operator route answers 404 `not_found`.",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let area = Area::of(path);
            for operation in operations_mut(item) {
                document_layers(area, operation);
            }
        }
        unique_operation_ids(doc);
    }
}

/// An operation's id is its handler's name, which is unique only within its
/// module (`create`, `list`, …): where several share it, each is prefixed
/// with its tag (`customers_create`), as OpenAPI requires ids to be unique.
fn unique_operation_ids(doc: &mut utoipa::openapi::OpenApi) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            if let Some(id) = &operation.operation_id {
                *seen.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            let shared = operation
                .operation_id
                .as_ref()
                .is_some_and(|id| seen.get(id).copied().unwrap_or(0) > 1);
            let tag = operation.tags.as_ref().and_then(|t| t.first()).cloned();
            if let (true, Some(tag), Some(id)) = (shared, tag, &operation.operation_id) {
                operation.operation_id = Some(format!("{tag}_{id}"));
            }
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn document_layers(area: Area, operation: &mut Operation) {
    match area {
        Area::Public => {}
        Area::Tenant => {
            operation.security = Some(vec![SecurityRequirement::new(
                API_KEY,
                Vec::<String>::new(),
            )]);
            set_error(
                operation,
                401,
                "No valid API key: `missing_auth` (no `Authorization: Bearer` header), \
                 `invalid_format` (not a well-formed key), `invalid_key`, `revoked` or \
                 `expired`.",
            );
            add_error(
                operation,
                403,
                "`ip_not_allowed`: the client's address is outside the key's `allowed_ips`.",
            );
            add_error(
                operation,
                429,
                "`rate_limited`: the key has used its `rate_limit_per_minute`; retry after \
                 `Retry-After` seconds.",
            );
            add_error(
                operation,
                503,
                "`unavailable`: the database, the rate limiter or the audit log cannot be \
                 reached (retry later), or `timeout`: the request took longer than 30 s.",
            );
        }
        Area::Operator => {
            operation.security = Some(vec![SecurityRequirement::new(
                OPERATOR_TOKEN,
                Vec::<String>::new(),
            )]);
            set_error(
                operation,
                401,
                "`missing_auth` (no `Authorization: Bearer` header) or `invalid_admin_token`.",
            );
            add_error(
                operation,
                404,
                "`not_found`: the operator API is disabled (`JEANUS_ADMIN_TOKEN` is unset).",
            );
            add_error(
                operation,
                503,
                "`unavailable`: the database or the audit log cannot be reached (retry \
                 later), or `timeout`: the request took longer than 30 s.",
            );
        }
    }
    if area != Area::Public {
        add_error(
            operation,
            500,
            "`internal_error` or `db_error`: a fault on our side (the message carries no \
             details; quote the `request_id`).",
        );
    }
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let status: u16 = status.parse().unwrap_or(0);
        response
            .headers
            .insert("X-Request-Id".to_owned(), request_id_header());
        if status >= 400 && response.content.is_empty() {
            response.content.insert(JSON.to_owned(), envelope());
        }
        // The rate limiter answers after authentication and before the
        // handler: every response it lets through, or refuses, has the quota.
        if area == Area::Tenant && ![401, 500, 503].contains(&status) {
            response.headers.extend(rate_limit_headers());
        }
        if status == 429 {
            response.headers.insert(
                "Retry-After".to_owned(),
                integer_header("Seconds until a request is free again (at least 1)."),
            );
        }
    }
}

/// Adds the error response `status` unless the handler documents it; if it
/// does, appends `description` to the handler's (another cause of the same
/// status, from a layer).
fn add_error(operation: &mut Operation, status: u16, description: &str) {
    let responses = &mut operation.responses.responses;
    match responses.get_mut(&status.to_string()) {
        Some(RefOr::T(existing)) => {
            if !existing.description.contains(description) {
                existing.description = format!("{} Or {description}", existing.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert(status.to_string(), RefOr::T(error_response(description)));
        }
    }
}

/// Sets the error response `status` to `description`: a layer's answer,
/// which replaces whatever the handler said of it.
fn set_error(operation: &mut Operation, status: u16, description: &str) {
    operation
        .responses
        .responses
        .insert(status.to_string(), RefOr::T(error_response(description)));
}

fn error_response(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(JSON.to_owned(), envelope());
    response
}

/// The error envelope, by reference.
fn envelope() -> Content {
    Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
        "ErrorResponse",
    ))))
}

fn request_id_header() -> Header {
    let mut h = Header::new(Object::with_type(Type::String));
    h.description = Some(
        "The request's id: the client's `X-Request-Id` when it is at most 128 printable \
         characters, otherwise a new UUID. Equal to `request_id` in an error envelope."
            .to_owned(),
    );
    h
}

fn integer_header(description: &str) -> Header {
    let mut h = Header::new(Object::with_type(Type::Integer));
    h.description = Some(description.to_owned());
    h
}

fn string_header(description: &str) -> Header {
    let mut h = Header::new(Object::with_type(Type::String));
    h.description = Some(description.to_owned());
    h
}

/// The quota headers of `crate::ratelimit::write_headers`.
fn rate_limit_headers() -> [(String, Header); 5] {
    [
        (
            "X-RateLimit-Limit".to_owned(),
            integer_header("Requests the key may make per minute."),
        ),
        (
            "X-RateLimit-Remaining".to_owned(),
            integer_header("Requests left in the current window."),
        ),
        (
            "X-RateLimit-Reset".to_owned(),
            integer_header("Unix time, in seconds, at which a request is next free."),
        ),
        (
            "RateLimit-Policy".to_owned(),
            string_header("The IETF draft's policy: `\"default\";q=<limit>;w=<window seconds>`."),
        ),
        (
            "RateLimit".to_owned(),
            string_header(
                "The IETF draft's current state: `\"default\";r=<remaining>;t=<seconds to reset>`.",
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_serializes() {
        let rendered = RENDERED.as_ref().expect("the document serializes");
        let json: serde_json::Value = serde_json::from_str(rendered).expect("the document is JSON");
        assert_eq!(json["openapi"], "3.1.0");
        assert!(json["paths"][PATH]["get"].is_object());
        assert!(json["components"]["securitySchemes"][API_KEY].is_object());
        assert!(json["components"]["securitySchemes"][OPERATOR_TOKEN].is_object());
    }

    #[test]
    fn the_layers_are_documented_on_every_operation() {
        let doc = document();
        let me = doc.paths.paths["/api/v1/me"].get.as_ref().expect("GET");
        for status in ["200", "401", "403", "429", "500", "503"] {
            assert!(me.responses.responses.contains_key(status), "{status}");
        }
        let RefOr::T(ok) = &me.responses.responses["200"] else {
            panic!("inline response");
        };
        assert!(ok.headers.contains_key("X-RateLimit-Remaining"));
        let tenants = doc.paths.paths["/admin/v1/tenants"]
            .post
            .as_ref()
            .expect("POST");
        assert!(tenants.responses.responses.contains_key("404"));
        let security = serde_json::to_value(&tenants.security).expect("json");
        assert_eq!(security, serde_json::json!([{ OPERATOR_TOKEN: [] }]));
        let health = doc.paths.paths["/healthz"].get.as_ref().expect("GET");
        assert!(health.security.is_none());
    }

    #[test]
    fn only_the_document_is_public_under_api_v1() {
        assert!(is_public("/api/v1/openapi.json"));
        assert!(!is_public("/api/v1/openapi.json/x"));
        assert!(!is_public("/api/v1/me"));
        assert_eq!(Area::of(PATH), Area::Public);
        assert_eq!(Area::of("/api/v1/keys/{id}"), Area::Tenant);
        assert_eq!(Area::of("/admin/v1/audit-log"), Area::Operator);
        assert_eq!(Area::of("/readyz"), Area::Public);
    }
}
