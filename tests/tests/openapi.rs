//! The OpenAPI document at `GET /api/v1/openapi.json`, held to the router
//! from both sides:
//! - every route the api's source declares (read by
//!   `jeanus_tests::declared_routes`) is in the document with each of its
//!   methods, and the document has nothing else;
//! - every operation in the document is served by the running api: a request
//!   to it lands on that very route (the audit log records the route axum
//!   matched), never on the fallback or a 405.
//!
//! And the document itself: public, OpenAPI 3.1, well formed (references
//! resolve, path parameters declared, operation ids unique, and checked by
//! the reference validator `openapi-spec-validator`, which is required),
//! and every error response is the error envelope.

use std::collections::{BTreeSet, HashSet};

use jeanus_tests::declared_routes::{api_source_dir, declared_routes};
use jeanus_tests::stack::send;
use jeanus_tests::{spawn_stack, Stack, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PATH: &str = "/api/v1/openapi.json";
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const ENVELOPE: &str = "#/components/schemas/ErrorResponse";

/// The document, as built in process (what the api serves).
fn document() -> Value {
    serde_json::to_value(api::openapi::document()).expect("the document serializes")
}

/// Every `(METHOD, path)` the document lists.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

/// Every `(operation, response)` of the document, as
/// `(method, path, status, response)`.
fn responses(doc: &Value) -> Vec<(String, String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(operation) = item.get(*method) else {
                continue;
            };
            for (status, response) in operation["responses"].as_object().expect("responses") {
                found.push((
                    method.to_uppercase(),
                    path.clone(),
                    status.clone(),
                    response.clone(),
                ));
            }
        }
    }
    found
}

#[test]
fn every_declared_route_is_documented_with_its_methods() {
    let declared = declared_routes(&api_source_dir());
    assert!(
        declared.len() >= 30,
        "the reader found too few routes: {declared:?}"
    );
    let doc = document();
    let documented = documented(&doc);
    let missing: Vec<String> = declared
        .iter()
        .filter(|r| !documented.contains(&(r.method.clone(), r.path.clone())))
        .map(|r| format!("{} {} ({})", r.method, r.path, r.file.display()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document (annotate the handler with \
         #[utoipa::path] and list it in api/src/openapi.rs):\n{}",
        missing.join("\n")
    );
    let declared: BTreeSet<(String, String)> =
        declared.into_iter().map(|r| (r.method, r.path)).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        extra.is_empty(),
        "documented but declared by no route: {extra:?}"
    );
}

#[test]
fn every_error_response_is_the_envelope() {
    let doc = document();
    for (method, path, status, response) in responses(&doc) {
        let code: u16 = status.parse().expect("a numeric status");
        if code < 400 || (path == "/readyz" && code == 503) {
            // /readyz answers 503 with its checks, not an error.
            continue;
        }
        let schema = &response["content"]["application/json"]["schema"];
        assert_eq!(
            schema["$ref"], ENVELOPE,
            "{method} {path} {status}: {response}"
        );
    }
    let envelope = &doc["components"]["schemas"]["ErrorResponse"];
    assert!(envelope["properties"]["error"].is_object(), "{envelope}");
    assert!(
        envelope["properties"]["request_id"].is_object(),
        "{envelope}"
    );
}

#[test]
fn the_security_layers_are_documented_on_every_operation() {
    let doc = document();
    for (method, path, status, response) in responses(&doc) {
        let headers = response["headers"].as_object().cloned().unwrap_or_default();
        assert!(
            headers.contains_key("X-Request-Id"),
            "{method} {path} {status}"
        );
        let limited = path.starts_with("/api/v1/") && path != PATH;
        if limited && !["401", "500", "503"].contains(&status.as_str()) {
            for header in [
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "RateLimit-Policy",
                "RateLimit",
            ] {
                assert!(
                    headers.contains_key(header),
                    "{method} {path} {status}: {header}"
                );
            }
        }
        if status == "429" {
            assert!(headers.contains_key("Retry-After"), "{method} {path}");
        }
    }
    for (method, path) in documented(&doc) {
        let operation = &doc["paths"][&path][method.to_lowercase()];
        let statuses = &operation["responses"];
        let security = &operation["security"];
        if path.starts_with("/admin/v1/") {
            assert_eq!(
                security,
                &json!([{"operator_token": []}]),
                "{method} {path}"
            );
            assert!(statuses["401"].is_object() && statuses["404"].is_object());
        } else if path.starts_with("/api/v1/") && path != PATH {
            assert_eq!(security, &json!([{"api_key": []}]), "{method} {path}");
            for status in ["401", "403", "429", "500", "503"] {
                assert!(statuses[status].is_object(), "{method} {path} {status}");
            }
        } else {
            assert!(security.is_null(), "{method} {path} is public");
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["operator_token"]["scheme"], "bearer");
}

/// What OpenAPI 3.1 requires that a serializer does not guarantee.
#[test]
fn the_document_is_well_formed_openapi_3_1() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut ids = HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in METHODS {
            let Some(operation) = item.get(*method) else {
                continue;
            };
            let id = operation["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .inspect(|p| assert_eq!(p["required"], true, "{method} {path}: {p}"))
                .map(|p| p["name"].as_str().expect("a name"))
                .collect();
            assert_eq!(declared, templated, "{method} {path}: path parameters");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}");
            for (status, response) in responses {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status}"
                );
            }
        }
    }
    // Every reference resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{reference} resolves");
    }
    validate_with_openapi_spec_validator(&doc);
}

fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => into.push(r.clone()),
                    _ => collect_refs(v, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

/// The reference validator (Python's `openapi-spec-validator`, which
/// `scripts/test` installs): required, so that a machine without it fails
/// here rather than passing without the check.
fn validate_with_openapi_spec_validator(doc: &Value) {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the OpenAPI validator is required: run the tests with scripts/test, which installs \
         it, or `python3 -m pip install openapi-spec-validator` ({probe:?})"
    );
    let file = std::env::temp_dir().join(format!("jeanus-openapi-{}.json", Uuid::now_v7()));
    std::fs::write(&file, doc.to_string()).expect("write the document");
    let output = std::process::Command::new("python3")
        .arg("-m")
        .arg("openapi_spec_validator")
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "openapi-spec-validator refuses the document:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_document_is_served_without_a_key(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;

    let response = stack
        .request(Method::GET, PATH)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert!(response.headers().contains_key("x-request-id"));
    assert!(
        !response.headers().contains_key("x-ratelimit-limit"),
        "the document is not rate limited"
    );
    let served: Value = response.json().await.expect("JSON");
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served, document());

    // A key that is presented anyway is not looked at.
    let (status, _) = send(stack.with_key(Method::GET, PATH, "not-a-key")).await;
    assert_eq!(status, StatusCode::OK);
    // Its neighbours still need one.
    let (status, body) = send(stack.request(Method::GET, "/api/v1/openapi.yaml")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(stack.request(Method::GET, "/api/v1/me")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "missing_auth");

    stack.shutdown().await;
}

/// A request to `path` (its parameters filled with fresh ids, so that nothing
/// existing is touched) with the credentials its area needs.
fn probe(stack: &Stack, method: &str, template: &str, key: &str) -> reqwest::RequestBuilder {
    let path: String = template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                Uuid::now_v7().to_string()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    let request = if template.starts_with("/admin/v1/") {
        stack.admin(method.clone(), &path)
    } else if template.starts_with("/api/v1/") && template != PATH {
        stack.with_key(method.clone(), &path, key)
    } else {
        stack.request(method.clone(), &path)
    };
    if method == Method::POST || method == Method::PATCH {
        // An empty object: refused (400) or about an unknown id (404), so
        // the probe writes nothing.
        request.json(&json!({}))
    } else {
        request
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_documented_operation_is_served_by_its_route(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("OpenAPI probe").await;
    let key = stack
        .mint_key_with(
            tenant,
            json!({"label": "probe", "scopes": ["admin"], "rate_limit_per_minute": 10000}),
        )
        .await;

    let doc = document();
    for (method, template) in documented(&doc) {
        let response = probe(&stack, &method, &template, &key.key)
            .send()
            .await
            .expect("answered");
        let status = response.status();
        let request_id = response.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {template}: {body}"
        );
        let documented_statuses = &doc["paths"][&template][method.to_lowercase()]["responses"];
        assert!(
            documented_statuses[status.as_str()].is_object(),
            "{method} {template} answered {status}, which the document does not list: {body}"
        );
        if !api::audit::audited(&template) {
            // Health: not audited; a 404 would be the fallback's.
            assert!(status.is_success(), "{method} {template}: {status} {body}");
            continue;
        }
        let route: Option<String> =
            sqlx::query_scalar("select route from audit_log where request_id = $1")
                .bind(&request_id)
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{method} {template}: no audit entry: {e}"));
        assert_eq!(
            route.as_deref(),
            Some(template.as_str()),
            "{method} {template} was answered by another route ({status} {body})"
        );
    }

    stack.shutdown().await;
}
