//! Tenants and API keys end to end, against real servers: the operator API,
//! the self-service key endpoints, `/api/v1/me`, the `jeanus-api admin` CLI
//! run as a real process, and what the database holds (no plaintext key).

use std::time::Duration;

use chrono::{DateTime, Utc};
use jeanus_tests::stack::{send, MintedKey, ADMIN_TOKEN};
use jeanus_tests::{eventually, spawn_stack, spawn_stack_with, Stack, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// What every refusal looks like: the status, the code, and a `request_id`
/// equal to the response's `X-Request-Id`.
async fn refused(request: reqwest::RequestBuilder, status: StatusCode, code: &str) -> Value {
    let response = request.send().await.expect("answered");
    let header = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let actual = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(header.is_some(), "every response has X-Request-Id");
    assert_eq!(body["request_id"].as_str(), header.as_deref(), "{body}");
    body
}

/// A 400 `invalid_param` naming `field`.
async fn invalid_param(request: reqwest::RequestBuilder, field: &str) {
    let body = refused(request, StatusCode::BAD_REQUEST, "invalid_param").await;
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains(&format!("\"{field}\"")),
        "the message names {field}: {message}"
    );
}

async fn me(stack: &Stack, key: &str) -> (StatusCode, Value) {
    send(stack.with_key(Method::GET, "/api/v1/me", key)).await
}

/// `/api/v1/me` answers `code` for `key` (on any instance within a second,
/// the revocation guarantee).
async fn eventually_refused(stack: &Stack, key: &str, code: &str) {
    eventually(
        &format!("the key to be refused with {code}"),
        Duration::from_secs(1),
        || async {
            let (status, body) = me(stack, key).await;
            (status == StatusCode::UNAUTHORIZED && body["error"]["code"] == code).then_some(())
        },
    )
    .await;
}

async fn events_of_stream(pool: &PgPool, stream_id: Uuid) -> Vec<String> {
    sqlx::query_scalar("select event_type from events where stream_id = $1 order by stream_version")
        .bind(stream_id)
        .fetch_all(pool)
        .await
        .expect("events")
}

fn key_ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|k| k["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_key_is_minted_listed_masked_used_and_revoked(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;

    let created = stack
        .send_ok(
            stack
                .admin(Method::POST, "/admin/v1/tenants")
                .json(&json!({"name": "Acme Roofing"})),
            StatusCode::CREATED,
        )
        .await;
    let tenant = &created["data"];
    assert_eq!(tenant["name"], "Acme Roofing");
    let tenant_id: Uuid = tenant["id"].as_str().expect("id").parse().expect("a uuid");
    assert!(tenant["created_at"].as_str().is_some());

    let expires = (Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let minted = stack
        .send_ok(
            stack
                .admin(Method::POST, &format!("/admin/v1/tenants/{tenant_id}/keys"))
                .json(&json!({
                    "label": "zapier",
                    "scopes": ["write", "read"],
                    "expires_at": expires,
                    "allowed_ips": ["127.0.0.1", "10.0.0.0/8", "::1"],
                })),
            StatusCode::CREATED,
        )
        .await;
    let key = minted["data"]["key"]
        .as_str()
        .expect("the plaintext")
        .to_owned();
    let key_id = minted["data"]["id"].as_str().expect("an id").to_owned();
    assert!(key.starts_with("jns_live_") && key.len() == 45, "{key}");
    assert_eq!(minted["data"]["masked"], format!("{}****", &key[..13]));
    assert_eq!(minted["data"]["label"], "zapier");
    assert_eq!(minted["data"]["scopes"], json!(["read", "write"]));
    assert_eq!(minted["data"]["rate_limit_per_minute"], 60);
    assert_eq!(
        minted["data"]["allowed_ips"],
        json!(["127.0.0.1/32", "10.0.0.0/8", "::1/128"])
    );
    let expiry: DateTime<Utc> = minted["data"]["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("RFC 3339");
    assert!((expiry - expires.parse::<DateTime<Utc>>().expect("sent")).num_seconds() == 0);

    // Read your writes: listed at once, masked, and no plaintext anywhere.
    let list = stack
        .send_ok(
            stack.admin(Method::GET, &format!("/admin/v1/tenants/{tenant_id}/keys")),
            StatusCode::OK,
        )
        .await;
    assert_eq!(key_ids(&list), std::slice::from_ref(&key_id));
    let listed = &list["data"][0];
    assert_eq!(listed["masked"], minted["data"]["masked"]);
    assert_eq!(listed["label"], "zapier");
    assert_eq!(listed["scopes"], json!(["read", "write"]));
    assert_eq!(listed["created_at"], minted["data"]["created_at"]);
    assert_eq!(listed["expires_at"], minted["data"]["expires_at"]);
    assert_eq!(listed["allowed_ips"], minted["data"]["allowed_ips"]);
    assert_eq!(listed["rate_limit_per_minute"], 60);
    assert!(listed["revoked_at"].is_null());
    assert!(listed["last_used_at"].is_null(), "never used yet");
    assert!(listed.get("key").is_none());
    let text = list.to_string();
    assert!(
        !text.contains(&key[13..]),
        "the list shows nothing of the secret beyond the start"
    );

    // The key works, and /me describes it.
    let (status, body) = me(&stack, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"data": {
            "tenant": {"id": tenant_id, "name": "Acme Roofing"},
            "key": {
                "id": key_id,
                "label": "zapier",
                "masked": minted["data"]["masked"],
                "scopes": ["read", "write"],
                "expires_at": minted["data"]["expires_at"],
                "rate_limit_per_minute": 60,
                "allowed_ips": ["127.0.0.1/32", "10.0.0.0/8", "::1/128"],
            }
        }})
    );
    let list = stack
        .send_ok(
            stack.admin(Method::GET, &format!("/admin/v1/tenants/{tenant_id}/keys")),
            StatusCode::OK,
        )
        .await;
    assert!(
        list["data"][0]["last_used_at"].as_str().is_some(),
        "used once: {list}"
    );

    // Revoked: refused, listed with revoked_at, and a second revocation is
    // a no-op that appends nothing.
    let revoke = format!("/admin/v1/tenants/{tenant_id}/keys/{key_id}");
    stack
        .send_ok(stack.admin(Method::DELETE, &revoke), StatusCode::NO_CONTENT)
        .await;
    eventually_refused(&stack, &key, "revoked").await;
    let list = stack
        .send_ok(
            stack.admin(Method::GET, &format!("/admin/v1/tenants/{tenant_id}/keys")),
            StatusCode::OK,
        )
        .await;
    assert!(list["data"][0]["revoked_at"].as_str().is_some(), "{list}");
    stack
        .send_ok(stack.admin(Method::DELETE, &revoke), StatusCode::NO_CONTENT)
        .await;
    let key_uuid: Uuid = key_id.parse().expect("uuid");
    assert_eq!(
        events_of_stream(&pool, key_uuid).await,
        ["KeyMinted", "KeyRevoked"]
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn test_mode_keys_and_limits_are_honoured(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let minted = stack
        .mint_key_with(
            tenant,
            json!({"label": "ci", "scopes": ["read"], "mode": "test", "rate_limit_per_minute": 10000}),
        )
        .await;
    assert!(minted.key.starts_with("jns_test_"), "{}", minted.key);
    let (status, body) = me(&stack, &minted.key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["key"]["rate_limit_per_minute"], 10000);
    assert_eq!(
        body["data"]["key"]["masked"],
        format!("{}****", &minted.key[..13])
    );
    assert!(body["data"]["key"]["expires_at"].is_null());
    assert_eq!(body["data"]["key"]["allowed_ips"], json!([]));
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_invalid_request_is_refused_naming_the_field(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;

    let tenants = "/admin/v1/tenants";
    for name in [json!(""), json!("   "), json!("x".repeat(201))] {
        invalid_param(
            stack
                .admin(Method::POST, tenants)
                .json(&json!({ "name": name })),
            "name",
        )
        .await;
    }
    refused(
        stack.admin(Method::POST, tenants).json(&json!({})),
        StatusCode::BAD_REQUEST,
        "missing_field",
    )
    .await;
    refused(
        stack
            .admin(Method::POST, tenants)
            .header("content-type", "application/json")
            .body("{\"name\":"),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    let accepted = stack
        .send_ok(
            stack
                .admin(Method::POST, tenants)
                .json(&json!({ "name": "é".repeat(200) })),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(
        accepted["data"]["name"].as_str().map(|n| n.chars().count()),
        Some(200)
    );

    let tenant = stack.create_tenant("Acme").await;
    let keys = format!("/admin/v1/tenants/{tenant}/keys");
    let admin_key = stack.mint_key(tenant, &["admin"]).await;
    let ok = json!({"label": "zapier", "scopes": ["read"]});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let past = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let cases = [
        ("label", json!("")),
        ("label", json!("x".repeat(101))),
        ("scopes", json!([])),
        ("scopes", json!(["read", "delete"])),
        ("scopes", json!(["READ"])),
        ("expires_at", json!("next tuesday")),
        ("expires_at", json!("2031-01-01")),
        ("expires_at", json!(past)),
        ("allowed_ips", json!(["10.0.0.0/33"])),
        ("allowed_ips", json!(["10.0.0.256"])),
        ("allowed_ips", json!(["2001:db8::/129"])),
        ("allowed_ips", json!(["2001:db8:::1"])),
        ("allowed_ips", json!(["localhost"])),
        ("rate_limit_per_minute", json!(0)),
        ("rate_limit_per_minute", json!(10_001)),
        ("rate_limit_per_minute", json!(-5)),
        ("mode", json!("prod")),
    ];
    for (field, value) in cases {
        let body = with(field, value);
        // The operator API and the self-service API validate alike.
        invalid_param(stack.admin(Method::POST, &keys).json(&body), field).await;
        invalid_param(
            stack
                .with_key(Method::POST, "/api/v1/keys", &admin_key.key)
                .json(&body),
            field,
        )
        .await;
    }
    refused(
        stack
            .admin(Method::POST, &keys)
            .json(&json!({"scopes": ["read"]})),
        StatusCode::BAD_REQUEST,
        "missing_field",
    )
    .await;

    // The edges of each range are accepted.
    let edge = stack
        .mint_key_with(
            tenant,
            json!({"label": "x".repeat(100), "scopes": ["read", "write", "admin"],
                   "rate_limit_per_minute": 1,
                   "allowed_ips": ["192.0.2.0/24", "2001:db8::/32", "2001:db8::7"]}),
        )
        .await;
    let (status, body) = me(&stack, &edge.key).await;
    // Not from 127.0.0.1: the allowlist refuses it, so the key was taken as given.
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("ip_not_allowed"))
    );

    // Unknown tenants and ids that cannot be ids are 404.
    let unknown = Uuid::now_v7();
    for path in [
        format!("/admin/v1/tenants/{unknown}/keys"),
        "/admin/v1/tenants/not-a-uuid/keys".to_owned(),
    ] {
        refused(
            stack.admin(Method::POST, &path).json(&ok),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        refused(
            stack.admin(Method::GET, &path),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    refused(
        stack.admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/{tenant}/keys/{unknown}"),
        ),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    refused(
        stack.admin(
            Method::DELETE,
            &format!("/admin/v1/tenants/{tenant}/keys/nope"),
        ),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Nothing refused was written: two tenants, two keys.
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(events, 4);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_operator_api_needs_the_operator_token(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let key = stack.mint_key(tenant, &["admin"]).await;

    let routes = [
        (Method::POST, "/admin/v1/tenants".to_owned()),
        (Method::POST, format!("/admin/v1/tenants/{tenant}/keys")),
        (Method::GET, format!("/admin/v1/tenants/{tenant}/keys")),
        (
            Method::DELETE,
            format!("/admin/v1/tenants/{tenant}/keys/{}", key.id),
        ),
    ];
    for (method, path) in &routes {
        let body = json!({"name": "x", "label": "x", "scopes": ["read"]});
        refused(
            stack.request(method.clone(), path).json(&body),
            StatusCode::UNAUTHORIZED,
            "missing_auth",
        )
        .await;
        refused(
            stack
                .request(method.clone(), path)
                .header("authorization", format!("Basic {ADMIN_TOKEN}")),
            StatusCode::UNAUTHORIZED,
            "missing_auth",
        )
        .await;
        for wrong in [&format!("{ADMIN_TOKEN}x"), &ADMIN_TOKEN[1..], "x"] {
            refused(
                stack
                    .request(method.clone(), path)
                    .bearer_auth(wrong)
                    .json(&body),
                StatusCode::UNAUTHORIZED,
                "invalid_admin_token",
            )
            .await;
        }
        // A tenant's key, even an admin one, is not the operator.
        refused(
            stack
                .request(method.clone(), path)
                .bearer_auth(&key.key)
                .json(&body),
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
        )
        .await;
    }
    // Without the token, a wrong method does not reveal the route.
    refused(
        stack.request(Method::PUT, "/admin/v1/tenants"),
        StatusCode::UNAUTHORIZED,
        "missing_auth",
    )
    .await;
    refused(
        stack.admin(Method::PUT, "/admin/v1/tenants"),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    // Nothing was revoked by all that.
    let (status, _) = me(&stack, &key.key).await;
    assert_eq!(status, StatusCode::OK);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn without_an_operator_token_the_operator_api_does_not_exist(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack_with(&env, |config| config.admin_token = None).await;
    let tenant = Uuid::now_v7();
    let routes = [
        (Method::POST, "/admin/v1/tenants".to_owned()),
        (Method::PUT, "/admin/v1/tenants".to_owned()),
        (Method::POST, format!("/admin/v1/tenants/{tenant}/keys")),
        (Method::GET, format!("/admin/v1/tenants/{tenant}/keys")),
        (
            Method::DELETE,
            format!("/admin/v1/tenants/{tenant}/keys/{tenant}"),
        ),
    ];
    for (method, path) in &routes {
        for token in [None, Some(ADMIN_TOKEN), Some("")] {
            let mut request = stack
                .request(method.clone(), path)
                .json(&json!({"name": "x", "label": "x", "scopes": ["read"]}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            refused(request, StatusCode::NOT_FOUND, "not_found").await;
        }
    }
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_tenant_never_reaches_another_tenants_keys(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let a = stack.tenant_with_key("Tenant A", &["admin"]).await;
    let a_other = stack.mint_key(a.tenant_id, &["read"]).await;
    let b = stack.tenant_with_key("Tenant B", &["admin"]).await;

    // B's list holds B's key only, and nothing of A's.
    let list = stack
        .send_ok(
            stack.with_key(Method::GET, "/api/v1/keys", &b.key),
            StatusCode::OK,
        )
        .await;
    assert_eq!(key_ids(&list), [b.id.to_string()]);
    let text = list.to_string();
    for k in [&a, &a_other] {
        assert!(!text.contains(&k.id.to_string()));
        assert!(!text.contains(&k.key[..13]));
    }

    // B cannot revoke A's keys, by either API: 404, never 403.
    for k in [&a, &a_other] {
        refused(
            stack.with_key(Method::DELETE, &format!("/api/v1/keys/{}", k.id), &b.key),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        refused(
            stack.admin(
                Method::DELETE,
                &format!("/admin/v1/tenants/{}/keys/{}", b.tenant_id, k.id),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    // …and A's keys still work, with nothing appended to their streams.
    for k in [&a, &a_other] {
        let (status, body) = me(&stack, &k.key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["tenant"]["id"], a.tenant_id.to_string());
        assert_eq!(events_of_stream(&pool, k.id).await, ["KeyMinted"]);
    }

    // A key minted by B through self-service lands in B, not in A.
    let minted = stack
        .send_ok(
            stack
                .with_key(Method::POST, "/api/v1/keys", &b.key)
                .json(&json!({"label": "b2", "scopes": ["read"]})),
            StatusCode::CREATED,
        )
        .await;
    let b2 = minted["data"]["id"].as_str().expect("id").to_owned();
    let list_a = stack
        .send_ok(
            stack.with_key(Method::GET, "/api/v1/keys", &a.key),
            StatusCode::OK,
        )
        .await;
    assert!(!key_ids(&list_a).contains(&b2));
    assert_eq!(list_a["data"].as_array().map(Vec::len), Some(2));
    let list_b = stack
        .send_ok(
            stack.admin(
                Method::GET,
                &format!("/admin/v1/tenants/{}/keys", b.tenant_id),
            ),
            StatusCode::OK,
        )
        .await;
    assert_eq!(key_ids(&list_b), [b2, b.id.to_string()], "newest first");
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn only_admin_keys_manage_keys_and_any_key_reads_me(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let admin = stack.tenant_with_key("Acme", &["admin"]).await;
    let read = stack.mint_key(admin.tenant_id, &["read"]).await;
    let write = stack.mint_key(admin.tenant_id, &["write"]).await;

    for k in [&read, &write] {
        let (status, body) = me(&stack, &k.key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for (method, path) in [
            (Method::GET, "/api/v1/keys".to_owned()),
            (Method::POST, "/api/v1/keys".to_owned()),
            (Method::DELETE, format!("/api/v1/keys/{}", admin.id)),
        ] {
            let body = refused(
                stack
                    .with_key(method, &path, &k.key)
                    .json(&json!({"label": "x", "scopes": ["admin"]})),
                StatusCode::FORBIDDEN,
                "missing_scope",
            )
            .await;
            assert!(body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("admin"));
        }
    }
    refused(
        stack.request(Method::GET, "/api/v1/keys"),
        StatusCode::UNAUTHORIZED,
        "missing_auth",
    )
    .await;
    refused(
        stack.request(Method::GET, "/api/v1/me"),
        StatusCode::UNAUTHORIZED,
        "missing_auth",
    )
    .await;
    let (status, _) = me(&stack, &admin.key).await;
    assert_eq!(status, StatusCode::OK);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_tenant_rotates_its_key_without_the_operator(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let old = stack.tenant_with_key("Acme", &["admin"]).await;

    // Two live keys at once.
    let minted = stack
        .send_ok(
            stack
                .with_key(Method::POST, "/api/v1/keys", &old.key)
                .json(&json!({"label": "rotated", "scopes": ["admin"]})),
            StatusCode::CREATED,
        )
        .await;
    let new_key = minted["data"]["key"].as_str().expect("key").to_owned();
    let new_id = minted["data"]["id"].as_str().expect("id").to_owned();
    for key in [&old.key, &new_key] {
        let (status, body) = me(&stack, key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let list = stack
        .send_ok(
            stack.with_key(Method::GET, "/api/v1/keys", &new_key),
            StatusCode::OK,
        )
        .await;
    assert_eq!(key_ids(&list), [new_id.clone(), old.id.to_string()]);
    assert!(!list.to_string().contains(&new_key[13..]));

    // Then the old one is revoked with the new one.
    stack
        .send_ok(
            stack.with_key(
                Method::DELETE,
                &format!("/api/v1/keys/{}", old.id),
                &new_key,
            ),
            StatusCode::NO_CONTENT,
        )
        .await;
    eventually_refused(&stack, &old.key, "revoked").await;
    let (status, body) = me(&stack, &new_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["key"]["id"], new_id);

    // A key may revoke itself.
    stack
        .send_ok(
            stack.with_key(Method::DELETE, &format!("/api/v1/keys/{new_id}"), &new_key),
            StatusCode::NO_CONTENT,
        )
        .await;
    eventually_refused(&stack, &new_key, "revoked").await;
    stack.shutdown().await;
}

/// Runs `jeanus-api admin …` as a real process against the test database:
/// (exit success, stdout, stderr).
async fn cli(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(jeanus_tests::process::binary("jeanus-api"))
        .arg("admin")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &env.database_url)
        // Deliberately unreachable: the admin commands need no NATS.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("jeanus-api runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_cli_creates_a_tenant_and_mints_a_key_that_works(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;

    let (ok, stdout, stderr) = cli(&env, &["create-tenant", "--name", "Acme Roofing"]).await;
    assert!(ok, "create-tenant failed: {stderr}");
    let tenant: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(tenant["data"]["name"], "Acme Roofing");
    let tenant_id = tenant["data"]["id"].as_str().expect("id").to_owned();

    let (ok, stdout, stderr) = cli(
        &env,
        &[
            "mint-key",
            "--tenant",
            &tenant_id,
            "--scopes",
            "read,write",
            "--label",
            "from the cli",
            "--rate-limit",
            "120",
            "--allowed-ips",
            "127.0.0.0/8,::1",
        ],
    )
    .await;
    assert!(ok, "mint-key failed: {stderr}");
    let minted: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let data = &minted["data"];
    assert_eq!(data["scopes"], json!(["read", "write"]));
    assert_eq!(data["label"], "from the cli");
    assert_eq!(data["rate_limit_per_minute"], 120);
    assert_eq!(data["allowed_ips"], json!(["127.0.0.0/8", "::1/128"]));
    let key = data["key"].as_str().expect("the plaintext").to_owned();
    assert_eq!(data["masked"], format!("{}****", &key[..13]));

    // The key works over HTTP (the CLI waited for the projector).
    let (status, body) = me(&stack, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["tenant"]["id"], tenant_id);
    assert_eq!(body["data"]["tenant"]["name"], "Acme Roofing");
    assert_eq!(body["data"]["key"]["label"], "from the cli");

    // The CLI validates as the API does, and checks the tenant in the log.
    let (ok, stdout, stderr) = cli(
        &env,
        &[
            "mint-key",
            "--tenant",
            &tenant_id,
            "--scopes",
            "read,root",
            "--label",
            "x",
        ],
    )
    .await;
    assert!(!ok && stdout.is_empty());
    assert!(stderr.contains("\"scopes\""), "{stderr}");
    let unknown = Uuid::now_v7().to_string();
    let (ok, _, stderr) = cli(
        &env,
        &[
            "mint-key", "--tenant", &unknown, "--scopes", "read", "--label", "x",
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains(&unknown), "{stderr}");
    let (ok, _, stderr) = cli(&env, &["create-tenant", "--name", ""]).await;
    assert!(!ok);
    assert!(stderr.contains("\"name\""), "{stderr}");
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_database_dump_after_minting_holds_no_key(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let admin = stack.tenant_with_key("Acme", &["admin"]).await;
    let mut keys: Vec<MintedKey> = vec![admin.clone()];
    keys.push(
        stack
            .mint_key_with(
                admin.tenant_id,
                json!({"label": "t", "scopes": ["read"], "mode": "test"}),
            )
            .await,
    );
    let minted = stack
        .send_ok(
            stack
                .with_key(Method::POST, "/api/v1/keys", &admin.key)
                .json(&json!({"label": "self", "scopes": ["write"]})),
            StatusCode::CREATED,
        )
        .await;
    let self_minted = minted["data"]["key"].as_str().expect("key").to_owned();
    // Use every key once, so that the audit log has its say in the dump too.
    let mut plaintexts: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
    plaintexts.push(self_minted);
    for key in &plaintexts {
        let (status, _) = me(&stack, key).await;
        assert_eq!(status, StatusCode::OK);
    }

    let output = tokio::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(&env.database_url)
        .output()
        .await
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dump = String::from_utf8_lossy(&output.stdout);
    assert!(dump.contains("KeyMinted"), "the dump holds the event log");
    for key in &plaintexts {
        let secret = &key[9..];
        assert!(
            !dump.contains(key.as_str()),
            "the dump holds a plaintext key"
        );
        assert!(!dump.contains(secret), "the dump holds a key's secret");
        // Beyond the displayable start, not even part of it.
        assert!(
            !dump.contains(&key[13..]),
            "the dump holds the hidden part of a key"
        );
        assert!(
            !dump.contains(&key[9..39]),
            "the dump holds the random part of a key"
        );
    }
    stack.shutdown().await;
}
