//! The relay from PostgreSQL to JetStream, against real servers: every
//! committed event lands in `<PREFIX>_EVENTS` exactly once, in position
//! order, even when relays crash mid-stream or run side by side.

use std::time::Duration;

use async_nats::jetstream;
use jeanus_tests::{eventually, seed, TestEnv};
use rand::Rng;
use schema::envelope::{Metadata, NewEvent, RecordedEvent};
use schema::events::{stream_types, LeadStage};
use schema::store::{self, EventStore, ExpectedVersion, StreamRef};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn lead_created(name: &str) -> NewEvent {
    NewEvent::new(&seed::lead(name, None, LeadStage::New), Metadata::default())
}

/// Append `appends` appends of 1–3 events each, from `writers` tasks.
async fn append_many(store: &EventStore, tenants: &[Uuid], writers: usize, appends: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let tenants = tenants.to_vec();
        tasks.push(tokio::spawn(async move {
            for i in (w..appends).step_by(writers) {
                let n = rand::thread_rng().gen_range(1..=3);
                let stream = StreamRef {
                    tenant_id: tenants[i % tenants.len()],
                    stream_type: stream_types::LEAD,
                    stream_id: Uuid::now_v7(),
                };
                let events = (0..n).map(|_| lead_created("Sarah")).collect();
                store
                    .append(stream, ExpectedVersion::NoStream, events)
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

async fn stream_last_sequence(env: &TestEnv) -> Option<u64> {
    let mut stream = env.js.get_stream(env.names.stream_name()).await.ok()?;
    Some(stream.info().await.ok()?.state.last_sequence)
}

/// The stream holds exactly the log: message `p` is event `p`, with its id
/// as `Nats-Msg-Id`, on its tenant's subject, and nothing more.
async fn assert_stream_equals_log(env: &TestEnv, pool: &PgPool) {
    let head = store::head(pool).await.expect("head");
    let last = eventually("the relay to catch up", Duration::from_secs(20), || async {
        stream_last_sequence(env)
            .await
            .filter(|&s| s as i64 >= head)
    })
    .await;
    assert_eq!(last as i64, head, "the stream went past the log");

    let mut stream = env
        .js
        .get_stream(env.names.stream_name())
        .await
        .expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(
        info.state.messages as i64, head,
        "the stream holds a duplicate or a hole"
    );
    assert_eq!(info.state.first_sequence, 1);

    let events = store::read_after(pool, 0, head).await.expect("log");
    for event in &events {
        let message = stream
            .get_raw_message(event.position as u64)
            .await
            .expect("message at the event's position");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .expect("a message id")
            .as_str()
            .to_owned();
        assert_eq!(id, event.id.to_string(), "position {}", event.position);
        assert_eq!(
            message.subject.as_str(),
            env.names
                .event_subject(event.tenant_id, &event.stream_type, &event.event_type)
        );
        let published: RecordedEvent =
            serde_json::from_slice(&message.payload).expect("the payload is the envelope");
        assert_eq!(&published, event);
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_committed_event_reaches_the_stream_once_in_order(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let shutdown = CancellationToken::new();
    let relay = schema::relay::spawn(
        pool.clone(),
        env.js.clone(),
        env.names.clone(),
        shutdown.clone(),
    );

    let store = EventStore::spawn(pool.clone());
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    append_many(&store, &tenants, 16, 300).await;

    assert_stream_equals_log(&env, &pool).await;
    shutdown.cancel();
    relay.await.expect("relay stops cleanly");
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_relay_killed_mid_stream_resumes_without_loss_or_duplicates(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7()];

    let writing = {
        let store = store.clone();
        tokio::spawn(async move { append_many(&store, &tenants, 8, 2_000).await })
    };
    // Kill the relay at random moments (between reading, publishing and
    // acknowledging), start a new one each time.
    let mut kills = 0;
    while !writing.is_finished() || kills < 5 {
        let shutdown = CancellationToken::new();
        let relay = schema::relay::spawn(pool.clone(), env.js.clone(), env.names.clone(), shutdown);
        let ms = rand::thread_rng().gen_range(5..60);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        relay.abort();
        let _ = relay.await;
        kills += 1;
    }
    writing.await.expect("writers");
    assert!(
        stream_last_sequence(&env).await.unwrap_or(0) > 0,
        "no relay got anything out"
    );

    let shutdown = CancellationToken::new();
    let relay = schema::relay::spawn(
        pool.clone(),
        env.js.clone(),
        env.names.clone(),
        shutdown.clone(),
    );
    assert_stream_equals_log(&env, &pool).await;
    shutdown.cancel();
    relay.await.expect("relay stops cleanly");
}

/// Two api instances: each its own event store (writer) and relay, one
/// database, one NATS.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn two_instances_appending_and_relaying_at_once_publish_each_event_once(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let other_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&env.database_url)
        .await
        .expect("second instance's pool");
    let other_nats = async_nats::connect(&env.nats_url)
        .await
        .expect("second NATS client");

    let shutdown = CancellationToken::new();
    let relays = [
        schema::relay::spawn(
            pool.clone(),
            env.js.clone(),
            env.names.clone(),
            shutdown.clone(),
        ),
        schema::relay::spawn(
            other_pool.clone(),
            jetstream::new(other_nats),
            env.names.clone(),
            shutdown.clone(),
        ),
    ];
    let stores = [
        EventStore::spawn(pool.clone()),
        EventStore::spawn(other_pool.clone()),
    ];
    let tenants: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    tokio::join!(
        append_many(&stores[0], &tenants, 8, 400),
        append_many(&stores[1], &tenants, 8, 400),
    );

    assert_stream_equals_log(&env, &pool).await;
    shutdown.cancel();
    for r in relays {
        r.await.expect("relay stops cleanly");
    }
}

/// The real thing: `jeanus-api` processes relaying while events are
/// appended, each killed with SIGKILL mid-stream and replaced.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn api_processes_killed_with_sigkill_mid_stream_lose_and_duplicate_nothing(pool: PgPool) {
    use jeanus_tests::process::Service;

    let env = TestEnv::new(pool.clone()).await;
    let service_env = [
        ("DATABASE_URL", env.database_url.clone()),
        ("NATS_URL", env.nats_url.clone()),
        ("REDIS_URL", env.redis_url.clone()),
        ("JEANUS_NATS_PREFIX", env.prefix().to_owned()),
        ("JEANUS_API_ADDR", "127.0.0.1:0".to_owned()),
    ];
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7()];
    let writing = {
        let store = store.clone();
        tokio::spawn(async move { append_many(&store, &tenants, 8, 3_000).await })
    };

    let mut kills = 0;
    while !writing.is_finished() || kills < 3 {
        let mut api = Service::start("jeanus-api", &[], &service_env);
        // Let it become the leader and publish part of the backlog.
        let before = stream_last_sequence(&env).await.unwrap_or(0);
        eventually(
            "the new relay to publish something",
            Duration::from_secs(20),
            || async {
                let now = stream_last_sequence(&env).await.unwrap_or(0);
                let head = store::head(&pool).await.unwrap_or(0) as u64;
                (now > before || (now == head && writing.is_finished())).then_some(())
            },
        )
        .await;
        api.kill();
        kills += 1;
    }
    writing.await.expect("writers");

    let _survivor = Service::start("jeanus-api", &[], &service_env);
    assert_stream_equals_log(&env, &pool).await;
}
