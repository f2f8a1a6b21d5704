//! Webhook subscriptions end to end, against real servers: create (and
//! Zapier's shape), list, get, patch, delete, rotate the secret, request a
//! test; the field rules and the refusal of private targets; scopes and
//! tenant isolation; the secret shown once and stored only sealed (not in
//! the log, the read model or a `pg_dump`); and the delivery log with its
//! retry and recover commands.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chrono::{DateTime, Utc};
use jeanus_tests::receiver::Receiver;
use jeanus_tests::stack::{spawn_stack_with, Stack};
use jeanus_tests::writes::{answer, stream_events, stream_types, writes_nothing, Answer, Tenant};
use jeanus_tests::{spawn_stack, TestEnv};
use reqwest::{Method, StatusCode};
use schema::sealing;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PATH: &str = "/api/v1/webhooks";
/// A public address (no DNS needed) for stacks that refuse private ones.
const PUBLIC_URL: &str = "https://93.184.215.14/hooks/jeanus";

fn at(id: Uuid) -> String {
    format!("{PATH}/{id}")
}

async fn subscribe(tenant: &Tenant<'_>, body: Value) -> Answer {
    tenant.post(PATH, body).await.expect(StatusCode::CREATED)
}

fn secret_of(answer: &Answer) -> String {
    answer.data()["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {}", answer.body))
        .to_owned()
}

/// The read model's `secrets` column of endpoint `id`.
async fn sealed_secrets(pool: &PgPool, id: Uuid) -> Vec<(String, Option<DateTime<Utc>>)> {
    let secrets: Value = sqlx::query_scalar("select secrets from webhook_endpoints where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("the endpoint's row");
    secrets
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| {
            (
                s["sealed"].as_str().expect("sealed").to_owned(),
                serde_json::from_value(s["expires_at"].clone()).expect("a time or null"),
            )
        })
        .collect()
}

fn open(stack: &Stack, sealed: &str) -> String {
    let key = stack.api_config.secret_key.as_ref().expect("a key");
    sealing::open(key, sealed).expect("sealed under the api's key")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_subscription_is_created_shown_patched_and_deleted(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let created = subscribe(
        &acme,
        json!({
            "url": "https://example.com/hooks/crm",
            "events": ["lead.stage_changed", "lead.created"],
            "description": "CRM sync",
        }),
    )
    .await;
    let id = created.id();
    assert_eq!(created.header("location"), Some(at(id).as_str()));
    let data = created.data();
    assert_eq!(data["url"], "https://example.com/hooks/crm");
    assert_eq!(
        data["events"],
        json!(["lead.stage_changed", "lead.created"])
    );
    assert_eq!(data["enabled"], true);
    assert!(data["created_at"].is_string());
    let secret = secret_of(&created);
    let raw = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("standard base64");
    assert_eq!(raw.len(), 32);

    // Shown, listed: never the secret.
    let got = acme.get(&at(id)).await.expect(StatusCode::OK);
    assert_eq!(got.etag(), "\"1\"");
    assert!(got.data().get("secret").is_none(), "{}", got.body);
    assert!(!got.body.to_string().contains(&secret));
    assert_eq!(got.data()["description"], "CRM sync");
    let list = acme.get(PATH).await.expect(StatusCode::OK);
    assert_eq!(list.body["pagination"]["total"], 1);
    assert_eq!(list.body["data"][0]["id"], id.to_string());
    assert!(!list.body.to_string().contains(&secret));
    // The read key reads too.
    answer(stack.with_key(Method::GET, &at(id), &acme.read.key))
        .await
        .expect(StatusCode::OK);

    // Patch: events, description, paused; a stale If-Match is 412.
    let patched = acme
        .patch(
            &at(id),
            json!({"events": ["order.created"], "description": null, "enabled": false}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(patched.etag(), "\"2\"");
    assert_eq!(patched.data()["events"], json!(["order.created"]));
    assert_eq!(patched.data()["description"], Value::Null);
    assert_eq!(patched.data()["enabled"], false);
    let stale = answer(
        acme.request(Method::PATCH, &at(id))
            .header("if-match", "\"1\"")
            .json(&json!({"enabled": true})),
    )
    .await;
    stale.refused(StatusCode::PRECONDITION_FAILED, "precondition_failed", None);
    let resumed = answer(
        acme.request(Method::PATCH, &at(id))
            .header("if-match", "\"2\"")
            .json(&json!({"enabled": true, "url": "https://example.com/hooks/v2"})),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(resumed.data()["enabled"], true);
    assert_eq!(resumed.data()["url"], "https://example.com/hooks/v2");
    // A patch that changes nothing appends nothing.
    writes_nothing(&pool, || async {
        acme.patch(&at(id), json!({"enabled": true}))
            .await
            .expect(StatusCode::OK);
    })
    .await;

    // Unsubscribe, twice: 204 both times; then gone.
    let deleted = acme.delete(&at(id)).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    writes_nothing(&pool, || async {
        let again = acme.delete(&at(id)).await;
        assert_eq!(again.status, StatusCode::NO_CONTENT);
    })
    .await;
    acme.get(&at(id))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);
    let list = acme.get(PATH).await.expect(StatusCode::OK);
    assert_eq!(list.body["pagination"]["total"], 0);
    acme.patch(&at(id), json!({"enabled": false}))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);

    assert_eq!(
        stream_types(&pool, id).await,
        [
            "WebhookEndpointCreated",
            "WebhookEndpointUpdated",
            "WebhookEndpointUpdated",
            "WebhookEndpointDeleted"
        ]
    );
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn zapier_rest_hooks_subscribe_and_unsubscribe(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let created = subscribe(
        &acme,
        json!({"target_url": "https://hooks.zapier.com/hooks/standard/1/abc/", "event": "lead.stage_changed"}),
    )
    .await;
    assert_eq!(
        created.data()["url"],
        "https://hooks.zapier.com/hooks/standard/1/abc/"
    );
    assert_eq!(created.data()["events"], json!(["lead.stage_changed"]));
    assert!(secret_of(&created).starts_with("whsec_"));
    let gone = acme.delete(&at(created.id())).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);

    writes_nothing(&pool, || async {
        acme.post(
            PATH,
            json!({"target_url": "https://x.example/", "event": "lead.moved"}),
        )
        .await
        .invalid("event");
        acme.post(PATH, json!({"target_url": "nope", "event": "lead.created"}))
            .await
            .invalid("target_url");
        acme.post(PATH, json!({"event": "lead.created"}))
            .await
            .missing("target_url");
    })
    .await;
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn invalid_subscriptions_are_refused_naming_the_field(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let ok_events = json!(["lead.created"]);

    writes_nothing(&pool, || async {
        acme.post(PATH, json!({"events": ok_events}))
            .await
            .missing("url");
        acme.post(PATH, json!({"url": "https://example.com/"}))
            .await
            .missing("events");
        for url in [
            json!("example.com/hook"),
            json!("ftp://example.com/hook"),
            json!("https://user:pw@example.com/"),
            json!(7),
            json!(format!("https://example.com/{}", "a".repeat(2048))),
        ] {
            acme.post(PATH, json!({"url": url, "events": ok_events}))
                .await
                .invalid("url");
        }
        for events in [
            json!([]),
            json!(["lead.teleported"]),
            json!(["webhook.test"]),
            json!("lead.created"),
            json!([42]),
        ] {
            acme.post(PATH, json!({"url": "https://example.com/", "events": events}))
                .await
                .invalid("events");
        }
        acme.post(
            PATH,
            json!({"url": "https://example.com/", "events": ok_events, "secret": "mine"}),
        )
        .await
        .invalid("secret");
        acme.post(
            PATH,
            json!({"url": "https://example.com/", "events": ok_events, "description": "x".repeat(1001)}),
        )
        .await
        .invalid("description");
        answer(
            acme.request(Method::POST, PATH)
                .header("content-type", "application/json")
                .body("{"),
        )
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_json", None);
    })
    .await;

    let id = subscribe(
        &acme,
        json!({"url": "https://example.com/", "events": ok_events}),
    )
    .await
    .id();
    writes_nothing(&pool, || async {
        acme.patch(&at(id), json!({"events": []}))
            .await
            .invalid("events");
        acme.patch(&at(id), json!({"enabled": "yes"}))
            .await
            .invalid("enabled");
        acme.patch(&at(id), json!({"url": null}))
            .await
            .invalid("url");
        acme.patch(&at(id), json!({"secret": "x"}))
            .await
            .invalid("secret");
        acme.get(&format!("{PATH}?limit=0")).await.invalid("limit");
        acme.get(&format!("{PATH}?colour=red"))
            .await
            .invalid("colour");
    })
    .await;
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn private_targets_are_refused_unless_allowed(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack_with(&env, |c| c.webhook_allow_private = false).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let events = json!(["lead.stage_changed"]);

    writes_nothing(&pool, || async {
        for url in [
            "http://127.0.0.1:9000/hook",
            "http://localhost:9000/hook",
            "https://10.0.0.8/hook",
            "https://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://100.64.0.1/",
            "http://0.0.0.0/",
        ] {
            let refused = acme.post(PATH, json!({"url": url, "events": events})).await;
            refused.invalid("url");
            let message = refused.body["error"]["message"].as_str().unwrap_or("");
            assert!(message.contains("not a public"), "{url}: {message}");
        }
    })
    .await;

    // A public address is fine; moving it to a private one is refused.
    let id = subscribe(&acme, json!({"url": PUBLIC_URL, "events": events}))
        .await
        .id();
    writes_nothing(&pool, || async {
        acme.patch(&at(id), json!({"url": "http://127.0.0.1:8080/"}))
            .await
            .invalid("url");
    })
    .await;
    stack.shutdown().await;

    // The test stacks allow them (receivers listen on 127.0.0.1).
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme 2").await;
    subscribe(
        &acme,
        json!({"url": "http://127.0.0.1:9000/hook", "events": events}),
    )
    .await;
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn scopes_and_tenants_are_enforced(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let id = subscribe(
        &acme,
        json!({"url": "https://example.com/", "events": ["lead.created"]}),
    )
    .await
    .id();

    let read_only = |method: Method, path: &str| stack.with_key(method, path, &acme.read.key);
    writes_nothing(&pool, || async {
        for (method, path) in [
            (Method::POST, PATH.to_owned()),
            (Method::PATCH, at(id)),
            (Method::DELETE, at(id)),
            (Method::POST, format!("{}/rotate-secret", at(id))),
            (Method::POST, format!("{}/test", at(id))),
            (
                Method::POST,
                format!("{}/recover?since=2020-01-01T00:00:00Z", at(id)),
            ),
        ] {
            answer(read_only(method.clone(), &path).json(&json!({})))
                .await
                .refused(StatusCode::FORBIDDEN, "missing_scope", None);
        }
        let anonymous = answer(stack.request(Method::GET, PATH)).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

        // Another tenant sees nothing, and can change nothing.
        for answer in [
            globex.get(&at(id)).await,
            globex.patch(&at(id), json!({"enabled": false})).await,
            globex.delete(&at(id)).await,
            globex
                .post(&format!("{}/rotate-secret", at(id)), json!({}))
                .await,
            globex.post(&format!("{}/test", at(id)), json!({})).await,
            globex.get(&format!("{}/deliveries", at(id))).await,
            globex
                .post(
                    &format!("{}/deliveries/{}/retry", at(id), Uuid::now_v7()),
                    json!({}),
                )
                .await,
            globex
                .post(
                    &format!("{}/recover?since=2020-01-01T00:00:00Z", at(id)),
                    json!({}),
                )
                .await,
            globex.get(&at(Uuid::now_v7())).await,
            globex.get(&format!("{PATH}/not-a-uuid")).await,
        ] {
            answer.refused(StatusCode::NOT_FOUND, "not_found", None);
        }
    })
    .await;
    let theirs = globex.get(PATH).await.expect(StatusCode::OK);
    assert_eq!(theirs.body["pagination"]["total"], 0);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn secrets_are_shown_once_and_stored_only_sealed(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let created = subscribe(
        &acme,
        json!({"url": "https://example.com/", "events": ["lead.created"]}),
    )
    .await;
    let id = created.id();
    let first = secret_of(&created);
    let rotated = acme
        .post(&format!("{}/rotate-secret", at(id)), json!({}))
        .await
        .expect(StatusCode::OK);
    let second = rotated.data()["secret"]
        .as_str()
        .expect("the new secret")
        .to_owned();

    // Sealed in the event and the read model, under the api's key.
    let events = stream_events(&pool, id).await;
    let sealed_in_log = events[0].1["secret_sealed"].as_str().expect("sealed");
    assert_eq!(open(&stack, sealed_in_log), first);
    let sealed = sealed_secrets(&pool, id).await;
    assert_eq!(open(&stack, &sealed[0].0), second);
    assert_eq!(open(&stack, &sealed[1].0), first);

    // Neither secret, nor its base64 part, anywhere in the database.
    let dump = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(&env.database_url)
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains(&id.to_string()),
        "the dump holds the endpoint"
    );
    for secret in [&first, &second] {
        let raw = secret.trim_start_matches("whsec_");
        assert!(!dump.contains(raw), "a secret is in the dump in plaintext");
    }
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_rotation_keeps_the_previous_secret_for_a_day(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let created = subscribe(
        &acme,
        json!({"url": "https://example.com/", "events": ["lead.created"]}),
    )
    .await;
    let id = created.id();
    let before = Utc::now();

    let rotated = acme
        .post(&format!("{}/rotate-secret", at(id)), json!({}))
        .await
        .expect(StatusCode::OK);
    let data = rotated.data();
    assert_eq!(data["id"], id.to_string());
    let new_secret = data["secret"].as_str().expect("a secret");
    assert!(new_secret.starts_with("whsec_"));
    assert_ne!(new_secret, secret_of(&created));
    let expires: DateTime<Utc> =
        serde_json::from_value(data["previous_secret_expires_at"].clone()).expect("a time");
    let day = chrono::Duration::hours(24);
    assert!(expires >= before + day - chrono::Duration::seconds(1));
    assert!(expires <= Utc::now() + day);

    let sealed = sealed_secrets(&pool, id).await;
    assert_eq!(sealed.len(), 2);
    assert_eq!(sealed[0].1, None, "the new secret does not expire");
    assert_eq!(sealed[1].1, Some(expires));
    assert_eq!(
        stream_types(&pool, id).await,
        ["WebhookEndpointCreated", "WebhookSecretRotated"]
    );
    // The subscription itself is unchanged, and shows no secret.
    let got = acme.get(&at(id)).await.expect(StatusCode::OK);
    assert!(got.data().get("secret").is_none());
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_test_request_appends_an_event_and_is_delivered(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    let id = subscribe(
        &acme,
        json!({"url": receiver.url, "events": ["lead.created"]}),
    )
    .await
    .id();

    let requested = acme
        .post(&format!("{}/test", at(id)), json!({}))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(requested.data()["type"], "webhook.test");
    let event_id = requested.data()["event_id"].as_str().expect("an id");
    let events = stream_types(&pool, id).await;
    assert_eq!(events, ["WebhookEndpointCreated", "WebhookTestRequested"]);

    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].header("webhook-id"), event_id);
    assert_eq!(got[0].json()["type"], "webhook.test");

    // The delivery log shows the attempt.
    let log = jeanus_tests::poll::eventually(
        "the attempt in the delivery log",
        Duration::from_secs(10),
        || async {
            let log = acme.get(&format!("{}/deliveries", at(id))).await;
            (log.body["pagination"]["total"] == 1).then_some(log)
        },
    )
    .await;
    let attempt = &log.body["data"][0];
    assert_eq!(attempt["event_id"], event_id);
    assert_eq!(attempt["event_type"], "webhook.test");
    assert_eq!(attempt["status_code"], 200);
    assert_eq!(attempt["error_class"], Value::Null);
    assert_eq!(attempt["delivery_status"], "delivered");
    stack.shutdown().await;
}

/// A delivery (and its attempts) as the dispatcher would have recorded it.
async fn insert_delivery(
    pool: &PgPool,
    tenant: Uuid,
    endpoint: Uuid,
    status: &str,
    created_at: DateTime<Utc>,
    attempts: &[(DateTime<Utc>, Option<i32>, Option<&str>)],
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into webhook_deliveries (id, tenant_id, endpoint_id, event_id, event_position,
             event_type, payload, status, attempts, next_attempt_at, last_attempt_at, created_at)
         values ($1, $2, $3, $4, 1, 'lead.created', '{}', $5, $6, now() + interval '1 day',
                 $7, $8)",
    )
    .bind(id)
    .bind(tenant)
    .bind(endpoint)
    .bind(Uuid::now_v7())
    .bind(status)
    .bind(attempts.len() as i32)
    .bind(attempts.last().map(|a| a.0))
    .bind(created_at)
    .execute(pool)
    .await
    .expect("insert a delivery");
    for (at, code, class) in attempts {
        sqlx::query(
            "insert into webhook_attempts (id, delivery_id, endpoint_id, tenant_id, at,
                 status_code, latency_ms, error_class, response_excerpt)
             values ($1, $2, $3, $4, $5, $6, 12, $7, 'oops')",
        )
        .bind(Uuid::now_v7())
        .bind(id)
        .bind(endpoint)
        .bind(tenant)
        .bind(at)
        .bind(code)
        .bind(class)
        .execute(pool)
        .await
        .expect("insert an attempt");
    }
    id
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_delivery_log_lists_attempts_and_retry_and_recover_reschedule(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let mut stack = spawn_stack(&env).await;
    // These deliveries are made up: nothing must send them meanwhile.
    stack.kill_dispatcher().await;
    let acme = Tenant::new(&stack, "Acme").await;
    let hook = |url: &str| json!({"url": url, "events": ["lead.created"]});
    let id = subscribe(&acme, hook("https://example.com/a")).await.id();
    let other = subscribe(&acme, hook("https://example.com/b")).await.id();
    let t = |minutes_ago: i64| Utc::now() - chrono::Duration::minutes(minutes_ago);

    let old_failed = insert_delivery(
        &pool,
        acme.id,
        id,
        "failed",
        t(120),
        &[(t(119), Some(500), Some("http"))],
    )
    .await;
    let failed = insert_delivery(
        &pool,
        acme.id,
        id,
        "failed",
        t(30),
        &[
            (t(29), None, Some("timeout")),
            (t(20), Some(503), Some("http")),
        ],
    )
    .await;
    let delivered = insert_delivery(
        &pool,
        acme.id,
        id,
        "delivered",
        t(10),
        &[(t(9), Some(200), None)],
    )
    .await;
    let elsewhere = insert_delivery(&pool, acme.id, other, "failed", t(5), &[]).await;

    // Newest first, paginated.
    let log = acme
        .get(&format!("{}/deliveries", at(id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(log.body["pagination"]["total"], 4);
    let delivery_ids: Vec<&str> = log.body["data"]
        .as_array()
        .expect("a page")
        .iter()
        .map(|a| a["delivery_id"].as_str().expect("an id"))
        .collect();
    let (d, f, o) = (
        delivered.to_string(),
        failed.to_string(),
        old_failed.to_string(),
    );
    assert_eq!(delivery_ids, [&d, &f, &f, &o]);
    let first = &log.body["data"][0];
    assert_eq!(first["status_code"], 200);
    assert_eq!(first["latency_ms"], 12);
    assert_eq!(first["error_class"], Value::Null);
    assert_eq!(first["delivery_status"], "delivered");
    assert_eq!(log.body["data"][2]["error_class"], "timeout");
    assert_eq!(log.body["data"][2]["status_code"], Value::Null);
    assert_eq!(log.body["data"][2]["response_excerpt"], "oops");
    let page = acme
        .get(&format!("{}/deliveries?limit=2&offset=2", at(id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(page.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["pagination"]["offset"], 2);
    acme.get(&format!("{}/deliveries?limit=500", at(id)))
        .await
        .invalid("limit");

    // Retry one: due now, pending. Another endpoint's delivery is not found.
    let retried = acme
        .post(
            &format!("{}/deliveries/{old_failed}/retry", at(id)),
            json!({}),
        )
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(retried.data()["status"], "pending");
    let due: DateTime<Utc> =
        serde_json::from_value(retried.data()["next_attempt_at"].clone()).expect("a time");
    assert!(due <= Utc::now());
    for missing in [elsewhere, Uuid::now_v7()] {
        acme.post(&format!("{}/deliveries/{missing}/retry", at(id)), json!({}))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
    }

    // Recover: the failed ones since the time, no others.
    let since = t(60).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let recovered = answer(
        acme.request(Method::POST, &format!("{}/recover", at(id)))
            .query(&[("since", &since)]),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    assert_eq!(recovered.data()["recovered"], 1);
    let statuses: Vec<(Uuid, String)> =
        sqlx::query_as("select id, status from webhook_deliveries order by created_at")
            .fetch_all(&pool)
            .await
            .expect("statuses");
    assert_eq!(
        statuses,
        [
            (old_failed, "pending".to_owned()),
            (failed, "pending".to_owned()),
            (delivered, "delivered".to_owned()),
            (elsewhere, "failed".to_owned()),
        ]
    );
    for bad in ["", "?since=yesterday", "?since=2026-01-01"] {
        acme.post(&format!("{}/recover{bad}", at(id)), json!({}))
            .await
            .invalid("since");
    }
    stack.shutdown().await;
}
