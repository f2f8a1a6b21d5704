//! `Idempotency-Key` end to end: a retry replays the first response and
//! appends nothing; the key with another request is 422; a key in flight is
//! 409; final refusals are kept, 403s and server errors are not; a request abandoned
//! after its append (a crash) is taken over without appending twice; keys
//! expire after 24 hours; and keys are per tenant.

use jeanus_tests::writes::{answer, event_count, stream_types, writes_nothing, Answer, Tenant};
use jeanus_tests::{spawn_stack, TestEnv};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

const LEADS: &str = "/api/v1/leads";

async fn with_key(
    tenant: &Tenant<'_>,
    method: Method,
    path: &str,
    key: &str,
    body: Value,
) -> Answer {
    answer(
        tenant
            .request(method, path)
            .header("idempotency-key", key)
            .json(&body),
    )
    .await
}

fn replayed(answer: &Answer) -> bool {
    answer.header("idempotent-replayed") == Some("true")
}

/// Makes the stored key look like a request still running (or, with
/// `lease_left` ≤ 0, one whose process died) that has not stored its answer.
async fn back_in_flight(pool: &PgPool, key: &str, lease_left_seconds: f64) {
    let updated = sqlx::query(
        "update idempotency_keys
            set response_status = null, response_headers = null, response_body = null,
                locked_until = now() + make_interval(secs => $2)
          where key = $1",
    )
    .bind(key)
    .bind(lease_left_seconds)
    .execute(pool)
    .await
    .expect("update the key");
    assert_eq!(updated.rows_affected(), 1);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_retried_post_replays_the_first_response_and_appends_nothing(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let body = json!({"name": "Sarah Patel", "stage": "new"});

    let first = with_key(&acme, Method::POST, LEADS, "form-42", body.clone())
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&first));
    let events = event_count(&pool).await;

    for _ in 0..3 {
        let again = with_key(&acme, Method::POST, LEADS, "form-42", body.clone())
            .await
            .expect(StatusCode::CREATED);
        assert!(replayed(&again));
        assert_eq!(again.body, first.body);
        for header in ["etag", "location", "content-type"] {
            assert_eq!(again.header(header), first.header(header), "{header}");
        }
    }
    assert_eq!(event_count(&pool).await, events);
    let list = acme.get(LEADS).await;
    assert_eq!(list.body["pagination"]["total"], 1);

    // Without a key, or with another, the same body creates another lead.
    acme.create("leads", body.clone()).await;
    let other = with_key(&acme, Method::POST, LEADS, "form-43", body.clone())
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&other));
    assert_ne!(other.id(), first.id());
    assert_eq!(event_count(&pool).await, events + 2);

    // Keys are per tenant: another tenant's "form-42" is its own.
    let globex = Tenant::new(&stack, "Globex").await;
    let theirs = with_key(&globex, Method::POST, LEADS, "form-42", body.clone())
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&theirs));
    assert_ne!(theirs.id(), first.id());
    globex
        .get(&format!("{LEADS}/{}", first.id()))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_retried_patch_replays_its_answer_even_after_later_changes(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme.create("leads", json!({"name": "Mover"})).await.id();
    let path = format!("{LEADS}/{id}");
    let move_to_won = json!({"stage": "won"});

    let first = with_key(&acme, Method::PATCH, &path, "move-1", move_to_won.clone())
        .await
        .expect(StatusCode::OK);
    assert_eq!(first.etag(), "\"2\"");
    acme.patch(&path, json!({"stage": "lost"}))
        .await
        .expect(StatusCode::OK);
    let events = event_count(&pool).await;

    let again = with_key(&acme, Method::PATCH, &path, "move-1", move_to_won)
        .await
        .expect(StatusCode::OK);
    assert!(replayed(&again));
    assert_eq!(again.body, first.body);
    assert_eq!(again.etag(), "\"2\"");
    assert_eq!(event_count(&pool).await, events);
    assert_eq!(
        acme.get(&path).await.data()["stage"],
        "lost",
        "the retry changed nothing"
    );
    assert_eq!(
        stream_types(&pool, id).await,
        ["LeadCreated", "LeadStageChanged", "LeadStageChanged"]
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_same_key_with_another_request_is_an_idempotency_conflict(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let first = with_key(&acme, Method::POST, LEADS, "k1", json!({"name": "A"}))
        .await
        .expect(StatusCode::CREATED);
    let lead = format!("{LEADS}/{}", first.id());

    writes_nothing(&pool, || async {
        let others = [
            (Method::POST, LEADS, json!({"name": "B"})),
            (Method::POST, LEADS, json!({"name": "A", "notes": "x"})),
            (Method::POST, "/api/v1/customers", json!({"name": "A"})),
            (Method::PATCH, lead.as_str(), json!({"name": "A"})),
        ];
        for (method, path, body) in others {
            with_key(&acme, method, path, "k1", body).await.refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                None,
            );
        }
        // The same JSON, spaced differently, is another body.
        answer(
            acme.request(Method::POST, LEADS)
                .header("idempotency-key", "k1")
                .header("content-type", "application/json")
                .body(r#"{ "name": "A" }"#),
        )
        .await
        .refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_conflict",
            None,
        );
    })
    .await;

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_key_still_in_flight_is_409_and_a_dead_one_is_taken_over_without_appending_twice(
    pool: PgPool,
) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let body = json!({"name": "Crash test"});
    let first = with_key(&acme, Method::POST, LEADS, "crash-1", body.clone())
        .await
        .expect(StatusCode::CREATED);
    let events = event_count(&pool).await;

    // The first request appended, then its process died before storing
    // its answer: while its lease runs, a retry is told to wait.
    back_in_flight(&pool, "crash-1", 60.0).await;
    with_key(&acme, Method::POST, LEADS, "crash-1", body.clone())
        .await
        .refused(StatusCode::CONFLICT, "idempotency_in_progress", None);
    // A different request under the key is still a conflict.
    with_key(
        &acme,
        Method::POST,
        LEADS,
        "crash-1",
        json!({"name": "Other"}),
    )
    .await
    .refused(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_conflict",
        None,
    );

    // Once the lease has run out, the retry runs again: same resource, and
    // the event store takes its append (same derived ids) as a duplicate.
    back_in_flight(&pool, "crash-1", -1.0).await;
    let retried = with_key(&acme, Method::POST, LEADS, "crash-1", body.clone())
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&retried), "it ran again");
    assert_eq!(retried.id(), first.id());
    assert_eq!(retried.body, first.body, "the answer is the stored lead's");
    assert_eq!(retried.etag(), "\"1\"");
    assert_eq!(event_count(&pool).await, events);
    // And it stored its answer.
    let replay = with_key(&acme, Method::POST, LEADS, "crash-1", body)
        .await
        .expect(StatusCode::CREATED);
    assert!(replayed(&replay));

    // The same for a PATCH that moved a stage.
    let path = format!("{LEADS}/{}", first.id());
    let patch = json!({"stage": "won", "notes": "Signed"});
    with_key(&acme, Method::PATCH, &path, "crash-2", patch.clone())
        .await
        .expect(StatusCode::OK);
    let events = event_count(&pool).await;
    back_in_flight(&pool, "crash-2", -1.0).await;
    let retried = with_key(&acme, Method::PATCH, &path, "crash-2", patch)
        .await
        .expect(StatusCode::OK);
    assert!(!replayed(&retried));
    assert_eq!(retried.data()["stage"], "won");
    assert_eq!(event_count(&pool).await, events);
    assert_eq!(
        stream_types(&pool, first.id()).await,
        ["LeadCreated", "LeadUpdated", "LeadStageChanged"]
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn of_concurrent_requests_with_one_key_exactly_one_runs(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let events = event_count(&pool).await;

    let racers: Vec<_> = (0..8)
        .map(|_| with_key(&acme, Method::POST, LEADS, "burst", json!({"name": "Once"})))
        .collect();
    let answers = futures::future::join_all(racers).await;
    let ran: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED && !replayed(a))
        .collect();
    assert_eq!(ran.len(), 1, "{answers:?}");
    for answer in &answers {
        match answer.status {
            StatusCode::CREATED => assert_eq!(answer.id(), ran[0].id()),
            _ => answer.refused(StatusCode::CONFLICT, "idempotency_in_progress", None),
        }
    }
    assert_eq!(event_count(&pool).await, events + 1);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_refusal_is_kept_and_a_forbidden_or_server_error_is_not(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    // A 4xx is final: replayed, and the key stays bound to its request.
    let refused = with_key(&acme, Method::POST, LEADS, "bad", json!({"stage": "new"})).await;
    refused.missing("name");
    let again = with_key(&acme, Method::POST, LEADS, "bad", json!({"stage": "new"})).await;
    again.missing("name");
    assert!(replayed(&again));
    assert_eq!(again.body["error"], refused.body["error"]);
    with_key(&acme, Method::POST, LEADS, "bad", json!({"name": "fixed"}))
        .await
        .refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_conflict",
            None,
        );

    // A 403 is about the key, not the request: the same request with a key
    // of the right scope runs.
    let scoped = json!({"name": "Scoped"});
    answer(
        stack
            .with_key(Method::POST, LEADS, &acme.read.key)
            .header("idempotency-key", "scoped")
            .json(&scoped),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "missing_scope", None);
    let ran = with_key(&acme, Method::POST, LEADS, "scoped", scoped)
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&ran));

    // A 5xx is not: the retry runs again, and can succeed.
    sqlx::query(
        "alter table events add constraint refuse_leads
             check (event_type <> 'LeadCreated') not valid",
    )
    .execute(&pool)
    .await
    .expect("add the constraint");
    let body = json!({"name": "Unlucky"});
    let failed = with_key(&acme, Method::POST, LEADS, "flaky", body.clone()).await;
    assert!(failed.status.is_server_error(), "{failed:?}");
    assert!(!replayed(&failed));
    sqlx::query("alter table events drop constraint refuse_leads")
        .execute(&pool)
        .await
        .expect("drop the constraint");
    let events = event_count(&pool).await;
    let succeeded = with_key(&acme, Method::POST, LEADS, "flaky", body)
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&succeeded));
    assert_eq!(event_count(&pool).await, events + 1);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_key_expires_after_24_hours_and_is_swept(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let body = json!({"name": "Daily"});
    let first = with_key(&acme, Method::POST, LEADS, "daily", body.clone())
        .await
        .expect(StatusCode::CREATED);
    with_key(&acme, Method::POST, LEADS, "fresh", body.clone())
        .await
        .expect(StatusCode::CREATED);

    let age = |key: &'static str, hours: i32| {
        sqlx::query(
            "update idempotency_keys set created_at = now() - make_interval(hours => $2)
              where key = $1",
        )
        .bind(key)
        .bind(hours)
        .execute(&pool)
    };
    age("daily", 23).await.expect("age the key");
    let within = with_key(&acme, Method::POST, LEADS, "daily", body.clone())
        .await
        .expect(StatusCode::CREATED);
    assert!(replayed(&within));

    // Past 24 hours the key starts afresh: a new request, a new lead.
    age("daily", 25).await.expect("age the key");
    let events = event_count(&pool).await;
    let after = with_key(&acme, Method::POST, LEADS, "daily", body.clone())
        .await
        .expect(StatusCode::CREATED);
    assert!(!replayed(&after));
    assert_ne!(after.id(), first.id());
    assert_eq!(event_count(&pool).await, events + 1);
    // ... which it keeps for the next 24 hours, even for another body.
    with_key(
        &acme,
        Method::POST,
        LEADS,
        "daily",
        json!({"name": "Other"}),
    )
    .await
    .refused(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_conflict",
        None,
    );

    // The sweep deletes expired keys only.
    age("daily", 25).await.expect("age the key");
    assert_eq!(api::idempotency::sweep(&pool).await.expect("sweep"), 1);
    let left: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(left, ["fresh"]);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_malformed_key_is_refused_and_other_methods_ignore_the_header(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme.create("leads", json!({"name": "Keyed"})).await.id();
    let path = format!("{LEADS}/{id}");

    writes_nothing(&pool, || async {
        let bad_keys = [
            HeaderValue::from_static(""),
            HeaderValue::from_str(&"k".repeat(256)).expect("a header"),
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("a header"),
            HeaderValue::from_static("tab\there"),
        ];
        for key in bad_keys {
            for (method, path) in [(Method::POST, LEADS), (Method::PATCH, path.as_str())] {
                answer(
                    acme.request(method, path)
                        .header("idempotency-key", key.clone())
                        .json(&json!({"name": "x"})),
                )
                .await
                .invalid("Idempotency-Key");
            }
        }
    })
    .await;
    let longest = "k".repeat(255);
    with_key(
        &acme,
        Method::POST,
        LEADS,
        &longest,
        json!({"name": "Long key"}),
    )
    .await
    .expect(StatusCode::CREATED);

    // GET and DELETE do not use keys: nothing is recorded for them.
    answer(
        acme.request(Method::GET, &path)
            .header("idempotency-key", "g"),
    )
    .await
    .expect(StatusCode::OK);
    answer(
        acme.request(Method::DELETE, &path)
            .header("idempotency-key", "d"),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let keys: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert_eq!(keys, [longest]);

    stack.shutdown().await;
}
