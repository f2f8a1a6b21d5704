//! Webhook delivery end to end: the api, the projector and the dispatcher
//! against real PostgreSQL and NATS, delivering to real HTTP receivers on
//! 127.0.0.1 (`jeanus_tests::receiver`). Signatures are checked by the
//! Python `standardwebhooks` package, as a receiver would.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dispatcher::config::{parse_schedule, Config as DispatcherConfig};
use jeanus_tests::process::Service;
use jeanus_tests::receiver::{Behaviour, Received, Receiver};
use jeanus_tests::stack::spawn_stack_configured;
use jeanus_tests::writes::Tenant;
use jeanus_tests::{eventually, Stack, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

/// The stack (api, projector, dispatcher) with the dispatcher's retry
/// `schedule` and private targets allowed or not (the api allows them, so
/// that loopback receivers can subscribe).
async fn stack_with(env: &TestEnv, schedule: &str, allow_private: bool) -> Stack {
    let schedule = parse_schedule(schedule).expect("a schedule");
    spawn_stack_configured(
        env,
        |_| {},
        move |dispatcher: &mut DispatcherConfig| {
            dispatcher.webhook_retry_schedule = schedule;
            dispatcher.webhook_allow_private = allow_private;
        },
    )
    .await
}

/// Subscribes `url` to `events`; the endpoint's id and its secret.
async fn subscribe(tenant: &Tenant<'_>, url: &str, events: &[&str]) -> (Uuid, String) {
    let created = tenant
        .post("/api/v1/webhooks", json!({ "url": url, "events": events }))
        .await
        .expect(StatusCode::CREATED);
    let secret = created.data()["secret"]
        .as_str()
        .expect("the secret")
        .to_owned();
    (created.id(), secret)
}

async fn create_lead(tenant: &Tenant<'_>, name: &str) -> Uuid {
    tenant
        .create("leads", json!({ "name": name, "stage": "new" }))
        .await
        .id()
}

async fn move_lead(tenant: &Tenant<'_>, id: Uuid, stage: &str) {
    tenant
        .patch(&format!("/api/v1/leads/{id}"), json!({ "stage": stage }))
        .await
        .expect(StatusCode::OK);
}

/// Verifies a received webhook with the Python `standardwebhooks` package,
/// as a receiver would; `Err` with its message when it refuses.
fn verify_with_standardwebhooks(secret: &str, received: &Received) -> Result<(), String> {
    let script = r#"
import json, sys
from standardwebhooks import Webhook
headers = json.loads(sys.argv[2])
body = sys.stdin.buffer.read()
Webhook(sys.argv[1]).verify(body, headers)
"#;
    let headers = json!({
        "webhook-id": received.header("webhook-id"),
        "webhook-timestamp": received.header("webhook-timestamp"),
        "webhook-signature": received.header("webhook-signature"),
    });
    let mut child = Command::new("python3")
        .args(["-c", script, secret, &headers.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs standardwebhooks)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&received.body)
        .expect("the body is written");
    let output = child.wait_with_output().expect("python3 finishes");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `(status, status_code, error_class)` of every attempt of an endpoint, oldest first.
async fn attempts(pool: &PgPool, endpoint: Uuid) -> Vec<(Option<i32>, Option<String>)> {
    sqlx::query_as(
        "select status_code, error_class from webhook_attempts where endpoint_id = $1 order by at, id",
    )
    .bind(endpoint)
    .fetch_all(pool)
    .await
    .expect("the attempts")
}

async fn delivery_statuses(pool: &PgPool, endpoint: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "select status from webhook_deliveries where endpoint_id = $1 order by event_position",
    )
    .bind(endpoint)
    .fetch_all(pool)
    .await
    .expect("the deliveries")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_stage_change_reaches_its_subscriber_signed_and_standardwebhooks_verifies_it(
    pool: PgPool,
) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(&env, "200ms", true).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    let others = Receiver::start().await;
    let (endpoint, secret) = subscribe(&acme, &receiver.url, &["lead.stage_changed"]).await;
    let (orders_only, _) = subscribe(&acme, &others.url, &["order.created"]).await;

    let lead = create_lead(&acme, "Sarah Patel").await;
    move_lead(&acme, lead, "qualified").await;

    let got = receiver.wait_for(1, WITHIN).await;
    let body = got[0].json();
    assert_eq!(
        body["type"], "lead.stage_changed",
        "lead.created is not subscribed"
    );
    assert_eq!(body["data"]["previous_stage"], "new");
    assert_eq!(body["data"]["stage"], "qualified");
    assert_eq!(body["data"]["version"], 2);
    assert_eq!(body["data"]["lead"]["id"], json!(lead));
    assert_eq!(body["data"]["lead"]["stage"], "qualified");
    assert_eq!(
        got[0].header("webhook-id"),
        body["id"].as_str().expect("an id")
    );
    assert_eq!(got[0].header("content-type"), "application/json");
    let timestamp: i64 = got[0].header("webhook-timestamp").parse().expect("seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    verify_with_standardwebhooks(&secret, &got[0]).expect("standardwebhooks verifies it");
    let tampered = Received {
        body: format!("{} ", String::from_utf8_lossy(&got[0].body)).into(),
        ..got[0].clone()
    };
    assert!(verify_with_standardwebhooks(&secret, &tampered).is_err());

    // The events before the stage change were matched first: nothing for
    // an endpoint subscribed to other types, then or since.
    assert!(delivery_statuses(&pool, orders_only).await.is_empty());
    assert!(others.requests().is_empty());
    eventually("the delivery to be recorded", WITHIN, || async {
        (delivery_statuses(&pool, endpoint).await == ["delivered"]).then_some(())
    })
    .await;
    assert_eq!(receiver.requests().len(), 1, "delivered once");

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_receiver_failing_twice_gets_the_event_on_the_third_attempt_with_the_same_id(
    pool: PgPool,
) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(&env, "300ms,300ms,300ms", true).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(2, 500);
    let (endpoint, secret) = subscribe(&acme, &receiver.url, &["lead.created"]).await;

    create_lead(&acme, "Retried").await;
    let got = receiver.wait_for(3, WITHIN).await;
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(500), Some(500), Some(200)]
    );
    let id = got[0].header("webhook-id");
    assert!(
        got.iter().all(|r| r.header("webhook-id") == id),
        "the same webhook-id"
    );
    assert!(got.iter().all(|r| r.body == got[0].body), "the same bytes");
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(250),
            "retried after the schedule: {gap:?}"
        );
    }
    verify_with_standardwebhooks(&secret, &got[2]).expect("the third attempt verifies");

    // The delivery log shows every attempt.
    let log = eventually("three attempts recorded", WITHIN, || async {
        let a = attempts(&pool, endpoint).await;
        (a.len() == 3).then_some(a)
    })
    .await;
    assert_eq!(
        log,
        [
            (Some(500), Some("http".to_owned())),
            (Some(500), Some("http".to_owned())),
            (Some(200), None)
        ]
    );
    assert_eq!(delivery_statuses(&pool, endpoint).await, ["delivered"]);
    let listed = acme
        .get(&format!("/api/v1/webhooks/{endpoint}/deliveries"))
        .await;
    if listed.status == StatusCode::OK {
        assert_eq!(
            listed.body["data"].as_array().map(Vec::len),
            Some(3),
            "{}",
            listed.body
        );
    }

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_dispatcher_killed_mid_retry_resumes_and_delivers(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    // The real processes deliver; the stack's in-process dispatcher is stopped.
    let mut stack = stack_with(&env, "1s,1s,1s", true).await;
    stack.kill_dispatcher().await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(1, 503);
    let (endpoint, _) = subscribe(&acme, &receiver.url, &["lead.created"]).await;
    let vars = [
        ("DATABASE_URL", env.database_url.clone()),
        ("NATS_URL", env.nats_url.clone()),
        ("JEANUS_NATS_PREFIX", env.prefix().to_owned()),
        ("JEANUS_SECRET_KEY", stack.secret_key_base64()),
        ("JEANUS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("JEANUS_WEBHOOK_RETRY_SCHEDULE", "1s,1s,1s".to_owned()),
    ];
    let mut first = Service::start("jeanus-dispatcher", &[], &vars);

    create_lead(&acme, "Survivor").await;
    receiver.wait_for(1, WITHIN).await;
    eventually("the failed attempt to be recorded", WITHIN, || async {
        (attempts(&pool, endpoint).await.len() == 1).then_some(())
    })
    .await;
    first.kill();

    let _second = Service::start("jeanus-dispatcher", &[], &vars);
    let got = receiver.wait_for(2, WITHIN).await;
    assert_eq!(got[1].answered, Some(200));
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    eventually("the delivery to be delivered", WITHIN, || async {
        (delivery_statuses(&pool, endpoint).await == ["delivered"]).then_some(())
    })
    .await;

    drop(_second);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_hanging_receiver_does_not_delay_a_healthy_one(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(&env, "1s", true).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let hanging = Receiver::start().await;
    hanging.set(Behaviour::Hang);
    let healthy = Receiver::start().await;
    subscribe(&acme, &hanging.url, &["lead.stage_changed"]).await;
    subscribe(&acme, &healthy.url, &["lead.stage_changed"]).await;

    let lead = create_lead(&acme, "Busy").await;
    let stages = ["contacted", "qualified", "proposal", "meeting_booked"];
    let mut latencies = Vec::new();
    for (i, stage) in stages.iter().cycle().take(12).enumerate() {
        let acknowledged = Instant::now();
        move_lead(&acme, lead, stage).await;
        let got = healthy.wait_for(i + 1, WITHIN).await;
        latencies.push(got[i].at.saturating_duration_since(acknowledged));
    }
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(2),
        "the healthy receiver waited {slowest:?} for an event: {latencies:?}"
    );
    let hung = hanging.requests();
    assert!(
        hung.len() <= dispatcher::delivery::PER_ENDPOINT,
        "at most {} requests in flight to the hanging endpoint, not {}: {:?}",
        dispatcher::delivery::PER_ENDPOINT,
        hung.len(),
        hung.iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect::<Vec<_>>()
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn during_a_rotation_both_secrets_verify(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(&env, "200ms", true).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    let (endpoint, old) = subscribe(&acme, &receiver.url, &["lead.created"]).await;
    let rotated = acme
        .post(
            &format!("/api/v1/webhooks/{endpoint}/rotate-secret"),
            json!({}),
        )
        .await
        .expect(StatusCode::OK);
    let new = rotated.data()["secret"]
        .as_str()
        .expect("the new secret")
        .to_owned();
    assert_ne!(old, new);

    create_lead(&acme, "Rotated").await;
    let got = receiver.wait_for(1, WITHIN).await;
    assert_eq!(
        got[0].header("webhook-signature").split(' ').count(),
        2,
        "one signature per live secret"
    );
    verify_with_standardwebhooks(&new, &got[0]).expect("the new secret verifies");
    verify_with_standardwebhooks(&old, &got[0]).expect("the old secret still verifies");

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_private_target_is_blocked_at_send_time_when_not_allowed(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    // The api allows private targets (so the subscription is accepted), the
    // dispatcher does not: the send-time check alone refuses.
    let stack = stack_with(&env, "200ms", false).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (literal, _) = subscribe(&acme, &receiver.url, &["lead.created"]).await;
    let (named, _) = subscribe(&acme, &by_name, &["lead.created"]).await;

    create_lead(&acme, "Probe").await;
    for endpoint in [literal, named] {
        let log = eventually("a blocked attempt", WITHIN, || async {
            let a = attempts(&pool, endpoint).await;
            (!a.is_empty()).then_some(a)
        })
        .await;
        assert_eq!(log[0], (None, Some("blocked".to_owned())), "{endpoint}");
    }
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the private address"
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_410_disables_the_endpoint(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(&env, "200ms,200ms", true).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Status(410));
    let (endpoint, _) = subscribe(&acme, &receiver.url, &["lead.created"]).await;

    create_lead(&acme, "Gone").await;
    receiver.wait_for(1, WITHIN).await;
    let shown: Value = eventually("the endpoint to be disabled", WITHIN, || async {
        let got = acme.get(&format!("/api/v1/webhooks/{endpoint}")).await;
        (got.data()["enabled"] == false).then(|| got.body.clone())
    })
    .await;
    assert_eq!(shown["data"]["enabled"], false);
    let types: Vec<String> = sqlx::query_scalar(
        "select event_type from events where stream_id = $1 order by stream_version",
    )
    .bind(endpoint)
    .fetch_all(&pool)
    .await
    .expect("the endpoint's events");
    assert!(
        types.contains(&"WebhookEndpointDisabled".to_owned()),
        "{types:?}"
    );
    assert_eq!(delivery_statuses(&pool, endpoint).await, ["failed"]);

    // Nothing more is sent to it.
    create_lead(&acme, "Gone again").await;
    let marker = Receiver::start().await;
    subscribe(&acme, &marker.url, &["lead.created"]).await;
    create_lead(&acme, "After").await;
    marker.wait_for(1, WITHIN).await;
    assert_eq!(
        receiver.requests().len(),
        1,
        "a disabled endpoint gets nothing"
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_test_request_is_delivered_to_its_own_endpoint_only(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(&env, "200ms", true).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let tested = Receiver::start().await;
    let other = Receiver::start().await;
    let (endpoint, secret) = subscribe(&acme, &tested.url, &["lead.created"]).await;
    subscribe(&acme, &other.url, &["lead.created"]).await;

    let requested = acme
        .post(&format!("/api/v1/webhooks/{endpoint}/test"), json!({}))
        .await;
    assert!(requested.status.is_success(), "{:?}", requested.body);
    let got = tested.wait_for(1, WITHIN).await;
    assert_eq!(got[0].json()["type"], "webhook.test");
    verify_with_standardwebhooks(&secret, &got[0]).expect("verifies");

    // A later event reaches both: the test went to its endpoint alone.
    create_lead(&acme, "After the test").await;
    other.wait_for(1, WITHIN).await;
    assert_eq!(other.requests()[0].json()["type"], "lead.created");
    assert_eq!(other.requests().len(), 1);

    stack.shutdown().await;
}

/// `(status, attempts)` of every delivery to an endpoint.
async fn delivery_attempts(pool: &PgPool, endpoint: Uuid) -> Vec<(String, i32)> {
    sqlx::query_as("select status, attempts from webhook_deliveries where endpoint_id = $1")
        .bind(endpoint)
        .fetch_all(pool)
        .await
        .expect("the deliveries")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_failing_endpoint_gets_probes_not_every_event_and_its_backlog_once_it_recovers(
    pool: PgPool,
) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = stack_with(
        &env,
        "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms",
        true,
    )
    .await;
    let acme = Tenant::new(&stack, "Acme").await;
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Status(500));
    let (endpoint, _) = subscribe(&acme, &receiver.url, &["lead.created"]).await;

    const EVENTS: usize = 20;
    for i in 0..EVENTS {
        create_lead(&acme, &format!("Lead {i}")).await;
    }
    eventually("every delivery to be created", WITHIN, || async {
        (delivery_attempts(&pool, endpoint).await.len() == EVENTS).then_some(())
    })
    .await;
    // The circuit opened after a few failures: deliveries wait, untried,
    // instead of each costing the dispatcher a request.
    let held = eventually("the circuit to hold deliveries back", WITHIN, || async {
        let deliveries = delivery_attempts(&pool, endpoint).await;
        let untried = deliveries.iter().filter(|(_, a)| *a == 0).count();
        (untried > 0).then_some(untried)
    })
    .await;
    assert!(
        receiver.requests().len() < EVENTS,
        "{} requests for {EVENTS} events ({held} untried)",
        receiver.requests().len()
    );

    receiver.set(Behaviour::Ok);
    let done = eventually("the backlog to be delivered", WITHIN, || async {
        let deliveries = delivery_attempts(&pool, endpoint).await;
        deliveries
            .iter()
            .all(|(status, _)| status == "delivered")
            .then_some(deliveries)
    })
    .await;
    assert_eq!(done.len(), EVENTS);
    let delivered: std::collections::HashSet<String> = receiver
        .requests()
        .iter()
        .filter(|r| r.answered == Some(200))
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(delivered.len(), EVENTS, "every event reached the receiver");

    stack.shutdown().await;
}
