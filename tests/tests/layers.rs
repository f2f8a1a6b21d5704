//! The layers on every `/api/v1` request, end to end against real servers:
//! authentication (every 401), scopes (403 `missing_scope`), the IP
//! allowlist (directly and through proxies), the global rate limit (headers,
//! exactness across instances, never refusing a client under the limit, a
//! write beyond it never running),
//! revocation across instances, the audit log (entries for 2xx, 401, 403 and
//! 429, and none missing after SIGKILL), and what happens when their
//! PostgreSQL tables fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::auth::key::{Mode, PlainKey};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use jeanus_tests::faults::{redis_address, redis_url_through, Relay, TableAway};
use jeanus_tests::process::Service;
use jeanus_tests::stack::{send, MintedKey};
use jeanus_tests::writes::{answer, Answer};
use jeanus_tests::{eventually, spawn_stack, spawn_stack_with, Stack, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn me(stack: &Stack, key: &str) -> Answer {
    answer(stack.with_key(Method::GET, "/api/v1/me", key)).await
}

async fn key_with(stack: &Stack, tenant: Uuid, scopes: &[&str], extra: Value) -> MintedKey {
    let mut request = json!({ "label": format!("layers {}", scopes.join("+")), "scopes": scopes });
    if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
        request.extend(extra.clone());
    }
    stack.mint_key_with(tenant, request).await
}

fn unknown_key() -> String {
    PlainKey::generate(Mode::Live).expose().to_owned()
}

// ---- authentication --------------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_authentication_failure_has_its_own_401_code(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let valid = stack.mint_key(tenant, &["read"]).await;

    let ok = me(&stack, &valid.key).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert!(!ok.request_id().is_empty());

    let none = answer(stack.request(Method::GET, "/api/v1/me")).await;
    none.assert_error(StatusCode::UNAUTHORIZED, "missing_auth");
    // A scheme other than Bearer presents no API key: missing_auth too.
    let basic = answer(
        stack
            .request(Method::GET, "/api/v1/me")
            .header("authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    basic.assert_error(StatusCode::UNAUTHORIZED, "missing_auth");

    for malformed in [
        "garbage",
        "jns_live_",
        &valid.key[..valid.key.len() - 1],
        &format!("{}x", valid.key),
        &valid.key.replace("jns_live_", "jns_prod_"),
        // One character of the secret changed: the checksum no longer fits.
        &flip_secret_char(&valid.key),
    ] {
        me(&stack, malformed)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "invalid_format");
    }

    me(&stack, &unknown_key())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_key");

    let revoked = stack.mint_key(tenant, &["read"]).await;
    assert_eq!(me(&stack, &revoked.key).await.status, StatusCode::OK);
    stack
        .send_ok(
            stack.admin(
                Method::DELETE,
                &format!("/admin/v1/tenants/{tenant}/keys/{}", revoked.id),
            ),
            StatusCode::NO_CONTENT,
        )
        .await;
    me(&stack, &revoked.key)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "revoked");

    let expires_at = Utc::now() + chrono::Duration::seconds(3);
    let expiring = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "expires_at": expires_at.to_rfc3339() }),
    )
    .await;
    assert_eq!(me(&stack, &expiring.key).await.status, StatusCode::OK);
    let expired = eventually("the key to expire", Duration::from_secs(10), || async {
        let a = me(&stack, &expiring.key).await;
        (a.status == StatusCode::UNAUTHORIZED).then_some(a)
    })
    .await;
    expired.assert_error(StatusCode::UNAUTHORIZED, "expired");
    assert!(Utc::now() >= expires_at);

    stack.shutdown().await;
}

/// The key with one character of its secret replaced by another.
fn flip_secret_char(key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let i = "jns_live_".len() + 3;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

// ---- scopes ----------------------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn each_scope_reaches_exactly_its_endpoints(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let read = stack.mint_key(tenant, &["read"]).await;
    let write = stack.mint_key(tenant, &["write"]).await;
    let admin = stack.mint_key(tenant, &["admin"]).await;
    let victim = stack.mint_key(tenant, &["read"]).await;

    let mint_body = json!({ "label": "rotated", "scopes": ["read"] });
    for key in [&read, &write] {
        // /me needs no scope.
        assert_eq!(me(&stack, &key.key).await.status, StatusCode::OK);
        let refusals = [
            stack
                .with_key(Method::POST, "/api/v1/keys", &key.key)
                .json(&mint_body),
            stack.with_key(Method::GET, "/api/v1/keys", &key.key),
            stack.with_key(
                Method::DELETE,
                &format!("/api/v1/keys/{}", victim.id),
                &key.key,
            ),
            stack.with_key(Method::GET, "/api/v1/audit-log", &key.key),
        ];
        for request in refusals {
            let a = answer(request).await;
            a.assert_error(StatusCode::FORBIDDEN, "missing_scope");
            let message = a.body["error"]["message"].as_str().expect("a message");
            assert!(message.contains("admin"), "names the scope: {message}");
            // Refused after authentication: the quota headers are there.
            assert!(a.header("x-ratelimit-limit").is_some(), "{a:?}");
        }
    }
    assert_eq!(me(&stack, &victim.key).await.status, StatusCode::OK);

    let a = answer(
        stack
            .with_key(Method::POST, "/api/v1/keys", &admin.key)
            .json(&mint_body),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let a = answer(stack.with_key(Method::GET, "/api/v1/keys", &admin.key)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = answer(stack.with_key(Method::GET, "/api/v1/audit-log", &admin.key)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = answer(stack.with_key(
        Method::DELETE,
        &format!("/api/v1/keys/{}", victim.id),
        &admin.key,
    ))
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{a:?}");
    me(&stack, &victim.key)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "revoked");

    stack.shutdown().await;
}

// ---- IP allowlist ----------------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_allowlist_uses_the_socket_address_and_ignores_forwarded_for(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    // No trusted proxies: X-Forwarded-For is the client's own say-so.
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let loopback = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "allowed_ips": ["127.0.0.1/32"] }),
    )
    .await;
    let elsewhere = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "allowed_ips": ["203.0.113.0/24"] }),
    )
    .await;
    let anywhere = stack.mint_key(tenant, &["read"]).await;

    assert_eq!(me(&stack, &loopback.key).await.status, StatusCode::OK);
    assert_eq!(me(&stack, &anywhere.key).await.status, StatusCode::OK);
    let refused = me(&stack, &elsewhere.key).await;
    refused.assert_error(StatusCode::FORBIDDEN, "ip_not_allowed");
    assert_eq!(refused.number("x-ratelimit-remaining"), 60, "not spent");

    // Spoofing the allowlisted address gets nowhere, and does not lock out
    // the real client either.
    let spoofed = answer(
        stack
            .with_key(Method::GET, "/api/v1/me", &elsewhere.key)
            .header("x-forwarded-for", "203.0.113.7"),
    )
    .await;
    spoofed.assert_error(StatusCode::FORBIDDEN, "ip_not_allowed");
    let a = answer(
        stack
            .with_key(Method::GET, "/api/v1/me", &loopback.key)
            .header("x-forwarded-for", "198.51.100.1"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn behind_a_trusted_proxy_the_forwarded_client_is_checked(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    // The test client on 127.0.0.1 plays the reverse proxy.
    let stack = spawn_stack_with(&env, |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a CIDR")];
    })
    .await;
    let tenant = stack.create_tenant("Acme").await;
    let v4 = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "allowed_ips": ["203.0.113.0/24"] }),
    )
    .await;
    let v6 = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "allowed_ips": ["2001:db8::/32"] }),
    )
    .await;
    let loopback = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "allowed_ips": ["127.0.0.1/32"] }),
    )
    .await;

    let via = |key: &str, xff: &str| {
        stack
            .with_key(Method::GET, "/api/v1/me", key)
            .header("x-forwarded-for", xff)
    };
    assert_eq!(
        answer(via(&v4.key, "203.0.113.7")).await.status,
        StatusCode::OK
    );
    // A client-supplied entry to the left of the proxy's is not the client.
    assert_eq!(
        answer(via(&v4.key, "198.51.100.1, 203.0.113.7"))
            .await
            .status,
        StatusCode::OK
    );
    answer(via(&v4.key, "203.0.113.7, 198.51.100.1"))
        .await
        .assert_error(StatusCode::FORBIDDEN, "ip_not_allowed");
    assert_eq!(
        answer(via(&v6.key, "2001:db8::5")).await.status,
        StatusCode::OK
    );
    answer(via(&v6.key, "2001:db9::5"))
        .await
        .assert_error(StatusCode::FORBIDDEN, "ip_not_allowed");
    // The proxy's own address is not the client's.
    answer(via(&loopback.key, "203.0.113.7"))
        .await
        .assert_error(StatusCode::FORBIDDEN, "ip_not_allowed");
    // Without the header, the (trusted) peer is all we know.
    assert_eq!(me(&stack, &loopback.key).await.status, StatusCode::OK);

    // The audit log records the forwarded client.
    let logged: Vec<String> = sqlx::query_scalar(
        "select host(client_ip) from audit_log where key_id = $1 and status = 200",
    )
    .bind(v4.id)
    .fetch_all(&env.pool)
    .await
    .expect("audit rows");
    assert_eq!(logged, ["203.0.113.7", "203.0.113.7"]);

    stack.shutdown().await;
}

// ---- rate limit ------------------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_response_carries_the_quota_and_beyond_it_is_429(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let key = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "rate_limit_per_minute": 3 }),
    )
    .await;

    let started = Utc::now().timestamp();
    let first = me(&stack, &key.key).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.number("x-ratelimit-limit"), 3);
    assert_eq!(first.number("x-ratelimit-remaining"), 2);
    let reset = first.number("x-ratelimit-reset");
    assert!(
        (started..=Utc::now().timestamp() + 1).contains(&reset),
        "free now: {reset}"
    );
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"default\";q=3;w=60")
    );
    assert_eq!(first.header("ratelimit"), Some("\"default\";r=2;t=0"));

    // An error after authentication spends quota and says so too.
    let refused = answer(stack.with_key(Method::GET, "/api/v1/keys", &key.key)).await;
    refused.assert_error(StatusCode::FORBIDDEN, "missing_scope");
    assert_eq!(refused.number("x-ratelimit-remaining"), 1);

    let last = me(&stack, &key.key).await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.number("x-ratelimit-remaining"), 0);
    let reset = last.number("x-ratelimit-reset");
    let now = Utc::now().timestamp();
    assert!(
        (now + 58..=now + 61).contains(&reset),
        "free when the first leaves the window: {reset} vs now {now}"
    );

    let limited = me(&stack, &key.key).await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after = limited.number("retry-after");
    assert!(
        (58..=60).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(limited.number("x-ratelimit-limit"), 3);
    assert_eq!(limited.number("x-ratelimit-remaining"), 0);
    let t = limited
        .header("ratelimit")
        .and_then(|v| v.strip_prefix("\"default\";r=0;t="))
        .and_then(|t| t.parse::<i64>().ok())
        .expect("RateLimit: \"default\";r=0;t=<seconds>");
    assert_eq!(t, retry_after);

    // Another key of the same tenant has its own quota.
    let other = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "rate_limit_per_minute": 3 }),
    )
    .await;
    assert_eq!(me(&stack, &other.key).await.status, StatusCode::OK);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_limit_is_exact_across_three_instances_under_a_tenfold_burst(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let mut stack = spawn_stack(&env).await;
    stack.spawn_api().await;
    stack.spawn_api().await;
    let urls = stack.api_urls();
    assert_eq!(urls.len(), 3);
    let tenant = stack.create_tenant("Acme").await;
    let key = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "rate_limit_per_minute": 5 }),
    )
    .await;

    let requests = (0..50).map(|i| {
        let url = format!("{}/api/v1/me", urls[i % urls.len()]);
        answer(stack.client.get(url).bearer_auth(&key.key))
    });
    let answers = join_all(requests).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok, 5, "exactly the limit succeeds");
    assert_eq!(limited.len(), 45, "every other request is refused");
    for a in limited {
        a.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert!(a.number("retry-after") >= 1);
    }

    stack.shutdown().await;
}

/// Beyond the limit a write is refused before its handler runs, so nothing
/// is appended; a refused read and a refused write are answered and audited
/// alike.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn beyond_the_limit_a_write_never_runs(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let key = key_with(
        &stack,
        tenant,
        &["write"],
        json!({ "rate_limit_per_minute": 2 }),
    )
    .await;
    let create = |name: &str| {
        answer(
            stack
                .with_key(Method::POST, "/api/v1/leads", &key.key)
                .json(&json!({ "name": name })),
        )
    };
    let leads_created = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from events where event_type = 'LeadCreated' and tenant_id = $1",
        )
        .bind(tenant)
        .fetch_one(&pool)
        .await
        .expect("count the lead events")
    };

    let read = me(&stack, &key.key).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.number("x-ratelimit-remaining"), 1);
    let written = create("First").await;
    assert_eq!(written.status, StatusCode::CREATED, "{written:?}");
    assert_eq!(written.number("x-ratelimit-remaining"), 0);
    assert_eq!(leads_created().await, 1);

    let write = create("Beyond").await;
    let read = me(&stack, &key.key).await;
    for refused in [&write, &read] {
        refused.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert!((58..=60).contains(&refused.number("retry-after")));
        assert_eq!(refused.number("x-ratelimit-remaining"), 0);
        let (status, code): (i16, Option<String>) =
            sqlx::query_as("select status, error_code from audit_log where request_id = $1")
                .bind(refused.request_id())
                .fetch_one(&pool)
                .await
                .expect("the refusal is audited");
        assert_eq!((status, code.as_deref()), (429, Some("rate_limited")));
    }
    assert_eq!(leads_created().await, 1, "the refused write ran");

    stack.shutdown().await;
}

/// With a 1 s window (`JEANUS_RATE_LIMIT_WINDOW`, for tests only), a client
/// that sends its whole quota at once, then waits a window before the next
/// burst, is never refused, window after window, across three instances;
/// one request more than the quota is refused in each window.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_client_that_keeps_under_the_limit_is_never_refused(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let window = Duration::from_secs(1);
    let mut stack = spawn_stack_with(&env, |c| c.rate_limit_window = window).await;
    stack.spawn_api().await;
    stack.spawn_api().await;
    let urls = stack.api_urls();
    let tenant = stack.create_tenant("Acme").await;
    let key = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "rate_limit_per_minute": 5 }),
    )
    .await;
    let get = |i: usize| {
        let url = format!("{}/api/v1/me", urls[i % urls.len()]);
        answer(stack.client.get(url).bearer_auth(&key.key))
    };

    for round in 0..4 {
        let burst = join_all((0..5).map(|i| get(round + i))).await;
        for a in &burst {
            assert_eq!(a.status, StatusCode::OK, "round {round}: {a:?}");
            assert_eq!(a.header("ratelimit-policy"), Some("\"default\";q=5;w=1"));
        }
        let extra = get(round).await;
        extra.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        assert_eq!(extra.number("retry-after"), 1);
        // Every request of the burst was decided before its answer arrived:
        // a window after the last answer, all have left the window.
        tokio::time::sleep(window + Duration::from_millis(30)).await;
    }

    // A steady client under the limit: 3 requests per window.
    for i in 0..9 {
        let a = get(i).await;
        assert_eq!(a.status, StatusCode::OK, "steady request {i}: {a:?}");
        tokio::time::sleep(Duration::from_millis(340)).await;
    }

    stack.shutdown().await;
}

// ---- revocation --------------------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_revoked_key_is_refused_by_another_instance_within_a_second(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let mut stack = spawn_stack(&env).await;
    let other = stack.spawn_api().await;
    let tenant = stack.create_tenant("Acme").await;
    let key = stack.mint_key(tenant, &["read"]).await;
    let on_other = || {
        answer(
            stack
                .client
                .get(format!("{other}/api/v1/me"))
                .bearer_auth(&key.key),
        )
    };
    // The other instance has the key cached as live (for up to 10 s).
    assert_eq!(on_other().await.status, StatusCode::OK);
    assert_eq!(on_other().await.status, StatusCode::OK);

    let revoking = Instant::now();
    stack
        .send_ok(
            stack.admin(
                Method::DELETE,
                &format!("/admin/v1/tenants/{tenant}/keys/{}", key.id),
            ),
            StatusCode::NO_CONTENT,
        )
        .await;
    let refused = eventually(
        "the other instance to refuse the key",
        Duration::from_secs(1),
        || async {
            let a = on_other().await;
            (a.status != StatusCode::OK).then_some(a)
        },
    )
    .await;
    let took = revoking.elapsed();
    refused.assert_error(StatusCode::UNAUTHORIZED, "revoked");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    stack.shutdown().await;
}

// ---- malformed keys touch no table -------------------------------------------

/// Scans of `api_keys` (the table every key lookup reads) as PostgreSQL
/// counts them, whatever backend made them, once every other backend on the
/// test database has exited. A backend reports its counters with a delay of
/// up to 10 s while it lives (PostgreSQL 15's cumulative statistics), but
/// always before it exits, and it leaves `pg_stat_activity` only after that:
/// so once no other backend is left, every scan ever made is counted.
async fn settled_api_key_scans(stats: &mut PgConnection) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *stats)
        .await
        .expect("pg_stat_activity");
        if others == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{others} backends still on the database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new snapshot of the statistics (they are cached per transaction).
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut *stats)
        .await
        .expect("clear the statistics snapshot");
    sqlx::query_scalar(
        "select coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::bigint
           from pg_stat_user_tables where relname = 'api_keys'",
    )
    .fetch_one(stats)
    .await
    .expect("table statistics")
}

/// Counted by PostgreSQL itself (see [`settled_api_key_scans`]): the stack
/// runs once per phase and is stopped before counting. The background work
/// (relay, projector, projection watcher) never reads `api_keys`. A positive
/// control (one lookup of a fresh key) shows what one lookup adds; a burst
/// of 200 malformed keys followed by one more control lookup adds exactly
/// that much again.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_malformed_key_makes_no_database_query(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    // Only our own connection stays on the database between phases.
    env.pool.close().await;
    let mut stats = PgConnection::connect(&env.database_url)
        .await
        .expect("a statistics connection");

    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let first = stack.mint_key(tenant, &["read"]).await;
    let second = stack.mint_key(tenant, &["read"]).await;
    stack.shutdown().await;
    let before = settled_api_key_scans(&mut stats).await;

    let stack = spawn_stack(&env).await;
    assert_eq!(me(&stack, &first.key).await.status, StatusCode::OK);
    stack.shutdown().await;
    let after_control = settled_api_key_scans(&mut stats).await;
    let per_lookup = after_control - before;
    assert!(per_lookup >= 1, "the counter sees a lookup");

    let stack = spawn_stack(&env).await;
    let malformed: Vec<String> = (0..200)
        .map(|i| match i % 4 {
            0 => flip_secret_char(&first.key),
            1 => format!("jns_live_{i}"),
            2 => first.key.replace("jns_live_", "jns_nope_"),
            _ => format!("{}{i}", second.key),
        })
        .collect();
    let answers = join_all(malformed.iter().map(|k| me(&stack, k))).await;
    for a in &answers {
        a.assert_error(StatusCode::UNAUTHORIZED, "invalid_format");
    }
    assert_eq!(me(&stack, &second.key).await.status, StatusCode::OK);
    stack.shutdown().await;
    let after = settled_api_key_scans(&mut stats).await;
    assert_eq!(
        after - after_control,
        per_lookup,
        "only the control lookup scanned api_keys; 200 malformed keys none"
    );
    stats.close().await.expect("close");
}

// ---- audit log -------------------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn successes_and_refusals_are_audited_with_their_request_ids(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let admin = stack.mint_key(tenant, &["admin"]).await;
    let read = stack.mint_key(tenant, &["read"]).await;
    let fenced = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "allowed_ips": ["203.0.113.0/24"] }),
    )
    .await;
    let tight = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "rate_limit_per_minute": 1 }),
    )
    .await;
    let revoked = stack.mint_key(tenant, &["read"]).await;
    stack
        .send_ok(
            stack.admin(
                Method::DELETE,
                &format!("/admin/v1/tenants/{tenant}/keys/{}", revoked.id),
            ),
            StatusCode::NO_CONTENT,
        )
        .await;

    // (answer, key id, expected code)
    let mut seen = Vec::new();
    let ok = answer(
        stack
            .with_key(Method::GET, "/api/v1/me?verbose=1", &read.key)
            .header("user-agent", "layers-test/1.0"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let ok_id = ok.request_id();
    seen.push((ok, Some(read.id), None));
    let a = answer(stack.with_key(Method::GET, "/api/v1/keys", &read.key)).await;
    seen.push((a, Some(read.id), Some("missing_scope")));
    let a = me(&stack, &fenced.key).await;
    seen.push((a, Some(fenced.id), Some("ip_not_allowed")));
    assert_eq!(me(&stack, &tight.key).await.status, StatusCode::OK);
    let a = me(&stack, &tight.key).await;
    seen.push((a, Some(tight.id), Some("rate_limited")));
    let a = me(&stack, &revoked.key).await;
    seen.push((a, Some(revoked.id), Some("revoked")));

    let page = stack
        .send_ok(
            stack.with_key(Method::GET, "/api/v1/audit-log?limit=200", &admin.key),
            StatusCode::OK,
        )
        .await;
    let entries = page["data"].as_array().expect("data");
    let by_request: HashMap<&str, &Value> = entries
        .iter()
        .map(|e| (e["request_id"].as_str().expect("request_id"), e))
        .collect();
    for (a, key_id, code) in &seen {
        let id = a.request_id();
        let entry = by_request
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no audit entry for {a:?}"));
        assert_eq!(entry["status"], a.status.as_u16(), "{entry}");
        assert_eq!(entry["error_code"].as_str(), *code, "{entry}");
        assert_eq!(entry["key_id"], json!(key_id), "{entry}");
        assert_eq!(entry["tenant_id"], json!(tenant), "{entry}");
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["client_ip"], "127.0.0.1");
        assert!(entry["key_label"].is_string() && entry["latency_ms"].is_number());
    }
    let entry = by_request[ok_id.as_str()];
    assert_eq!(entry["route"], "/api/v1/me");
    assert_eq!(entry["path"], "/api/v1/me");
    assert_eq!(entry["query"], "verbose=1");
    assert_eq!(entry["user_agent"], "layers-test/1.0");
    assert_eq!(page["pagination"]["limit"], 200);
    assert_eq!(page["pagination"]["total"], entries.len());
    // Newest first.
    let times: Vec<DateTime<Utc>> = entries
        .iter()
        .map(|e| e["at"].as_str().expect("at").parse().expect("RFC 3339"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    // Filters.
    let filtered = stack
        .send_ok(
            stack.with_key(
                Method::GET,
                &format!("/api/v1/audit-log?key_id={}&status=429", tight.id),
                &admin.key,
            ),
            StatusCode::OK,
        )
        .await;
    assert_eq!(filtered["pagination"]["total"], 1, "{filtered}");
    assert_eq!(filtered["data"][0]["error_code"], "rate_limited");
    let future = stack
        .send_ok(
            stack.with_key(
                Method::GET,
                "/api/v1/audit-log?since=2100-01-01T00:00:00Z",
                &admin.key,
            ),
            StatusCode::OK,
        )
        .await;
    assert_eq!(future["data"], json!([]));
    let bad = answer(stack.with_key(Method::GET, "/api/v1/audit-log?limit=500", &admin.key)).await;
    bad.assert_error(StatusCode::BAD_REQUEST, "invalid_param");

    // Requests tied to no tenant are in the operator's untenanted log.
    let anonymous = answer(stack.request(Method::GET, "/api/v1/me")).await;
    anonymous.assert_error(StatusCode::UNAUTHORIZED, "missing_auth");
    let garbled = me(&stack, "jns_live_garbled").await;
    garbled.assert_error(StatusCode::UNAUTHORIZED, "invalid_format");
    let untenanted = stack
        .send_ok(
            stack.admin(Method::GET, "/admin/v1/audit-log?status=401"),
            StatusCode::OK,
        )
        .await;
    let ids: Vec<&str> = untenanted["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["request_id"].as_str().expect("request_id"))
        .collect();
    assert!(
        ids.contains(&anonymous.request_id().as_str()),
        "{untenanted}"
    );
    assert!(ids.contains(&garbled.request_id().as_str()), "{untenanted}");
    assert!(untenanted["data"][0]["tenant_id"].is_null());

    // The operator sees the tenant's log, including its own requests about it.
    let operator_view = stack
        .send_ok(
            stack.admin(
                Method::GET,
                &format!("/admin/v1/tenants/{tenant}/audit-log?limit=200"),
            ),
            StatusCode::OK,
        )
        .await;
    let routes: Vec<&str> = operator_view["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["route"].as_str())
        .collect();
    assert!(
        routes.contains(&"/admin/v1/tenants/{tenant_id}/keys"),
        "{routes:?}"
    );
    assert!(routes.contains(&"/api/v1/me"), "{routes:?}");

    // No key, in any form, is in the log.
    let dump: Vec<String> = sqlx::query_scalar("select a::text from audit_log a")
        .fetch_all(&env.pool)
        .await
        .expect("rows");
    for key in [&admin.key, &read.key, &fenced.key, &tight.key, &revoked.key] {
        let secret = &key["jns_live_".len()..];
        assert!(
            dump.iter().all(|row| !row.contains(secret)),
            "a key leaked into the audit log"
        );
    }

    stack.shutdown().await;
}

/// A real `jeanus-api` process under load, killed with SIGKILL mid-stream:
/// every response a client received (success or refusal) has its entry.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn after_sigkill_under_load_every_answered_request_is_audited(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let key = key_with(
        &stack,
        tenant,
        &["read"],
        json!({ "rate_limit_per_minute": 10000 }),
    )
    .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Service::start(
        "jeanus-api",
        &[],
        &[
            ("DATABASE_URL", env.database_url.clone()),
            ("NATS_URL", env.nats_url.clone()),
            ("REDIS_URL", env.redis_url.clone()),
            ("JEANUS_NATS_PREFIX", env.prefix().to_owned()),
            ("JEANUS_API_ADDR", format!("127.0.0.1:{port}")),
        ],
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    eventually(
        "the api process to be ready",
        Duration::from_secs(30),
        || async {
            let r = client.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        },
    )
    .await;

    let seen: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (client, base, key, seen) =
                (client.clone(), base.clone(), key.key.clone(), seen.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let mut request = client.get(format!("{base}/api/v1/me"));
                    // A mix of 200s and 401s.
                    if (w + i) % 3 != 0 {
                        request = request.bearer_auth(&key);
                    }
                    let Ok(response) = request.send().await else {
                        break;
                    };
                    let id = response
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .expect("X-Request-Id")
                        .to_owned();
                    let status = response.status().as_u16();
                    seen.lock().expect("lock").push((id, status));
                }
            })
        })
        .collect();
    eventually("a stream of answers", Duration::from_secs(30), || async {
        (seen.lock().expect("lock").len() >= 500).then_some(())
    })
    .await;
    api.kill();
    for w in workers {
        w.await.expect("a worker");
    }

    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().any(|(_, s)| *s == 200) && seen.iter().any(|(_, s)| *s == 401));
    let ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
    let logged: HashMap<String, i16> = sqlx::query_as::<_, (String, i16)>(
        "select request_id, status from audit_log where request_id = any($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .expect("audit rows")
    .into_iter()
    .collect();
    let missing: Vec<&(String, u16)> = seen
        .iter()
        .filter(|(id, status)| logged.get(id).map(|s| *s as u16) != Some(*status))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests lack their entry: {:?}",
        missing.len(),
        seen.len(),
        &missing[..missing.len().min(5)]
    );

    stack.shutdown().await;
}

// ---- failures of the stores ------------------------------------------------

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_request_whose_audit_entry_cannot_be_written_is_answered_503(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let key = stack.mint_key(tenant, &["read"]).await;
    assert_eq!(me(&stack, &key.key).await.status, StatusCode::OK);

    let away = TableAway::take(&pool, "audit_log").await;
    me(&stack, &key.key)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    answer(stack.request(Method::GET, "/api/v1/me"))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // Unaudited paths are unaffected.
    let health = answer(stack.request(Method::GET, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);

    away.restore().await;
    assert_eq!(me(&stack, &key.key).await.status, StatusCode::OK);

    stack.shutdown().await;
}

/// A stack whose api reaches Redis through a relay of the test's own, a
/// key, and the key's first answer.
async fn limiter_behind_a_relay(pool: &PgPool) -> (TestEnv, Relay, Stack, MintedKey, Answer) {
    let env = TestEnv::new(pool.clone()).await;
    let relay = Relay::to(redis_address()).await;
    let stack = spawn_stack_with(&env, |config| {
        config.redis_url = redis_url_through(&relay);
    })
    .await;
    let tenant = stack.create_tenant("Acme").await;
    let key = stack.mint_key(tenant, &["read"]).await;
    let first = me(&stack, &key.key).await;
    (env, relay, stack, key, first)
}

/// Requests of `key` pass again, within 10 s.
async fn passes_again(stack: &Stack, key: &MintedKey, what: &str) {
    eventually(what, Duration::from_secs(10), || async {
        (me(stack, &key.key).await.status == StatusCode::OK).then_some(())
    })
    .await;
}

/// Redis, the limiter's store, out of reach: every `/api/v1` request is
/// refused 503 `unavailable` (fail closed) and still audited; once Redis is
/// back, requests pass again without a restart.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn without_the_limiter_store_requests_fail_closed(pool: PgPool) {
    let (_env, relay, stack, key, first) = limiter_behind_a_relay(&pool).await;
    assert_eq!(first.status, StatusCode::OK);

    relay.cut();
    for _ in 0..2 {
        let asked = Instant::now();
        let refused = me(&stack, &key.key).await;
        // At once, not after the 10 s a decision may take.
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(
            refused.headers.get("x-ratelimit-remaining").is_none(),
            "no quota is reported without a decision"
        );
        // Still audited: the audit log is PostgreSQL's.
        let status: i16 = sqlx::query_scalar("select status from audit_log where request_id = $1")
            .bind(refused.request_id())
            .fetch_one(&pool)
            .await
            .expect("the refusal is audited");
        assert_eq!(status, 503);
    }
    let ready = answer(stack.request(Method::GET, "/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert!(ready.body["checks"]["redis"] != "ok", "{ready:?}");
    assert_eq!(ready.body["checks"]["postgres"], "ok", "{ready:?}");

    relay.restore();
    passes_again(&stack, &key, "requests to pass once Redis is back").await;
    let ready = answer(stack.request(Method::GET, "/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["checks"]["redis"], "ok", "{ready:?}");

    stack.shutdown().await;
}

/// Redis gone silent (the host vanished: connections stay open, nothing
/// answers): requests are refused 503 within seconds, not left waiting on
/// the dead connection, and pass again on a new connection once Redis is
/// reachable, without a restart.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_silent_limiter_store_fails_closed_and_is_left_behind(pool: PgPool) {
    let (_env, relay, stack, key, first) = limiter_behind_a_relay(&pool).await;
    assert_eq!(first.status, StatusCode::OK);

    relay.stall();
    for _ in 0..2 {
        let asked = Instant::now();
        let refused = me(&stack, &key.key).await;
        refused.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        // A second for the call, a second for one new connection: not the
        // 10 s a decision may take.
        assert!(
            asked.elapsed() < Duration::from_secs(8),
            "{:?}",
            asked.elapsed()
        );
    }

    relay.restore();
    passes_again(&stack, &key, "requests to pass on a new connection").await;

    stack.shutdown().await;
}

/// The request path's two writers each hold one connection (rate-limit
/// decisions to Redis, audit entries to PostgreSQL). Dropped between
/// requests, each costs its next batch one retry on a new connection, and no
/// request its answer or entry.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_writers_replace_a_killed_connection_without_failing_a_request(pool: PgPool) {
    let (_env, relay, stack, key, first) = limiter_behind_a_relay(&pool).await;
    assert_eq!(first.status, StatusCode::OK);

    let recording = || async {
        sqlx::query_scalar::<_, i32>(
            "select pid from pg_stat_activity \
              where datname = current_database() and application_name = $1",
        )
        .bind(api::gate::RECORDING)
        .fetch_all(&pool)
        .await
        .expect("pg_stat_activity")
    };
    let killed = recording().await;
    assert_eq!(
        killed.len(),
        1,
        "one connection for the audit log: {killed:?}"
    );
    sqlx::query("select pg_terminate_backend($1)")
        .bind(killed[0])
        .execute(&pool)
        .await
        .expect("terminate the audit writer's backend");
    relay.sever();
    eventually(
        "the killed backend to leave",
        Duration::from_secs(10),
        || async { (!recording().await.contains(&killed[0])).then_some(()) },
    )
    .await;

    // Each request spends one of the quota, however its batch was retried.
    let remaining = |a: &Answer| -> u32 {
        a.header("x-ratelimit-remaining")
            .and_then(|r| r.parse().ok())
            .expect("a quota header")
    };
    let mut left = remaining(&first);
    for _ in 0..3 {
        let answered = me(&stack, &key.key).await;
        assert_eq!(answered.status, StatusCode::OK, "{answered:?}");
        assert_eq!(remaining(&answered), left - 1, "{answered:?}");
        left -= 1;
        let status: i16 = sqlx::query_scalar("select status from audit_log where request_id = $1")
            .bind(answered.request_id())
            .fetch_one(&pool)
            .await
            .expect("the answer is audited");
        assert_eq!(status, 200);
    }
    let replaced = recording().await;
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced[0], killed[0]);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_response_has_a_request_id_and_a_sane_client_id_is_kept(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    for path in [
        "/healthz",
        "/api/v1/me",
        "/api/v1/nowhere",
        "/admin/v1/tenants",
    ] {
        let a = answer(stack.request(Method::GET, path)).await;
        assert!(!a.request_id().is_empty(), "{path}");
    }
    let a = answer(
        stack
            .request(Method::GET, "/api/v1/me")
            .header("x-request-id", "client-chosen-42"),
    )
    .await;
    assert_eq!(a.request_id(), "client-chosen-42");
    a.assert_error(StatusCode::UNAUTHORIZED, "missing_auth");
    // Unknown /api/v1 paths need a key too: nothing is revealed without one.
    answer(stack.request(Method::GET, "/api/v1/nowhere"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "missing_auth");
    let (status, _) = send(stack.request(Method::GET, "/healthz")).await;
    assert_eq!(status, StatusCode::OK);

    stack.shutdown().await;
}
