//! Replay through NATS, as a subscriber outside Jeanus would do it with
//! async-nats against the real server: one tenant's events from a chosen
//! position, read from `<PREFIX>_EVENTS` with a consumer that starts at that
//! stream sequence (sequence = position) and filters on the tenant's
//! subjects; then a durable consumer that resumes after what it acked.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use futures::StreamExt;
use jeanus_tests::{eventually, seed, TestEnv};
use schema::envelope::RecordedEvent;
use schema::events::LeadStage;
use schema::store::EventStore;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The tenant's events at or after `from`, from the log.
async fn from_log(pool: &PgPool, tenant: Uuid, from: i64) -> Vec<RecordedEvent> {
    sqlx::query_as(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, metadata, data
           from events where tenant_id = $1 and position >= $2 order by position",
    )
    .bind(tenant)
    .bind(from)
    .fetch_all(pool)
    .await
    .expect("read the log")
}

/// Up to `max` messages, waiting at most `wait` for them: each event with
/// its stream sequence.
async fn fetch(
    consumer: &PullConsumer,
    max: usize,
    wait: Duration,
    ack: bool,
) -> Vec<(u64, RecordedEvent)> {
    let mut messages = consumer
        .fetch()
        .max_messages(max)
        .expires(wait)
        .messages()
        .await
        .expect("fetch");
    let mut got = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.expect("a message");
        let sequence = message.info().expect("JetStream info").stream_sequence;
        let event: RecordedEvent = serde_json::from_slice(&message.payload).expect("an event");
        if ack {
            message.ack().await.expect("ack");
        }
        got.push((sequence, event));
    }
    got
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_subscriber_replays_one_tenants_events_from_a_position(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let shutdown = CancellationToken::new();
    let relay = schema::relay::spawn(
        pool.clone(),
        env.js.clone(),
        env.names.clone(),
        shutdown.clone(),
    );
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    // Interleaved: each tenant's events are scattered through the log.
    for i in 0..30 {
        for tenant in tenants {
            seed::create(
                &store,
                tenant,
                seed::lead(&format!("Lead {i}"), None, LeadStage::New),
                None,
            )
            .await;
        }
    }
    let head = schema::store::head(&pool).await.expect("head");
    let stream = eventually(
        "the stream to hold the log",
        Duration::from_secs(30),
        || async {
            let mut stream = env.js.get_stream(env.names.stream_name()).await.ok()?;
            let last = stream.info().await.ok()?.state.last_sequence;
            (last == head as u64).then_some(stream)
        },
    )
    .await;

    let tenant = tenants[1];
    let all = from_log(&pool, tenant, 1).await;
    let from = all[10].position;
    let expected = from_log(&pool, tenant, from).await;
    assert_eq!(expected.len(), 20);

    // An ephemeral consumer: no state on the server beyond the read, no
    // acks (the reader keeps its own position), gone when idle.
    let replay = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from as u64,
            },
            filter_subject: env.names.tenant_events(tenant),
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("an ephemeral consumer");
    let got = fetch(&replay, 100, Duration::from_millis(500), false).await;
    let sequences: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    let positions: Vec<u64> = expected.iter().map(|e| e.position as u64).collect();
    assert_eq!(
        sequences, positions,
        "exactly the tenant's positions from {from}, in order"
    );
    let events: Vec<RecordedEvent> = got.into_iter().map(|(_, e)| e).collect();
    assert_eq!(events, expected, "each event as the log holds it");
    assert!(
        fetch(&replay, 10, Duration::from_millis(300), false)
            .await
            .is_empty(),
        "nothing more"
    );

    // A durable consumer with explicit acks resumes after what it acked,
    // even from a new handle (another process).
    let config = pull::Config {
        durable_name: Some("auditor".to_owned()),
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: from as u64,
        },
        filter_subject: env.names.tenant_events(tenant),
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    };
    let durable = stream
        .create_consumer(config.clone())
        .await
        .expect("a durable consumer");
    let first = fetch(&durable, 5, Duration::from_millis(500), true).await;
    assert_eq!(first.len(), 5);
    drop(durable);
    let again: PullConsumer = stream
        .get_consumer("auditor")
        .await
        .expect("the durable consumer");
    let rest = fetch(&again, 100, Duration::from_millis(500), true).await;
    let resumed: Vec<u64> = first.iter().chain(&rest).map(|(s, _)| *s).collect();
    assert_eq!(
        resumed, positions,
        "resumed after the acked ones, nothing twice"
    );
    stream
        .delete_consumer("auditor")
        .await
        .expect("delete the durable consumer");
    shutdown.cancel();
    relay.await.expect("the relay stops cleanly");
}
