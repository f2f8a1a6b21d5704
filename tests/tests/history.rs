//! The event history API end to end: `GET /api/v1/events` pages without
//! gaps or repeats, only ever shows the caller's tenant, filters, refuses
//! bad parameters and keys without the admin scope; streams NDJSON in
//! bounded memory; and what it returns lets a third party
//! (`scripts/verify_chain.py`) verify the hash chain, and catch tampering.

use std::time::Duration;

use jeanus_tests::chain::{self, append_events, positions_of, run_verify_script};
use jeanus_tests::process::Service;
use jeanus_tests::stack::{send, MintedKey};
use jeanus_tests::{eventually, spawn_stack, Stack, TestEnv};
use reqwest::{Method, StatusCode};
use schema::store::EventStore;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// A tenant with a key of `scopes` that no test exhausts.
async fn tenant(stack: &Stack, name: &str, scopes: &[&str]) -> MintedKey {
    let tenant = stack.create_tenant(name).await;
    stack
        .mint_key_with(
            tenant,
            json!({"label": "history", "scopes": scopes, "rate_limit_per_minute": 10000}),
        )
        .await
}

async fn get(stack: &Stack, key: &MintedKey, path: &str) -> Value {
    let (status, body) = send(stack.with_key(Method::GET, path, &key.key)).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// Every page of `query` (without `after`), following `next_after`.
async fn all_pages(stack: &Stack, key: &MintedKey, query: &str) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = get(stack, key, &format!("/api/v1/events?after={after}&{query}")).await;
        pages += 1;
        let data = page["data"].as_array().expect("data").clone();
        let next = page["pagination"]["next_after"]
            .as_i64()
            .expect("next_after");
        match data.last() {
            Some(last) => assert_eq!(next, last["position"].as_i64().expect("a position")),
            None => assert_eq!(next, after),
        }
        events.extend(data);
        if !page["pagination"]["has_more"].as_bool().expect("has_more") {
            break;
        }
        after = next;
    }
    (events, pages)
}

fn positions(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["position"].as_i64().expect("a position"))
        .collect()
}

/// The NDJSON history of `key`'s tenant after `after`, as bytes.
async fn ndjson(stack: &Stack, key: &MintedKey, query: &str) -> Vec<u8> {
    let response = stack
        .with_key(Method::GET, &format!("/api/v1/events?{query}"), &key.key)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "the stream's media type"
    );
    response.bytes().await.expect("the whole stream").to_vec()
}

fn lines(body: &[u8]) -> Vec<Value> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is a JSON event"))
        .collect()
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_history_pages_in_order_without_gaps_or_repeats_and_per_tenant(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let a = tenant(&stack, "Acme", &["admin"]).await;
    let b = tenant(&stack, "Bolt", &["admin"]).await;
    let store = EventStore::spawn(pool.clone());
    // Interleaved: each tenant's positions have gaps where the other's are.
    let mut a_streams = Vec::new();
    for _ in 0..5 {
        a_streams.push(append_events(&store, a.tenant_id, 7, 3, 20).await);
        append_events(&store, b.tenant_id, 4, 4, 20).await;
    }

    let expected = positions_of(&pool, a.tenant_id).await;
    assert!(expected.len() > 35, "{} events", expected.len());
    let (events, pages) = all_pages(&stack, &a, "limit=7").await;
    assert_eq!(positions(&events), expected, "every event once, in order");
    assert!(pages >= expected.len() / 7, "{pages} pages");
    let b_positions = positions_of(&pool, b.tenant_id).await;
    assert!(positions(&events).iter().all(|p| !b_positions.contains(p)));

    // Each event as stored, with every documented field.
    let stored: (Uuid, String, i32, String, Uuid, i64, String, Vec<u8>) = sqlx::query_as(
        "select id, event_type, schema_version, stream_type, stream_id, stream_version,
                data::text, hash
           from events where position = $1",
    )
    .bind(expected[expected.len() - 1])
    .fetch_one(&pool)
    .await
    .expect("the last event");
    let last = events.last().expect("events");
    assert_eq!(last["id"], stored.0.to_string());
    assert_eq!(last["type"], stored.1);
    assert_eq!(last["schema_version"], stored.2);
    assert_eq!(last["stream_type"], stored.3);
    assert_eq!(last["stream_id"], stored.4.to_string());
    assert_eq!(last["stream_version"], stored.5);
    assert_eq!(
        last["data"],
        serde_json::from_str::<Value>(&stored.6).expect("json")
    );
    assert_eq!(last["hash"], schema::chain::to_hex(&stored.7));
    assert!(last["metadata"].is_object());
    let occurred_at = last["occurred_at"].as_str().expect("a time");
    assert_eq!(
        occurred_at.len(),
        "2026-01-31T09:00:00.000000Z".len(),
        "{occurred_at}"
    );

    // The default page is 100; `after` past the end is an empty last page.
    let first = get(&stack, &a, "/api/v1/events").await;
    assert_eq!(
        first["data"].as_array().expect("data").len(),
        expected.len().min(100)
    );
    let end = *expected.last().expect("events");
    let past = get(&stack, &a, &format!("/api/v1/events?after={end}")).await;
    assert_eq!(past["data"], json!([]));
    assert_eq!(
        past["pagination"],
        json!({"next_after": end, "has_more": false})
    );

    // The other tenant sees only its own.
    let (theirs, _) = all_pages(&stack, &b, "limit=1000").await;
    assert_eq!(positions(&theirs), b_positions);

    // Filters: by stream, by type, both.
    let stream = a_streams[2];
    let (in_stream, _) = all_pages(&stack, &a, &format!("stream_id={stream}&limit=2")).await;
    assert_eq!(in_stream.len(), 7);
    assert!(in_stream
        .iter()
        .all(|e| e["stream_id"] == stream.to_string()));
    let versions: Vec<i64> = in_stream
        .iter()
        .map(|e| e["stream_version"].as_i64().expect("a version"))
        .collect();
    assert_eq!(versions, (1..=7).collect::<Vec<_>>());
    let (fillers, _) = all_pages(&stack, &a, "type=AuditFiller&limit=1000").await;
    assert_eq!(fillers.len(), 35);
    let (others, _) = all_pages(&stack, &a, "type=TenantCreated").await;
    assert_eq!(others.len(), 1, "{others:?}");
    // Another tenant's stream is not found, even by id.
    let b_stream: Uuid = sqlx::query_scalar(
        "select stream_id from events where tenant_id = $1 and event_type = $2 limit 1",
    )
    .bind(b.tenant_id)
    .bind(chain::FILLER_TYPE)
    .fetch_one(&pool)
    .await
    .expect("a stream of b");
    let (leaked, _) = all_pages(&stack, &a, &format!("stream_id={b_stream}")).await;
    assert!(leaked.is_empty(), "{leaked:?}");

    // The NDJSON stream is the same history, in one response.
    let streamed = lines(&ndjson(&stack, &a, "").await);
    assert_eq!(streamed, events);
    let tail = lines(&ndjson(&stack, &a, &format!("after={}", expected[10])).await);
    assert_eq!(positions(&tail), expected[11..].to_vec());
    let filtered = lines(&ndjson(&stack, &a, &format!("stream_id={stream}")).await);
    assert_eq!(filtered, in_stream);

    // The head is the tenant's last event.
    let head = get(&stack, &a, "/api/v1/events/head").await;
    assert_eq!(head["data"]["position"], end);
    assert_eq!(head["data"]["hash"], last["hash"]);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn bad_parameters_and_keys_without_the_admin_scope_are_refused(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let admin = tenant(&stack, "Acme", &["admin"]).await;
    for (query, name) in [
        ("after=-1", "after"),
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("type=", "type"),
        ("stream_id=42", "stream_id"),
        ("since=2020-01-01", "since"),
    ] {
        let (status, body) =
            send(stack.with_key(Method::GET, &format!("/api/v1/events?{query}"), &admin.key)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_param", "{query}");
        let message = body["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains(&format!("\"{name}\"")),
            "{query}: {message}"
        );
        assert!(body["request_id"].is_string());
    }
    // A stream has no page size.
    let (status, body) = send(
        stack
            .with_key(Method::GET, "/api/v1/events?limit=10", &admin.key)
            .header("accept", "application/x-ndjson"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("a message")
        .contains("\"limit\""));

    for scopes in [&["read"][..], &["read", "write"][..]] {
        let key = stack.mint_key(admin.tenant_id, scopes).await;
        for path in ["/api/v1/events", "/api/v1/events/head"] {
            let (status, body) = send(stack.with_key(Method::GET, path, &key.key)).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{path} with {scopes:?}: {body}"
            );
            assert_eq!(body["error"]["code"], "missing_scope");
        }
    }
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_third_party_script_verifies_the_chain_and_catches_tampering(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let a = tenant(&stack, "Acme", &["admin", "write"]).await;
    let other = tenant(&stack, "Other", &["admin"]).await;
    // Events through the api (real payloads, metadata with the request id
    // and key) and odd data straight through the store.
    for i in 0..5 {
        let (status, body) =
            send(stack.with_key(Method::POST, "/api/v1/leads", &a.key).json(
                &json!({"name": format!("Zoë \"{i}\" Patel 漢"), "estimated_value": 12000 + i}),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let store = EventStore::spawn(pool.clone());
    append_events(&store, a.tenant_id, 20, 6, 50).await;
    append_events(&store, other.tenant_id, 5, 5, 10).await;

    let history = ndjson(&stack, &a, "").await;
    let verified = run_verify_script(&history, &[]);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // The script ends where the api's head is.
    let head = get(&stack, &a, "/api/v1/events/head").await;
    let checkpoint = format!(
        "{}:{}",
        head["data"]["position"],
        head["data"]["hash"].as_str().expect("a hash")
    );
    assert!(stdout.contains(&format!("head {checkpoint}")), "{stdout}");

    // From a checkpoint kept earlier, only what follows is needed.
    let events = lines(&history);
    let kept = &events[9];
    let from = format!(
        "{}:{}",
        kept["position"],
        kept["hash"].as_str().expect("hash")
    );
    let rest = lines(&ndjson(&stack, &a, &format!("after={}", kept["position"])).await);
    let rest_bytes: Vec<u8> = rest
        .iter()
        .flat_map(|e| format!("{e}\n").into_bytes())
        .collect();
    // (Re-serialized by serde_json here: the script must not depend on
    // the server's exact spacing.)
    let output = run_verify_script(&rest_bytes, &["--from", &from]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A wrong checkpoint fails at the first event after it.
    let wrong = format!("{}:{}", kept["position"], "00".repeat(32));
    let output = run_verify_script(&rest_bytes, &["--from", &wrong]);
    assert!(!output.status.success());

    // Tampering in the database: the script names the altered position.
    let positions = positions_of(&pool, a.tenant_id).await;
    let victim = positions[positions.len() / 2];
    chain::alter_payload(&pool, victim).await;
    let output = run_verify_script(&ndjson(&stack, &a, "").await, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("position {victim}:")), "{stderr}");

    // Tampering in transit (or a server that lies): one changed character.
    let mut forged = history.clone();
    let text = String::from_utf8(history.clone()).expect("utf-8");
    let at = text.find("12003").expect("an estimated value");
    forged[at + 4] = b'4';
    let output = run_verify_script(&forged, &[]);
    assert_eq!(output.status.code(), Some(1), "a forged amount passed");

    stack.shutdown().await;
}

/// VmHWM (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_ndjson_stream_of_100_000_events_runs_in_bounded_memory(pool: PgPool) {
    const EVENTS: usize = 100_000;
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let a = tenant(&stack, "Acme", &["admin"]).await;
    let store = EventStore::spawn(pool.clone());
    let started = std::time::Instant::now();
    append_events(&store, a.tenant_id, EVENTS, 100, 600).await;
    eprintln!("appended {EVENTS} events in {:?}", started.elapsed());

    // The api as a process of its own, so that its memory is its own.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let api = Service::start(
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
        .timeout(Duration::from_secs(300))
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
    // Warm up: a full page, so that the peak includes an ordinary request.
    let (status, _) = send(
        client
            .get(format!("{base}/api/v1/events?limit=1000"))
            .bearer_auth(&a.key),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let before = peak_rss_kib(api.id());
    let started = std::time::Instant::now();

    let mut response = client
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&a.key)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    // Read as it comes, keeping only a count and the last position.
    let (mut bytes, mut lines, mut last, mut partial) = (0usize, 0usize, 0i64, Vec::new());
    while let Some(chunk) = response.chunk().await.expect("the stream continues") {
        bytes += chunk.len();
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).expect("a JSON event");
            let position = event["position"].as_i64().expect("a position");
            assert!(position > last, "out of order: {position} after {last}");
            last = position;
            lines += 1;
        }
    }
    assert!(partial.is_empty(), "the stream ended mid-line");
    let after = peak_rss_kib(api.id());
    eprintln!("streamed in {:?}", started.elapsed());
    let tenant_events = positions_of(&pool, a.tenant_id).await;
    assert_eq!(lines, tenant_events.len());
    assert!(lines > EVENTS);
    let grown_kib = after.saturating_sub(before);
    let body_kib = (bytes / 1024) as u64;
    eprintln!(
        "streamed {lines} events, {body_kib} KiB; the api's peak RSS grew by {grown_kib} KiB \
         ({before} → {after} KiB)"
    );
    // Holding the whole history (or the whole body) would take at least
    // the body's size; a page at a time takes a few MiB.
    assert!(body_kib > 60 * 1024, "{body_kib} KiB is too small to tell");
    assert!(
        grown_kib < body_kib / 4,
        "the api's peak RSS grew by {grown_kib} KiB for a {body_kib} KiB stream"
    );
    drop(api);
    stack.shutdown().await;
}
