//! The event store against a real PostgreSQL: optimistic concurrency,
//! idempotent appends, group commits, and gap-free tailing under concurrency.

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use schema::envelope::{Decoded, Metadata, NewEvent};
use schema::events::{stream_types, EventPayload, LeadStage, LeadStageChanged, TenantCreated};
use schema::store::{self, AppendError, EventStore, ExpectedVersion, StreamRef};
use sqlx::PgPool;
use uuid::Uuid;

fn tenant_stream(tenant: Uuid) -> StreamRef {
    StreamRef {
        tenant_id: tenant,
        stream_type: stream_types::TENANT,
        stream_id: tenant,
    }
}

fn event(name: &str) -> NewEvent {
    NewEvent::new(
        &EventPayload::from(TenantCreated { name: name.into() }),
        Metadata::default(),
    )
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn appends_get_dense_positions_and_stream_versions(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let a = tenant_stream(Uuid::now_v7());
    let b = tenant_stream(Uuid::now_v7());

    let first = store
        .append(a, ExpectedVersion::NoStream, vec![event("a1"), event("a2")])
        .await
        .expect("first append");
    assert_eq!(first.version, 2);
    assert_eq!(first.positions, Some(1..=2));

    let second = store
        .append(b, ExpectedVersion::Any, vec![event("b1")])
        .await
        .expect("second append");
    assert_eq!((second.version, second.positions), (1, Some(3..=3)));

    let third = store
        .append(a, ExpectedVersion::Exact(2), vec![event("a3")])
        .await
        .expect("third append");
    assert_eq!((third.version, third.positions), (3, Some(4..=4)));

    let all = store::read_after(&pool, 0, 100).await.expect("read");
    let seen: Vec<(i64, i64)> = all.iter().map(|e| (e.position, e.stream_version)).collect();
    assert_eq!(seen, vec![(1, 1), (2, 2), (3, 1), (4, 3)]);
    assert_eq!(store::head(&pool).await.expect("head"), 4);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_stale_expected_version_conflicts_and_writes_nothing(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let s = tenant_stream(Uuid::now_v7());
    store
        .append(s, ExpectedVersion::NoStream, vec![event("one")])
        .await
        .expect("first append");

    for stale in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
    ] {
        let err = store
            .append(s, stale, vec![event("two"), event("three")])
            .await
            .expect_err("a stale version must conflict");
        match err {
            AppendError::Conflict {
                stream_id, actual, ..
            } => {
                assert_eq!(stream_id, s.stream_id);
                assert_eq!(actual, 1);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store::head(&pool).await.expect("head"), 1);
    let count: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn appending_stored_event_ids_again_is_a_no_op(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let s = tenant_stream(Uuid::now_v7());
    let events = vec![event("one"), event("two")];

    let first = store
        .append(s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("first append");
    assert!(!first.duplicate);

    // A retry with the same ids (and the now-stale expected version) succeeds
    // without writing anything.
    let retry = store
        .append(s, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("a retry is not an error");
    assert!(retry.duplicate);
    assert_eq!((retry.version, retry.positions), (2, None));

    // Part stored, part new: neither a retry nor a new append.
    let mixed = store
        .append(
            s,
            ExpectedVersion::Exact(2),
            vec![events[0].clone(), event("three")],
        )
        .await;
    assert!(
        matches!(mixed, Err(AppendError::Conflict { .. })),
        "{mixed:?}"
    );
    assert_eq!(store::head(&pool).await.expect("head"), 2);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn one_conflicting_append_does_not_fail_the_others_in_its_batch(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let contested = tenant_stream(Uuid::now_v7());
    // 50 appenders race for version 1 of one stream; 50 more append elsewhere.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = if i % 2 == 0 {
                contested
            } else {
                tenant_stream(Uuid::now_v7())
            };
            store
                .append(stream, ExpectedVersion::NoStream, vec![event("x")])
                .await
        }));
    }
    let mut won = 0;
    let mut conflicts = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(_) => won += 1,
            Err(AppendError::Conflict { .. }) if i % 2 == 0 => conflicts += 1,
            Err(e) => panic!("append {i} failed: {e:?}"),
        }
    }
    assert_eq!((won, conflicts), (51, 49));
    assert_eq!(store::head(&pool).await.expect("head"), 51);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn duplicate_ids_within_one_batch_fail_only_the_second(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let e = event("same");
    let (a, b) = tokio::join!(
        store.append(
            tenant_stream(Uuid::now_v7()),
            ExpectedVersion::Any,
            vec![e.clone()]
        ),
        store.append(
            tenant_stream(Uuid::now_v7()),
            ExpectedVersion::Any,
            vec![e.clone()]
        ),
    );
    // Whether they shared a batch or not, one wrote the event and the other
    // did not write it a second time.
    let outcomes = [a.is_ok(), b.is_ok()];
    assert!(outcomes.contains(&true), "{a:?} {b:?}");
    let count: i64 = sqlx::query_scalar("select count(*) from events where id = $1")
        .bind(e.id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

/// The sequence-gap problem: many concurrent appenders, some holding their
/// transaction open for a random while and some rolling back, and a reader
/// tailing by position. The reader must see every committed event exactly
/// once, in order, and never one that rolled back.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_tailing_reader_sees_every_committed_event_once_in_order(pool: PgPool) {
    const APPENDERS: usize = 16;
    const APPENDS_EACH: usize = 40;

    let store = EventStore::spawn(pool.clone());
    let done = flag();
    let reader = {
        let pool = pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = 0i64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let batch = store::read_after(&pool, last, 37).await.expect("read");
                for e in &batch {
                    assert_eq!(e.position, last + 1, "the reader saw a gap or a repeat");
                    last = e.position;
                    seen.push(e.id);
                }
                if batch.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    let mut appenders = Vec::new();
    for _ in 0..APPENDERS {
        let store = store.clone();
        let pool = pool.clone();
        appenders.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut rolled_back = Vec::new();
            for _ in 0..APPENDS_EACH {
                let (delay_ms, in_tx, rollback, n) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(0..4u64),
                        rng.gen_bool(0.3),
                        rng.gen_bool(0.5),
                        rng.gen_range(1..4),
                    )
                };
                let events: Vec<NewEvent> = (0..n).map(|_| event("e")).collect();
                let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
                let stream = tenant_stream(Uuid::now_v7());
                if in_tx {
                    let mut tx = pool.begin().await.expect("begin");
                    store::append_in(&mut *tx, stream, ExpectedVersion::NoStream, events)
                        .await
                        .expect("append in tx");
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    if rollback {
                        tx.rollback().await.expect("rollback");
                        rolled_back.extend(ids);
                    } else {
                        tx.commit().await.expect("commit");
                        committed.extend(ids);
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    store
                        .append(stream, ExpectedVersion::NoStream, events)
                        .await
                        .expect("append");
                    committed.extend(ids);
                }
            }
            (committed, rolled_back)
        }));
    }

    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    for a in appenders {
        let (c, r) = a.await.expect("appender");
        committed.extend(c);
        rolled_back.extend(r);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.expect("reader");

    let seen_set: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), seen_set.len(), "an event was seen twice");
    assert_eq!(seen_set, committed, "the reader missed or invented events");
    assert!(seen_set.is_disjoint(&rolled_back));
    assert!(
        !rolled_back.is_empty(),
        "the test should have rolled some back"
    );

    let stored: Vec<Uuid> = sqlx::query_scalar("select id from events order by position")
        .fetch_all(&pool)
        .await
        .expect("stored");
    assert_eq!(stored, seen, "the reader's order differs from the log's");
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn recorded_events_decode_to_their_payloads(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let lead = Uuid::now_v7();
    let payload = EventPayload::from(LeadStageChanged {
        previous_stage: LeadStage::New,
        stage: LeadStage::Won,
    });
    let metadata = Metadata {
        request_id: Some("req-1".into()),
        key_id: Some(Uuid::now_v7()),
    };
    store
        .append(
            StreamRef {
                tenant_id: Uuid::now_v7(),
                stream_type: stream_types::LEAD,
                stream_id: lead,
            },
            ExpectedVersion::Any,
            vec![NewEvent::new(&payload, metadata.clone())],
        )
        .await
        .expect("append");
    let recorded = store::read_after(&pool, 0, 1)
        .await
        .expect("read")
        .remove(0);
    assert_eq!(recorded.event_type, "LeadStageChanged");
    assert_eq!(recorded.metadata, metadata);
    assert_eq!(recorded.decode().expect("decode"), Decoded::Known(payload));
}

fn flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_stream_reads_back_oldest_first_and_alone(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let a = tenant_stream(Uuid::now_v7());
    let b = tenant_stream(Uuid::now_v7());
    store
        .append(a, ExpectedVersion::NoStream, vec![event("a1")])
        .await
        .expect("a1");
    store
        .append(b, ExpectedVersion::NoStream, vec![event("b1")])
        .await
        .expect("b1");
    store
        .append(a, ExpectedVersion::Exact(1), vec![event("a2"), event("a3")])
        .await
        .expect("a2, a3");

    let read = store::read_stream(&pool, a.stream_id).await.expect("read");
    let versions: Vec<i64> = read.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert!(read.iter().all(|e| e.stream_id == a.stream_id));
    assert!(store::read_stream(&pool, Uuid::now_v7())
        .await
        .expect("read")
        .is_empty());

    let both = store::read_streams(&pool, &[b.stream_id, a.stream_id])
        .await
        .expect("read both");
    assert_eq!(both.len(), 4);
    let of_a: Vec<i64> = both
        .iter()
        .filter(|e| e.stream_id == a.stream_id)
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(of_a, [1, 2, 3]);
}
