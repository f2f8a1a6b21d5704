//! `jeanus_rate_limit` (schema/migrations/0013) against a model of the exact
//! sliding window: random batches of requests over several keys, limits and
//! sleeps, each decision checked against the times of the requests the
//! function accepted before it. The api's tests (layers.rs) check the same
//! limiter through HTTP across instances; these check the function's
//! arithmetic, including the window's advance after a long idle time.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

const WINDOW_MS: i64 = 300;
/// The decision times come back floored to whole milliseconds: a request
/// this close to the window's edge is not judged by the model.
const EDGE_MS: i64 = 2;

#[derive(Debug, sqlx::FromRow)]
struct Decision {
    idx: i64,
    allowed: bool,
    remaining: i32,
    reset_after_ms: i64,
    now_ms: i64,
}

async fn decide(db: &PgPool, requests: &[(Uuid, i32, bool)], window_ms: i64) -> Vec<Decision> {
    let keys: Vec<Uuid> = requests.iter().map(|r| r.0).collect();
    let limits: Vec<i32> = requests.iter().map(|r| r.1).collect();
    let consume: Vec<bool> = requests.iter().map(|r| r.2).collect();
    let rows: Vec<Decision> = sqlx::query_as(
        "select idx, allowed, remaining, reset_after_ms, now_ms \
           from jeanus_rate_limit($1, $2, $3, $4)",
    )
    .bind(&keys)
    .bind(&limits)
    .bind(&consume)
    .bind(window_ms)
    .fetch_all(db)
    .await
    .expect("jeanus_rate_limit runs");
    assert_eq!(rows.len(), requests.len(), "one decision per request");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row.idx,
            i as i64 + 1,
            "decisions come back in request order"
        );
    }
    rows
}

/// Per key: its limit and the times of the requests it had accepted.
#[derive(Default)]
struct Model {
    keys: HashMap<Uuid, (i32, Vec<i64>)>,
}

/// What the model expects of a key's window at a decision's time.
struct Window {
    /// Accepted requests inside the window.
    in_window: i32,
    /// One of them is too close to the window's edge to judge by.
    near_edge: bool,
    /// Once the window is full, how long until a request is next free.
    reset_after_ms: i64,
}

impl Model {
    /// The times `key` had accepted under `limit`: a changed limit starts
    /// the key over.
    fn times(&mut self, key: Uuid, limit: i32) -> &mut Vec<i64> {
        let entry = self.keys.entry(key).or_insert((limit, Vec::new()));
        if entry.0 != limit {
            *entry = (limit, Vec::new());
        }
        &mut entry.1
    }

    /// Checks one decision; returns false when the request was too close to
    /// the window's edge to judge (its acceptance is then taken as decided).
    fn check(&mut self, key: Uuid, limit: i32, spend: bool, d: &Decision, what: &str) -> bool {
        let times = self.times(key, limit);
        let w = window(times, d.now_ms);
        if !w.near_edge {
            let allowed = w.in_window < limit;
            assert_eq!(
                d.allowed, allowed,
                "{what}: allowed with {} of {limit} in the window",
                w.in_window
            );
            let after = w.in_window + i32::from(allowed && spend);
            assert_eq!(d.remaining, limit - after, "{what}: remaining");
            if d.remaining > 0 {
                assert_eq!(
                    d.reset_after_ms, 0,
                    "{what}: nothing to wait for while some remain"
                );
            } else {
                assert_reset(d.reset_after_ms, &w, what);
            }
        }
        accept(
            times,
            d.now_ms,
            usize::from(d.allowed && spend),
            limit,
            what,
        );
        !w.near_edge
    }
}

/// The model's window over `times` at `now_ms`.
fn window(times: &[i64], now_ms: i64) -> Window {
    let cutoff = now_ms - WINDOW_MS;
    let inside = times.iter().copied().filter(|&t| t > cutoff);
    Window {
        in_window: inside.clone().count() as i32,
        near_edge: times.iter().any(|&t| (t - cutoff).abs() <= EDGE_MS),
        reset_after_ms: inside.min().unwrap_or(now_ms) + WINDOW_MS - now_ms,
    }
}

fn assert_reset(reset_after_ms: i64, w: &Window, what: &str) {
    assert!(
        (reset_after_ms - w.reset_after_ms).abs() <= EDGE_MS,
        "{what}: reset after {reset_after_ms} ms, expected about {}",
        w.reset_after_ms
    );
}

/// Records `n` requests accepted at `now_ms`; then checks the safety,
/// whatever the edge: never more than the limit in a window.
fn accept(times: &mut Vec<i64>, now_ms: i64, n: usize, limit: i32, what: &str) {
    times.extend(std::iter::repeat_n(now_ms, n));
    let last = times.last().copied().unwrap_or(now_ms);
    let recent = times
        .iter()
        .filter(|&&t| t > last - WINDOW_MS + EDGE_MS)
        .count() as i32;
    assert!(
        recent <= limit,
        "{what}: {recent} accepted within one window, limit {limit}"
    );
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn random_batches_agree_with_the_exact_sliding_window(db: PgPool) {
    let mut rng = StdRng::seed_from_u64(0x6a65_616e_7573);
    let keys: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut limits: HashMap<Uuid, i32> = keys.iter().map(|k| (*k, rng.gen_range(1..=6))).collect();
    let mut model = Model::default();
    let mut judged = 0;
    let mut refused = 0;
    for batch_no in 0..120 {
        if batch_no == 60 {
            // One key's limit changes mid-run.
            limits.insert(keys[0], 3);
        }
        let n = rng.gen_range(1..=12);
        let batch: Vec<(Uuid, i32, bool)> = (0..n)
            .map(|_| {
                let key = keys[rng.gen_range(0..keys.len())];
                (key, limits[&key], rng.gen_bool(0.85))
            })
            .collect();
        let decisions = decide(&db, &batch, WINDOW_MS).await;
        for (i, ((key, limit, spend), d)) in batch.iter().zip(&decisions).enumerate() {
            if model.check(
                *key,
                *limit,
                *spend,
                d,
                &format!("batch {batch_no}, request {i}"),
            ) {
                judged += 1;
            }
            refused += usize::from(!d.allowed);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
    }
    // The run must have exercised both sides of the limit.
    assert!(judged > 500, "only {judged} decisions were judged");
    assert!(
        refused > 50,
        "only {refused} refusals: the limit was never reached"
    );
}

/// A key with a long history that then goes idle is, after the window, as
/// free as a new one: the advance finds the window's start however many
/// requests left it, without reading them one by one.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_long_history_leaves_the_window_at_once(db: PgPool) {
    let key = Uuid::now_v7();
    let limit = 5_000;
    for _ in 0..4 {
        let batch = vec![(key, limit, true); 1_000];
        let decisions = decide(&db, &batch, WINDOW_MS).await;
        assert!(decisions.iter().all(|d| d.allowed));
    }
    let d = &decide(&db, &[(key, limit, false)], WINDOW_MS).await[0];
    assert_eq!(d.remaining, 1_000, "4,000 of 5,000 are in the window");

    tokio::time::sleep(Duration::from_millis(WINDOW_MS as u64 + 50)).await;
    let d = &decide(&db, &[(key, limit, true)], WINDOW_MS).await[0];
    assert!(d.allowed);
    assert_eq!(
        d.remaining,
        limit - 1,
        "the whole history has left the window"
    );
    let (start, accepted): (i64, i64) =
        sqlx::query_as("select window_start, accepted from rate_limit_state where key_id = $1")
            .bind(key)
            .fetch_one(&db)
            .await
            .expect("the key has a state row");
    assert_eq!((start, accepted), (4_000, 4_001));
}

/// Half a history leaves: the window starts at the first request still in it.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn part_of_a_history_leaves_the_window(db: PgPool) {
    let key = Uuid::now_v7();
    let limit = 1_000;
    let first = decide(&db, &vec![(key, limit, true); 300], 400).await;
    assert!(first.iter().all(|d| d.allowed));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = decide(&db, &vec![(key, limit, true); 200], 400).await;
    assert!(second.iter().all(|d| d.allowed));
    assert_eq!(second.last().expect("a decision").remaining, 500);
    // The first 300 leave; the next 200 stay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = &decide(&db, &[(key, limit, false)], 400).await[0];
    assert_eq!(d.remaining, 800, "only the second batch is in the window");
    let start: i64 =
        sqlx::query_scalar("select window_start from rate_limit_state where key_id = $1")
            .bind(key)
            .fetch_one(&db)
            .await
            .expect("the key has a state row");
    assert_eq!(start, 300);
}

/// Refused requests spend nothing, and a read (`consume = false`) never does.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn refusals_and_reads_spend_nothing(db: PgPool) {
    let key = Uuid::now_v7();
    let batch = vec![
        (key, 2, false),
        (key, 2, true),
        (key, 2, false),
        (key, 2, true),
        (key, 2, true),
        (key, 2, false),
    ];
    let d = decide(&db, &batch, 60_000).await;
    let got: Vec<(bool, i32)> = d.iter().map(|d| (d.allowed, d.remaining)).collect();
    assert_eq!(
        got,
        vec![
            (true, 2),
            (true, 1),
            (true, 1),
            (true, 0),
            (false, 0),
            (false, 0)
        ]
    );
    assert!(d[4].reset_after_ms > 59_000 && d[4].reset_after_ms <= 60_000);
    let accepted: i64 =
        sqlx::query_scalar("select accepted from rate_limit_state where key_id = $1")
            .bind(key)
            .fetch_one(&db)
            .await
            .expect("the key has a state row");
    assert_eq!(accepted, 2);
}

/// Batches from several connections at once on the same keys, as from
/// several api instances: each key gets exactly its limit accepted, however
/// the batches interleave, whether a key's state is created by the batch
/// (the first ones) or already there (the one-statement path of 0014).
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn concurrent_batches_on_shared_keys_accept_exactly_the_limit(db: PgPool) {
    let keys: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let limit = 50;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..4 {
        let (db, keys) = (db.clone(), keys.clone());
        tasks.spawn(async move {
            let mut accepted: HashMap<Uuid, i32> = HashMap::new();
            for batch_no in 0..40 {
                let batch: Vec<(Uuid, i32, bool)> = (0..6)
                    .map(|i| (keys[(task + batch_no + i) % keys.len()], limit, true))
                    .collect();
                let decisions = decide(&db, &batch, 60_000).await;
                for ((key, _, _), d) in batch.iter().zip(&decisions) {
                    *accepted.entry(*key).or_default() += i32::from(d.allowed);
                }
            }
            accepted
        });
    }
    // 320 requests per key within one window: exactly `limit` accepted.
    assert_each_key_took_exactly(&db, tasks, &keys, limit).await;
}

/// The deciding tasks' acceptances, summed per key, are exactly `limit`
/// for each of `keys`, and so is each key's stored count.
async fn assert_each_key_took_exactly(
    db: &PgPool,
    mut tasks: tokio::task::JoinSet<HashMap<Uuid, i32>>,
    keys: &[Uuid],
    limit: i32,
) {
    let mut accepted: HashMap<Uuid, i32> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        for (key, n) in joined.expect("a deciding task") {
            *accepted.entry(key).or_default() += n;
        }
    }
    for key in keys {
        assert_eq!(accepted.get(key), Some(&limit), "key {key}");
        let stored: i64 =
            sqlx::query_scalar("select accepted from rate_limit_state where key_id = $1")
                .bind(key)
                .fetch_one(db)
                .await
                .expect("the key has a state row");
        assert_eq!(stored, i64::from(limit));
    }
}

// ---- one row per key (migration 0019) ---------------------------------------

#[derive(Debug, sqlx::FromRow)]
struct KeyDecision {
    idx: i64,
    room: i32,
    reset_after_ms: i64,
    now_ms: i64,
}

/// `jeanus_rate_limit_keys` for `keys` (each once): (key, limit, spends).
async fn decide_keys(db: &PgPool, keys: &[(Uuid, i32, i32)], window_ms: i64) -> Vec<KeyDecision> {
    let rows: Vec<KeyDecision> = sqlx::query_as(
        "select idx, room, reset_after_ms, now_ms from jeanus_rate_limit_keys($1, $2, $3, $4)",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(window_ms)
    .fetch_all(db)
    .await
    .expect("jeanus_rate_limit_keys runs");
    let order: Vec<i64> = rows.iter().map(|r| r.idx).collect();
    assert_eq!(
        order,
        (1..=keys.len() as i64).collect::<Vec<_>>(),
        "one row per key, in order"
    );
    rows
}

/// Each key's room against the model of the exact window, over random
/// batches (spends of 0 to 3 per key, limits of 1 to 6, sleeps across the
/// window's edge), through the general path (new keys, a changed limit,
/// windows to advance) and the one-statement path alike.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn per_key_rooms_agree_with_the_exact_sliding_window(db: PgPool) {
    let mut rng = StdRng::seed_from_u64(0x0019_6b65_7973);
    let keys: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut limits: HashMap<Uuid, i32> = keys.iter().map(|k| (*k, rng.gen_range(1..=6))).collect();
    let mut model = Model::default();
    let (mut judged, mut full) = (0, 0);
    for batch_no in 0..120 {
        if batch_no == 60 {
            limits.insert(keys[0], 3);
        }
        let mut batch: Vec<(Uuid, i32, i32)> = Vec::new();
        for key in &keys {
            if rng.gen_bool(0.7) {
                batch.push((*key, limits[key], rng.gen_range(0..=3)));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let decisions = decide_keys(&db, &batch, WINDOW_MS).await;
        for ((key, limit, spends), d) in batch.iter().zip(&decisions) {
            let what = format!("batch {batch_no}, key {key}");
            let times = model.times(*key, *limit);
            let w = window(times, d.now_ms);
            if !w.near_edge {
                assert_eq!(d.room, limit - w.in_window, "{what}: room");
                if d.room <= *spends {
                    assert_reset(d.reset_after_ms, &w, &what);
                    full += 1;
                }
                judged += 1;
            }
            let take = (*spends).min(d.room.max(0));
            accept(times, d.now_ms, take as usize, *limit, &what);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
    }
    assert!(judged > 200, "only {judged} rooms were judged");
    assert!(full > 30, "only {full} keys ran out of room");
}

/// Batches of the same keys from several connections at once, as from
/// several api instances: exactly the limit is accepted per key.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn concurrent_per_key_batches_accept_exactly_the_limit(db: PgPool) {
    let keys: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let limit = 50;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..4 {
        let (db, keys) = (db.clone(), keys.clone());
        tasks.spawn(async move {
            let mut taken: HashMap<Uuid, i32> = HashMap::new();
            for batch_no in 0..40 {
                let batch: Vec<(Uuid, i32, i32)> = keys
                    .iter()
                    .map(|k| (*k, limit, (task + batch_no) % 3))
                    .collect();
                for ((key, _, spends), d) in
                    batch.iter().zip(decide_keys(&db, &batch, 60_000).await)
                {
                    *taken.entry(*key).or_default() += (*spends).min(d.room.max(0));
                }
            }
            taken
        });
    }
    assert_each_key_took_exactly(&db, tasks, &keys, limit).await;
}

/// A key in steady use sees its oldest requests leave its window with
/// nearly every batch. `jeanus_rate_limit_keys` moves such a window itself
/// when the first request still inside is at most 256 past the old start,
/// and leaves a longer move to the general path (`jeanus_rate_limit`, counted
/// with `track_functions`); the rooms agree with the exact window either way.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_window_moves_in_one_statement_within_reach_and_by_the_general_path_beyond(db: PgPool) {
    const WINDOW_MS: i64 = 2000;
    const LIMIT: i32 = 1000;
    let mut conn = db.acquire().await.expect("a connection");
    sqlx::query("set track_functions = 'pl'")
        .execute(&mut *conn)
        .await
        .expect("count function calls");
    // The key's room, and whether the general path ran.
    let mut call = async |key: Uuid, spend: i32| -> (i32, bool) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
        let general_calls = "select coalesce(pg_stat_get_xact_function_calls(\
             'jeanus_rate_limit(uuid[], integer[], boolean[], bigint)'::regprocedure), 0)";
        let before: i64 = sqlx::query_scalar(general_calls)
            .fetch_one(&mut *tx)
            .await
            .expect("calls before");
        let room: i32 = sqlx::query_scalar(
            "select room from jeanus_rate_limit_keys(array[$1], array[$2], array[$3], $4)",
        )
        .bind(key)
        .bind(LIMIT)
        .bind(spend)
        .bind(WINDOW_MS)
        .fetch_one(&mut *tx)
        .await
        .expect("jeanus_rate_limit_keys runs");
        let after: i64 = sqlx::query_scalar(general_calls)
            .fetch_one(&mut *tx)
            .await
            .expect("calls after");
        tx.commit().await.expect("commit");
        (room, after > before)
    };
    for (first, beyond_reach) in [(200, false), (400, true)] {
        let key = Uuid::now_v7();
        assert_eq!(call(key, first).await.0, LIMIT, "a new key");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (room, general) = call(key, 100).await;
        assert_eq!(room, LIMIT - first);
        assert!(!general, "nothing has left the window: one statement");
        // The first batch has left (2,200 ms ago), the second not (1,700).
        tokio::time::sleep(Duration::from_millis(1700)).await;
        let (room, general) = call(key, 0).await;
        assert_eq!(room, LIMIT - 100, "{first} requests left the window");
        assert_eq!(general, beyond_reach, "moving past {first} requests");
    }
}
