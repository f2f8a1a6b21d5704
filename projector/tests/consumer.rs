//! The projector's consumer against real PostgreSQL and NATS: events appended
//! with the event store and published by the relay reach the read models
//! exactly once, through unknown types, crashes and a second instance.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use projector::consumer::{self, UnreadableEvent, NOTIFY_CHANNEL};
use projector::projections::Projection;
use schema::envelope::{Metadata, NewEvent};
use schema::events::{stream_types, EventPayload, TenantCreated};
use schema::nats::Names;
use schema::store::{self, EventStore, ExpectedVersion, StreamRef};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(30);

/// A test's own NATS namespace over the database `#[sqlx::test]` gives; the
/// stream is deleted when the test ends, pass or fail.
struct Env {
    pool: PgPool,
    js: jetstream::Context,
    names: Names,
    nats_url: String,
    /// Stops the relay (and any consumer started with it) when dropped.
    shutdown: CancellationToken,
}

impl Env {
    async fn new(pool: PgPool) -> Self {
        let nats_url =
            std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let client = async_nats::connect(&nats_url)
            .await
            .expect("NATS is reachable at NATS_URL");
        let names = Names::new(&format!("t_{}", Uuid::now_v7().simple())).expect("a valid prefix");
        Self {
            pool,
            js: jetstream::new(client),
            names,
            nats_url,
            shutdown: CancellationToken::new(),
        }
    }

    fn start_relay(&self) {
        schema::relay::spawn(
            self.pool.clone(),
            self.js.clone(),
            self.names.clone(),
            self.shutdown.child_token(),
        );
    }

    /// A consumer applying every projection, with its own shutdown token.
    fn start_consumer(&self) -> (JoinHandle<anyhow::Result<()>>, CancellationToken) {
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(consumer::run(
            self.pool.clone(),
            self.js.clone(),
            self.names.clone(),
            Projection::ALL.to_vec(),
            stop.clone(),
        ));
        (task, stop)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // On a thread of its own: Drop cannot await, and it must run even
        // when the test panicked.
        let url = self.nats_url.clone();
        let stream = self.names.stream_name();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(&url).await {
                    let _ = jetstream::new(client).delete_stream(&stream).await;
                }
            });
        })
        .join();
    }
}

/// Poll `check` every 5 ms until it returns `Some`, or panic after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn tenant_stream(id: Uuid) -> StreamRef {
    StreamRef {
        tenant_id: id,
        stream_type: stream_types::TENANT,
        stream_id: id,
    }
}

async fn create_tenant(store: &EventStore, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    let payload = EventPayload::from(TenantCreated { name: name.into() });
    store
        .append(
            tenant_stream(id),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&payload, Metadata::default())],
        )
        .await
        .expect("append TenantCreated");
    id
}

/// `count` tenants created by `writers` concurrent tasks; their ids.
async fn create_tenants(store: &EventStore, count: usize, writers: usize) -> BTreeSet<Uuid> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..count).step_by(writers) {
                ids.push(create_tenant(&store, &format!("Tenant {i}")).await);
            }
            ids
        }));
    }
    let mut ids = BTreeSet::new();
    for task in tasks {
        ids.extend(task.await.expect("writer"));
    }
    ids
}

/// Append one raw event, bypassing the typed payloads.
async fn append_raw(pool: &PgPool, event_type: &'static str, data: serde_json::Value) -> i64 {
    let id = Uuid::now_v7();
    let event = NewEvent {
        id: Uuid::now_v7(),
        event_type,
        schema_version: 1,
        occurred_at: Utc::now(),
        metadata: Metadata::default(),
        data,
    };
    let appended = store::append_in(pool, tenant_stream(id), ExpectedVersion::Any, vec![event])
        .await
        .expect("append a raw event");
    *appended.positions.expect("one position").end()
}

async fn projected(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select jeanus_projected_position()")
        .fetch_one(pool)
        .await
        .expect("read the projected position")
}

async fn wait_projected(pool: &PgPool, position: i64) {
    eventually(
        &format!("the read models to reach position {position}"),
        WITHIN,
        || async { (projected(pool).await >= position).then_some(()) },
    )
    .await;
}

async fn tenant_ids(pool: &PgPool) -> BTreeSet<Uuid> {
    sqlx::query_scalar::<_, Uuid>("select id from tenants")
        .fetch_all(pool)
        .await
        .expect("read tenants")
        .into_iter()
        .collect()
}

async fn checkpoint(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("select position from projector_checkpoint where name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("read a checkpoint")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn appended_events_are_projected_and_the_checkpoint_reaches_the_head(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    let mut listener = PgListener::connect_with(&pool).await.expect("listener");
    listener.listen(NOTIFY_CHANNEL).await.expect("listen");
    env.start_relay();
    let (_consumer, _stop) = env.start_consumer();
    let store = EventStore::spawn(pool.clone());

    let acme = create_tenant(&store, "Acme").await;
    let ids = create_tenants(&store, 50, 4).await;
    let head = store::head(&pool).await.expect("head");
    assert_eq!(head, 51);

    wait_projected(&pool, head).await;
    assert_eq!(checkpoint(&pool, "tenants").await, head);
    let mut expected = ids;
    expected.insert(acme);
    assert_eq!(tenant_ids(&pool).await, expected);
    let name: String = sqlx::query_scalar("select name from tenants where id = $1")
        .bind(acme)
        .fetch_one(&pool)
        .await
        .expect("Acme");
    assert_eq!(name, "Acme");

    // Each commit announces the projected position, ending with the head.
    let notified = async {
        loop {
            let n = listener.recv().await.expect("a notification");
            if n.payload().parse::<i64>().expect("a position") == head {
                break;
            }
        }
    };
    tokio::time::timeout(WITHIN, notified)
        .await
        .expect("a notification of the head");
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_event_of_an_unknown_type_is_skipped_and_later_events_still_applied(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    env.start_relay();
    let (_consumer, _stop) = env.start_consumer();
    let store = EventStore::spawn(pool.clone());

    let before = create_tenant(&store, "Before").await;
    let unknown = append_raw(
        &pool,
        "SomethingFromTheFuture",
        serde_json::json!({"warp": 9}),
    )
    .await;
    assert_eq!(unknown, 2);
    wait_projected(&pool, unknown).await;

    let after = create_tenant(&store, "After").await;
    wait_projected(&pool, 3).await;
    assert_eq!(tenant_ids(&pool).await, BTreeSet::from([before, after]));
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_unreadable_event_of_a_known_type_stops_the_consumer_before_it(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    env.start_relay();
    let store = EventStore::spawn(pool.clone());

    let before = create_tenant(&store, "Before").await;
    let bad = append_raw(&pool, "TenantCreated", serde_json::json!({"nom": "x"})).await;
    create_tenant(&store, "After").await;

    let stopped = tokio::time::timeout(
        WITHIN,
        consumer::run(
            pool.clone(),
            env.js.clone(),
            env.names.clone(),
            Projection::ALL.to_vec(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the consumer stops by itself")
    .expect_err("an unreadable event is an error");
    let unreadable = stopped
        .downcast_ref::<UnreadableEvent>()
        .expect("the error names the unreadable event");
    assert_eq!(unreadable.position, bad);
    assert_eq!(unreadable.event_type.as_deref(), Some("TenantCreated"));

    // Everything before it was applied; nothing from it on.
    assert_eq!(projected(&pool).await, bad - 1);
    assert_eq!(tenant_ids(&pool).await, BTreeSet::from([before]));
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_consumer_aborted_mid_stream_and_restarted_applies_every_event_once(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    env.start_relay();
    let store = EventStore::spawn(pool.clone());

    // A backlog, so that the first consumer dies part way through it.
    let mut expected = create_tenants(&store, 3000, 8).await;
    let backlog = store::head(&pool).await.expect("head");

    let (first, _stop) = env.start_consumer();
    let reached = eventually("the first batches to commit", WITHIN, || async {
        let p = projected(&pool).await;
        (p > 0).then_some(p)
    })
    .await;
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());
    let at_abort = projected(&pool).await;
    assert!(
        at_abort < backlog,
        "the first consumer finished the backlog ({reached}..{at_abort} of {backlog}) before it was aborted"
    );

    // A second consumer, aborted while writers are still appending.
    let writers = {
        let store = store.clone();
        tokio::spawn(async move { create_tenants(&store, 1000, 8).await })
    };
    let (second, _stop) = env.start_consumer();
    eventually("the second consumer to make progress", WITHIN, || async {
        (projected(&pool).await > at_abort).then_some(())
    })
    .await;
    second.abort();
    let _ = second.await;

    let (_third, _stop) = env.start_consumer();
    expected.extend(writers.await.expect("writers"));
    let head = store::head(&pool).await.expect("head");
    assert_eq!(head, 4000);
    wait_projected(&pool, head).await;

    // The primary key would have failed a second insert; check the rows too.
    assert_eq!(tenant_ids(&pool).await, expected);
    assert_eq!(checkpoint(&pool, "tenants").await, head);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn two_consumers_at_once_do_not_double_apply_and_the_standby_takes_over(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    env.start_relay();
    let store = EventStore::spawn(pool.clone());

    let (leader, _stop) = env.start_consumer();
    let mut expected = BTreeSet::from([create_tenant(&store, "First").await]);
    wait_projected(&pool, 1).await;

    // Both running: the second stands by while the first applies.
    let (_standby, _stop) = env.start_consumer();
    expected.extend(create_tenants(&store, 500, 8).await);
    wait_projected(&pool, store::head(&pool).await.expect("head")).await;
    assert_eq!(tenant_ids(&pool).await, expected);

    // The leader dies (its lock connection with it): the standby carries on.
    leader.abort();
    let _ = leader.await;
    expected.extend(create_tenants(&store, 500, 8).await);
    let head = store::head(&pool).await.expect("head");
    assert_eq!(head, 1001);
    wait_projected(&pool, head).await;
    assert_eq!(tenant_ids(&pool).await, expected);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_consumer_waits_for_the_stream_and_stops_on_shutdown(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    let (consumer, stop) = env.start_consumer();
    let store = EventStore::spawn(pool.clone());
    let acme = create_tenant(&store, "Acme").await;

    // No relay yet, so no stream: the consumer waits for it rather than fail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!consumer.is_finished());
    env.start_relay();
    wait_projected(&pool, 1).await;
    assert_eq!(tenant_ids(&pool).await, BTreeSet::from([acme]));

    stop.cancel();
    tokio::time::timeout(WITHIN, consumer)
        .await
        .expect("the consumer stops on shutdown")
        .expect("not aborted")
        .expect("a clean stop");
}

/// The backend holding the projector's leader lock in this database, if any.
async fn leader_backend(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "select pid from pg_locks
          where locktype = 'advisory' and granted and objsubid = 1
            and database = (select oid from pg_database where datname = current_database())
            and objid = (hashtext('jeanus.projector')::bigint & 4294967295)::oid",
    )
    .fetch_optional(pool)
    .await
    .expect("read pg_locks")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn when_the_leaders_lock_connection_is_killed_the_projection_carries_on(pool: PgPool) {
    let env = Env::new(pool.clone()).await;
    env.start_relay();
    let store = EventStore::spawn(pool.clone());
    let (_first, _stop) = env.start_consumer();
    let (_second, _stop) = env.start_consumer();

    let mut expected = create_tenants(&store, 100, 4).await;
    wait_projected(&pool, 100).await;
    let leader = leader_backend(&pool).await.expect("a leader");

    let killed: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(leader)
        .fetch_one(&pool)
        .await
        .expect("terminate the leader's lock connection");
    assert!(killed);
    expected.extend(create_tenants(&store, 300, 4).await);

    let head = store::head(&pool).await.expect("head");
    wait_projected(&pool, head).await;
    assert_eq!(tenant_ids(&pool).await, expected);
    eventually("a new leader", WITHIN, || async {
        leader_backend(&pool).await.filter(|&pid| pid != leader)
    })
    .await;
}
