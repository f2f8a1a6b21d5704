//! The rate limiter's store (`api::ratelimit::Store`, which runs
//! `api/src/ratelimit/decide.lua`) against the real Redis and a model of the
//! exact sliding window: a request accepted at `t` is in the window at `now`
//! while `t > now - window`. Every decision is checked against the times of
//! the requests the store accepted before it: the key's room before the
//! batch (its limit less the requests still in the window), and, when the
//! batch leaves the key no room, the wait until the limit-th newest accepted
//! request leaves. The store records an accepted request at the very
//! millisecond it reports as the decision's `now_ms`, so the model knows
//! every recorded time exactly and judges every answer, at the window's
//! edge too (the random test aims some decisions at it).
//!
//! Besides the random batches (several keys, limits from 1 up, spends
//! beyond a key's room, limits lowered and raised, sleeps that let parts of
//! histories leave): a long history leaving at once and part of one
//! leaving, reads and refusals spending nothing, a lowered and a raised
//! limit, concurrent batches from several connections (as from several api
//! instances) on shared keys, a batch retried (the same batch id) answered
//! from its first attempt without spending again, and the keys' expiry,
//! which is all that keeps an idle key from holding memory. The api's tests
//! (layers.rs) check the same limiter through HTTP across instances; these
//! check the store's arithmetic.
//!
//! Timing. The model judges by the store's own clock, so no answer's check
//! depends on how long this process slept. The tests that follow a fixed
//! sequence ("these have left the window, that one has not") use a window
//! of [`STEP_WINDOW_MS`] and place each step at least ~[`MARGIN_MS`] from
//! the window edges it depends on. A step that needs requests gone sleeps
//! until the store's clock is past their edge (a sleep runs long, never
//! short); a step that needs requests still in the window checks that they
//! are by the decision's `now_ms`, and should a stall of the machine (CI's
//! are loaded) have pushed it out, the attempt ends as [`Stalled`] and the
//! scenario runs again on fresh keys ([`run_unstalled`]).
//!
//! Each test names its keys under a prefix of its own, so the tests share
//! one Redis and run in parallel.

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use api::config::redis_url_from_env;
use api::ratelimit::{Decided, KeyRoom, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use redis::Script;
use uuid::Uuid;

/// The random test's window: short, so that histories leave it often.
const WINDOW_MS: i64 = 300;
/// A window nothing leaves during a test.
const LONG_WINDOW_MS: i64 = 60_000;
/// The fixed-sequence tests' window.
const STEP_WINDOW_MS: i64 = 3_000;
/// In the fixed-sequence tests, how long after a key's first requests its
/// later ones come: a moment at which the first have left the window and
/// the later have not then lies `MARGIN_MS` past the first's edge and
/// `GAP_MS - MARGIN_MS` before the later's.
const GAP_MS: i64 = 1_600;
/// How far past requests' window edge the fixed-sequence tests wait to see
/// them gone.
const MARGIN_MS: i64 = 800;
/// How many times a fixed-sequence scenario is tried before stalls of the
/// machine fail it.
const ATTEMPTS: u32 = 3;

/// A prefix of the test's own: `t` and a fresh UUID.
fn prefix() -> String {
    format!("t{}", Uuid::now_v7().simple())
}

/// A store of its own connection, as each api instance has.
async fn store(prefix: &str) -> Store {
    Store::connect(&redis_url_from_env(), prefix)
        .await
        .expect("Redis is up (REDIS_URL)")
}

/// One call of the store: (key, limit, spends) for each key.
async fn decide(store: &Store, keys: &[(Uuid, i32, i32)], window_ms: i64) -> Decided {
    let decided = store
        .decide_keys(keys, window_ms)
        .await
        .expect("the store decides");
    assert_eq!(decided.keys.len(), keys.len(), "one answer per key");
    decided
}

/// A plain connection to Redis, to look at a key's list and its expiry.
struct Raw {
    conn: MultiplexedConnection,
    prefix: String,
}

/// Runs `ARGV[1]` (`PTTL`, `LLEN`) on `KEYS[1]` and reads the store's clock
/// (Unix ms, as `decide.lua` reads it) as it does: a script runs alone.
static TIMED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        return { now, redis.call(ARGV[1], KEYS[1]) }",
    )
});

impl Raw {
    async fn connect(prefix: &str) -> Self {
        let conn = redis::Client::open(redis_url_from_env())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is up (REDIS_URL)");
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn name(&self, key: Uuid) -> String {
        format!("{{{}}}:rate:{}", self.prefix, key.as_hyphenated())
    }

    /// Where the store keeps a batch's answer.
    fn batch_name(&self, batch: Uuid) -> String {
        format!("{{{}}}:rate-batch:{}", self.prefix, batch.as_hyphenated())
    }

    /// A name's time to live in ms: -2 when it does not exist, -1 when it
    /// never expires.
    async fn pttl_of(&self, name: String) -> i64 {
        redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut self.conn.clone())
            .await
            .expect("PTTL")
    }

    /// The key's time to live in ms: -2 when it does not exist, -1 when it
    /// never expires.
    async fn pttl(&self, key: Uuid) -> i64 {
        self.pttl_of(self.name(key)).await
    }

    /// How many request times the key's list holds.
    async fn len(&self, key: Uuid) -> i64 {
        redis::cmd("LLEN")
            .arg(self.name(key))
            .query_async(&mut self.conn.clone())
            .await
            .expect("LLEN")
    }

    /// `command` on the key, and the store's clock as it ran.
    async fn timed(&self, command: &str, key: Uuid) -> (i64, i64) {
        let reply: Vec<i64> = TIMED
            .key(self.name(key))
            .arg(command)
            .invoke_async(&mut self.conn.clone())
            .await
            .expect(command);
        (reply[1], reply[0])
    }

    /// [`Raw::pttl`], and the store's clock as it was read.
    async fn pttl_at(&self, key: Uuid) -> (i64, i64) {
        self.timed("PTTL", key).await
    }

    /// [`Raw::len`], and the store's clock as it was read.
    async fn len_at(&self, key: Uuid) -> (i64, i64) {
        self.timed("LLEN", key).await
    }

    /// The store's clock, in Unix ms.
    async fn now_ms(&self) -> i64 {
        let (seconds, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await
            .expect("TIME");
        seconds * 1000 + micros / 1000
    }
}

/// Checks a key's time to live `ttl`, read at `at` on the store's clock,
/// against the expiry the key should have, `expires` (to the 2 ms the
/// clock's readings allow): gone once `at` has reached it.
fn assert_expires(ttl: i64, at: i64, expires: i64, window_ms: i64, what: &str) {
    if ttl == -2 {
        assert!(
            at >= expires - 1,
            "{what}: the key was gone at {at}, {} ms before it should expire at {expires}",
            expires - at
        );
    } else {
        assert!(
            (0..=window_ms).contains(&ttl) && (ttl - (expires - at)).abs() <= 2,
            "{what}: at {at} the key expires in {ttl} ms, not at {expires}"
        );
    }
}

/// Per key: the times (Unix ms) of the requests the store accepted that
/// were still in the window at its last decision, oldest first.
struct Model {
    window_ms: i64,
    keys: HashMap<Uuid, Vec<i64>>,
}

/// What the model saw of one key at one decision.
struct Judged {
    /// Accepted requests in the window before the batch.
    in_window: i32,
    /// Accepted requests that had left the window since the key's last
    /// decision.
    left: usize,
    /// How far the nearest of the key's request times was from the
    /// window's start (`now - window`), in ms.
    from_edge: Option<i64>,
    /// Requests the batch accepted.
    take: i32,
    /// The batch left the key no room.
    full: bool,
}

impl Model {
    fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            keys: HashMap::new(),
        }
    }

    /// Checks a key's answer from a decision at `now_ms`, and records the
    /// requests the store accepted.
    fn check(
        &mut self,
        (key, limit, spends): (Uuid, i32, i32),
        now_ms: i64,
        got: KeyRoom,
        what: &str,
    ) -> Judged {
        let window_ms = self.window_ms;
        let times = self.keys.entry(key).or_default();
        if let Some(&last) = times.last() {
            assert!(last <= now_ms, "{what}: the clock went back to {now_ms}");
        }
        let cutoff = now_ms - window_ms;
        let from_edge = times.iter().map(|&t| (t - cutoff).abs()).min();
        let left = times.partition_point(|&t| t <= cutoff);
        times.drain(..left);
        let in_window = i32::try_from(times.len()).expect("a small count");
        let room = (limit - in_window).max(0);
        assert_eq!(
            got.room, room,
            "{what}: room with {in_window} requests in the window, limit {limit}"
        );
        let take = spends.min(room);
        times.extend(std::iter::repeat_n(
            now_ms,
            usize::try_from(take).unwrap_or(0),
        ));
        let full = in_window + take >= limit;
        let reset = if full {
            // A request is next free once the limit-th newest has left.
            let limit_th_newest = times[times.len() - usize::try_from(limit).unwrap_or(0)];
            limit_th_newest + window_ms - now_ms
        } else {
            0
        };
        assert_eq!(
            got.reset_after_ms,
            reset,
            "{what}: reset with {} requests in the window, limit {limit}",
            times.len()
        );
        Judged {
            in_window,
            left,
            from_edge,
            take,
            full,
        }
    }
}

/// A store whose every decision is checked against the model.
struct Checked {
    store: Store,
    model: Model,
    raw: Raw,
    window_ms: i64,
}

impl Checked {
    async fn new(window_ms: i64) -> Self {
        let prefix = prefix();
        Self {
            store: store(&prefix).await,
            model: Model::new(window_ms),
            raw: Raw::connect(&prefix).await,
            window_ms,
        }
    }

    /// Decides one key alone: its answer and the decision's clock.
    async fn ask(&mut self, key: Uuid, limit: i32, spends: i32) -> (KeyRoom, i64) {
        let d = decide(&self.store, &[(key, limit, spends)], self.window_ms).await;
        let what = format!("limit {limit}, spends {spends} at {}", d.now_ms);
        self.model
            .check((key, limit, spends), d.now_ms, d.keys[0], &what);
        (d.keys[0], d.now_ms)
    }

    /// Sleeps until the store's clock reads at least `at_ms`: after it,
    /// every request accepted at `at_ms - window` or before has left.
    async fn sleep_until(&self, at_ms: i64) {
        let now = self.raw.now_ms().await;
        if at_ms > now {
            tokio::time::sleep(Duration::from_millis(
                u64::try_from(at_ms - now).unwrap_or(0),
            ))
            .await;
        }
    }

    /// Ok when the requests accepted at `t` are still in the window at
    /// `now` (the store's clock), as the scenario's next checks need.
    fn inside(&self, now: i64, t: i64, what: &str) -> Result<(), Stalled> {
        let edge = t + self.window_ms;
        if now < edge {
            return Ok(());
        }
        Err(Stalled(format!(
            "{what}: the requests of {t} were to be still in the {} ms window, but the \
             store's clock read {now}, {} ms after they left",
            self.window_ms,
            now - edge
        )))
    }
}

/// A stall of the machine pushed a step of a fixed-sequence scenario out of
/// the time band it needs (judged by the store's clock): no fault of the
/// store's, so the scenario runs again on fresh keys.
#[derive(Debug)]
struct Stalled(String);

/// Runs a fixed-sequence scenario (on keys of its own each time) until an
/// attempt is not [`Stalled`], at most [`ATTEMPTS`] times. A wrong answer
/// fails the test at once.
async fn run_unstalled<F, Fut>(scenario: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Stalled>>,
{
    let mut stalls = Vec::new();
    for attempt in 1..=ATTEMPTS {
        match scenario().await {
            Ok(()) => return,
            Err(Stalled(why)) => {
                eprintln!("attempt {attempt} of {ATTEMPTS} stalled: {why}");
                stalls.push(why);
            }
        }
    }
    panic!(
        "the machine stalled beyond the scenario's margins ({MARGIN_MS} ms and more) in \
         each of {ATTEMPTS} attempts: {stalls:#?}"
    );
}

fn room(room: i32, reset_after_ms: i64) -> KeyRoom {
    KeyRoom {
        room,
        reset_after_ms,
    }
}

/// How often the random test met each case it is about.
#[derive(Debug, Default)]
struct Seen {
    judged: u32,
    /// The batch left the key no room.
    full: u32,
    /// The key's spends exceeded its room, which was not 0.
    beyond_room: u32,
    /// The key had spends and no room.
    refused: u32,
    /// More requests in the window than a lowered limit.
    over_limit: u32,
    /// Some of the key's requests had left the window, some not.
    part_left: u32,
    /// A request time within 2 ms of the window's start.
    near_edge: u32,
    /// A request time exactly at the window's start (`now - window`).
    on_edge: u32,
}

impl Seen {
    fn count(&mut self, (_, limit, spends): (Uuid, i32, i32), got: KeyRoom, j: &Judged) {
        self.judged += 1;
        self.full += u32::from(j.full);
        self.beyond_room += u32::from(spends > got.room && got.room > 0);
        self.refused += u32::from(spends > 0 && got.room == 0);
        self.over_limit += u32::from(j.in_window > limit);
        self.part_left += u32::from(j.left > 0 && j.in_window > 0);
        self.near_edge += u32::from(j.from_edge.is_some_and(|e| e <= 2));
        self.on_edge += u32::from(j.from_edge == Some(0));
    }
}

/// Random batches over five keys: limits of 1 to 8, now and then changed
/// (lowered below a key's count as well as raised), spends of 0 up to two
/// beyond the limit, and sleeps short, long (parts of the histories leave)
/// or up to the window's edge. At the edge, reads follow one another until
/// the request has left: one of them is decided at the very millisecond at
/// which it is `now - window`, where `>` against `>=` decides.
#[tokio::test]
async fn random_batches_agree_with_the_exact_sliding_window() {
    const LIMITS: [i32; 5] = [1, 2, 3, 5, 8];
    let mut rng = StdRng::seed_from_u64(0x7265_6469_735f_726c);
    let mut checked = Checked::new(WINDOW_MS).await;
    let keys: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let mut limits: HashMap<Uuid, i32> = keys
        .iter()
        .map(|k| (*k, LIMITS[rng.gen_range(0..LIMITS.len())]))
        .collect();
    let mut seen = Seen::default();
    for batch_no in 0..150 {
        let mut changed = None;
        if rng.gen_bool(0.15) {
            let key = keys[rng.gen_range(0..keys.len())];
            limits.insert(key, LIMITS[rng.gen_range(0..LIMITS.len())]);
            changed = Some(key);
        }
        let mut batch: Vec<(Uuid, i32, i32)> = Vec::new();
        for key in &keys {
            // A key whose limit changed is asked at once, so that a limit
            // lowered meets the requests still in the window.
            if rng.gen_bool(0.7) || changed == Some(*key) {
                batch.push((*key, limits[key], rng.gen_range(0..=limits[key] + 2)));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let d = decide(&checked.store, &batch, WINDOW_MS).await;
        let decided_at = Instant::now();
        for (&asked, &got) in batch.iter().zip(&d.keys) {
            let what = format!("batch {batch_no}, {asked:?}");
            let j = checked.model.check(asked, d.now_ms, got, &what);
            seen.count(asked, got, &j);
            if j.take > 0 {
                // The acceptance set the key to expire a window after it
                // (read with the store's clock: should a stall have let it
                // expire since, it is judged expired).
                let (ttl, at) = checked.raw.pttl_at(asked.0).await;
                assert_expires(ttl, at, d.now_ms + WINDOW_MS, WINDOW_MS, &what);
            }
        }
        let pause = rng.gen_range(0..100);
        if pause < 50 {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        } else if pause < 85 {
            // The store's clock now, as far as this process can tell.
            let now = d.now_ms + i64::try_from(decided_at.elapsed().as_millis()).unwrap_or(0);
            let next = checked
                .model
                .keys
                .iter()
                .flat_map(|(key, times)| times.iter().map(move |&t| (t + WINDOW_MS, *key)))
                .filter(|&(edge, _)| edge > now)
                .min();
            let Some((edge, key)) = next else { continue };
            let wait = u64::try_from(edge - 2 - now).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            loop {
                let asked = (key, limits[&key], 0);
                let d = decide(&checked.store, &[asked], WINDOW_MS).await;
                let what = format!("batch {batch_no}, a read at the edge {edge}, {asked:?}");
                let j = checked.model.check(asked, d.now_ms, d.keys[0], &what);
                seen.count(asked, d.keys[0], &j);
                if d.now_ms > edge {
                    break;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(150..300))).await;
        }
    }
    eprintln!("cases met: {seen:?}");
    // The run must have exercised every case it is about.
    assert!(seen.judged > 500, "{seen:?}");
    assert!(seen.full > 200, "{seen:?}");
    assert!(seen.beyond_room > 50, "{seen:?}");
    assert!(seen.refused > 100, "{seen:?}");
    assert!(seen.over_limit > 0, "{seen:?}");
    assert!(seen.part_left > 30, "{seen:?}");
    assert!(seen.near_edge > 50, "{seen:?}");
    assert!(seen.on_edge > 10, "{seen:?}");
}

/// A key with a long history is, once the history has left the window, as
/// free as a new one, in one call: whether a newer request kept the key
/// (the store drops the 499 that left in that call) or the key expired.
#[tokio::test]
async fn a_long_history_leaves_the_window_at_once() {
    async fn once() -> Result<(), Stalled> {
        const WINDOW: i64 = STEP_WINDOW_MS;
        let mut c = Checked::new(WINDOW).await;
        let (key, limit) = (Uuid::now_v7(), 500);
        let (got, t0) = c.ask(key, limit, 499).await;
        assert_eq!(got, room(limit, 0));
        c.sleep_until(t0 + GAP_MS).await;
        let (got, t1) = c.ask(key, limit, 1).await;
        c.inside(t1, t0, "the 499")?;
        assert_eq!(got, room(1, t0 + WINDOW - t1), "full until the 499 leave");
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t0, "the 499, counted")?;
        assert_eq!(len, 500);

        // The 499 have left; the last one has not.
        c.sleep_until(t0 + WINDOW + MARGIN_MS).await;
        let (got, now) = c.ask(key, limit, 0).await;
        c.inside(now, t1, "the last request")?;
        assert_eq!(got, room(limit - 1, 0), "the 499 left at once");
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t1, "the last request, counted")?;
        assert_eq!(len, 1, "the store dropped them");

        c.sleep_until(t1 + WINDOW + MARGIN_MS).await;
        let (got, t2) = c.ask(key, limit, limit).await;
        assert_eq!(
            got,
            room(limit, WINDOW),
            "the whole room is back; the batch takes it all until {}",
            t2 + WINDOW
        );
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t2, "the whole room taken, counted")?;
        assert_eq!(len, i64::from(limit));
        Ok(())
    }
    run_unstalled(once).await;
}

/// More spends in one call than the script pushes at once (Lua's `unpack`
/// takes a few thousand values): all of them recorded, and an earlier key of
/// the same call charged once.
#[tokio::test]
async fn a_large_batch_of_spends_is_recorded_whole() {
    let prefix = prefix();
    let (store, raw) = (store(&prefix).await, Raw::connect(&prefix).await);
    let (small, large) = (Uuid::now_v7(), Uuid::now_v7());
    let decided = decide(
        &store,
        &[(small, 10, 1), (large, 20_000, 8_500)],
        LONG_WINDOW_MS,
    )
    .await;
    assert_eq!(decided.keys, vec![room(10, 0), room(20_000, 0)]);
    assert_eq!(raw.len(large).await, 8_500);
    let decided = decide(
        &store,
        &[(small, 10, 0), (large, 20_000, 0)],
        LONG_WINDOW_MS,
    )
    .await;
    assert_eq!(
        decided.keys,
        vec![room(9, 0), room(11_500, 0)],
        "each key charged once"
    );
}

/// Part of a history leaves: the requests older than the window go, the
/// newer stay and still count.
#[tokio::test]
async fn part_of_a_history_leaves_the_window() {
    async fn once() -> Result<(), Stalled> {
        const WINDOW: i64 = STEP_WINDOW_MS;
        let mut c = Checked::new(WINDOW).await;
        let (key, limit) = (Uuid::now_v7(), 1_000);
        let (got, t0) = c.ask(key, limit, 300).await;
        assert_eq!(got, room(limit, 0));
        c.sleep_until(t0 + GAP_MS).await;
        let (got, t1) = c.ask(key, limit, 200).await;
        c.inside(t1, t0, "the first 300")?;
        assert_eq!(got, room(700, 0));

        // The first 300 leave; the next 200 stay.
        c.sleep_until(t0 + WINDOW + MARGIN_MS).await;
        let (got, now) = c.ask(key, limit, 0).await;
        c.inside(now, t1, "the next 200")?;
        assert_eq!(got, room(800, 0), "only the second batch is in the window");
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t1, "the next 200, counted")?;
        assert_eq!(len, 200);
        Ok(())
    }
    run_unstalled(once).await;
}

/// A read (spends 0) spends nothing and stores nothing; of a key's spends
/// beyond its room, the store records none: once the accepted requests
/// have left the window, the key has exactly its limit again, though the
/// refusals came later.
#[tokio::test]
async fn reads_and_refusals_spend_nothing() {
    async fn once() -> Result<(), Stalled> {
        const WINDOW: i64 = STEP_WINDOW_MS;
        let mut c = Checked::new(WINDOW).await;
        let (key, limit) = (Uuid::now_v7(), 2);
        assert_eq!(c.ask(key, limit, 0).await.0, room(2, 0));
        assert_eq!(c.raw.pttl(key).await, -2, "a read stores nothing");
        let (got, t0) = c.ask(key, limit, 1).await;
        assert_eq!(got, room(2, 0));
        let (got, now) = c.ask(key, limit, 0).await;
        c.inside(now, t0, "the first acceptance")?;
        assert_eq!(got, room(1, 0), "a read: still 1");
        let (got, t1) = c.ask(key, limit, 3).await;
        c.inside(t1, t0, "the first acceptance")?;
        assert_eq!(got, room(1, t0 + WINDOW - t1), "one of three accepted");
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t0, "the first acceptance, counted")?;
        assert_eq!(len, 2);

        c.sleep_until(t0 + GAP_MS).await;
        let (got, t2) = c.ask(key, limit, 5).await;
        c.inside(t2, t0, "the accepted two")?;
        assert_eq!(got, room(0, t0 + WINDOW - t2), "all five refused");
        let (got, t3) = c.ask(key, limit, 0).await;
        c.inside(t3, t0, "the accepted two")?;
        assert_eq!(got, room(0, t0 + WINDOW - t3));
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t0, "the accepted two, counted")?;
        assert_eq!(len, 2, "the refusals recorded nothing");

        // The accepted two have left; refusals, had they counted, would not.
        c.sleep_until(t1 + WINDOW + MARGIN_MS).await;
        let (got, now) = c.ask(key, limit, 0).await;
        c.inside(now, t2, "the refusals")?;
        assert_eq!(got, room(limit, 0), "exactly the limit again");
        Ok(())
    }
    run_unstalled(once).await;
}

/// A limit lowered below a key's count in the window leaves it no room
/// until enough requests have left to get under the new limit; a limit
/// raised gives room at once. The key keeps its history through both.
#[tokio::test]
async fn a_lowered_limit_waits_and_a_raised_one_gives_room_at_once() {
    async fn once() -> Result<(), Stalled> {
        const WINDOW: i64 = STEP_WINDOW_MS;
        let mut c = Checked::new(WINDOW).await;
        let key = Uuid::now_v7();
        let (got, t0) = c.ask(key, 5, 2).await;
        assert_eq!(got, room(5, 0));
        c.sleep_until(t0 + GAP_MS).await;
        let (got, t1) = c.ask(key, 5, 3).await;
        c.inside(t1, t0, "the first two")?;
        assert_eq!(
            got,
            room(3, t0 + WINDOW - t1),
            "full until the first two leave"
        );

        // Five in the window: under a limit of 2 once four have left (the
        // three of t1 the last), under 4 once two have (both of t0).
        let (got, now) = c.ask(key, 2, 0).await;
        c.inside(now, t0, "the first two")?;
        assert_eq!(got, room(0, t1 + WINDOW - now), "limit lowered to 2");
        let (got, now) = c.ask(key, 4, 1).await;
        c.inside(now, t0, "the first two")?;
        assert_eq!(got, room(0, t0 + WINDOW - now), "limit lowered to 4");
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t0, "the first two, counted")?;
        assert_eq!(len, 5, "the refusal recorded nothing");

        let (got, t2) = c.ask(key, 8, 2).await;
        c.inside(t2, t0, "the first two")?;
        assert_eq!(got, room(3, 0), "limit raised to 8: room at once");
        let (got, now) = c.ask(key, 6, 1).await;
        c.inside(now, t0, "the first two")?;
        assert_eq!(got, room(0, t0 + WINDOW - now), "7 in the window, limit 6");

        // t0's two have left; t1's three and t2's two have not.
        c.sleep_until(t0 + WINDOW + MARGIN_MS).await;
        let (got, now) = c.ask(key, 2, 0).await;
        c.inside(now, t1, "t1's three")?;
        assert_eq!(got, room(0, t2 + WINDOW - now), "5 in the window, limit 2");
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t1, "t1's three, counted")?;
        assert_eq!(len, 5);
        Ok(())
    }
    run_unstalled(once).await;
}

/// Several stores, each its own connection as each api instance has, decide
/// concurrent batches on shared keys: every key accepts exactly its limit
/// within the window, never more, however the batches interleave.
#[tokio::test]
async fn concurrent_batches_from_several_stores_accept_exactly_the_limit() {
    let prefix = prefix();
    let keys: Vec<(Uuid, i32)> = [50, 7, 1].map(|limit| (Uuid::now_v7(), limit)).to_vec();
    let mut tasks = tokio::task::JoinSet::new();
    for instance in 0..4 {
        let instance_store = store(&prefix).await;
        for task in 0..4 {
            let (store, keys) = (instance_store.clone(), keys.clone());
            tasks.spawn(async move {
                let mut taken: HashMap<Uuid, (i32, i32)> = HashMap::new();
                let mut rooms: HashMap<Uuid, i32> = HashMap::new();
                for call in 0..40 {
                    let batch: Vec<(Uuid, i32, i32)> = keys
                        .iter()
                        .map(|&(key, limit)| (key, limit, (instance + task + call) % 4))
                        .collect();
                    let d = decide(&store, &batch, LONG_WINDOW_MS).await;
                    for (&(key, limit, spends), got) in batch.iter().zip(&d.keys) {
                        let before = rooms.insert(key, got.room).unwrap_or(limit);
                        assert!(
                            (0..=before).contains(&got.room),
                            "key {key}: room {} after {before}",
                            got.room
                        );
                        let t = taken.entry(key).or_default();
                        t.0 += spends.min(got.room);
                        t.1 += spends;
                    }
                }
                taken
            });
        }
    }
    let mut taken: HashMap<Uuid, (i32, i32)> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        for (key, (accepted, asked)) in joined.expect("a deciding task") {
            let t = taken.entry(key).or_default();
            t.0 += accepted;
            t.1 += asked;
        }
    }
    let raw = Raw::connect(&prefix).await;
    let store = store(&prefix).await;
    for &(key, limit) in &keys {
        let (accepted, asked) = taken[&key];
        assert!(asked > 10 * limit, "key {key}: only {asked} spends asked");
        assert_eq!(accepted, limit, "key {key}: accepted of {asked}");
        assert_eq!(raw.len(key).await, i64::from(limit), "key {key}: recorded");
        let d = decide(&store, &[(key, limit, 1)], LONG_WINDOW_MS).await;
        assert_eq!(d.keys[0].room, 0, "key {key}: no room left");
    }
}

/// A key expires once its requests have all left the window: accepting a
/// request sets its time to live to the window (no longer, and renewed by
/// each later acceptance, or the key would go while a request is still in
/// the window), and a read creates no key.
#[tokio::test]
async fn keys_expire_with_their_window() {
    async fn once() -> Result<(), Stalled> {
        const WINDOW: i64 = STEP_WINDOW_MS;
        let mut c = Checked::new(WINDOW).await;
        let (key, limit) = (Uuid::now_v7(), 3);
        c.ask(key, limit, 0).await;
        assert_eq!(c.raw.pttl(key).await, -2, "a read creates no key");

        let (_, t0) = c.ask(key, limit, 1).await;
        let (ttl, at) = c.raw.pttl_at(key).await;
        c.inside(at, t0, "the first request")?;
        assert_expires(ttl, at, t0 + WINDOW, WINDOW, "accepted once");
        c.sleep_until(t0 + GAP_MS).await;
        let (before, at) = c.raw.pttl_at(key).await;
        c.inside(at, t0, "the first request")?;
        assert_expires(before, at, t0 + WINDOW, WINDOW, "before the second");
        let (_, t1) = c.ask(key, limit, 1).await;
        let (after, at) = c.raw.pttl_at(key).await;
        c.inside(at, t1, "the second request")?;
        assert_expires(after, at, t1 + WINDOW, WINDOW, "renewed by the second");
        assert!(
            after > before,
            "an acceptance renews the expiry: {before} ms before, {after} ms after"
        );

        // The first request has left, the second not: the key is still there.
        c.sleep_until(t0 + WINDOW + MARGIN_MS).await;
        let (got, now) = c.ask(key, limit, 0).await;
        c.inside(now, t1, "the second request")?;
        assert_eq!(got, room(2, 0));
        let (len, at) = c.raw.len_at(key).await;
        c.inside(at, t1, "the second request, counted")?;
        assert_eq!(len, 1);

        c.sleep_until(t1 + WINDOW + MARGIN_MS).await;
        assert_eq!(c.raw.pttl(key).await, -2, "the key has expired");
        assert_eq!(c.ask(key, limit, 0).await.0, room(3, 0));
        Ok(())
    }
    run_unstalled(once).await;
}

/// A batch is one attempt at a call whose answer may be lost with its
/// connection after the store carried it out: the same batch again (a
/// retry) gets the first attempt's answer, which the store keeps for 10 s,
/// and spends nothing; a new batch spends.
#[tokio::test]
async fn a_batch_retried_is_spent_once() {
    let prefix = prefix();
    let (store, raw) = (store(&prefix).await, Raw::connect(&prefix).await);
    let (key, batch) = (Uuid::now_v7(), Uuid::now_v7());
    let asked = [(key, 5, 3)];
    let decide_batch = |batch: Uuid| {
        let store = store.clone();
        async move {
            store
                .decide_batch(batch, &asked, LONG_WINDOW_MS)
                .await
                .expect("the store decides")
        }
    };
    let first = decide_batch(batch).await;
    assert_eq!(first.keys, vec![room(5, 0)]);
    assert_eq!(raw.len(key).await, 3);

    // A moment later: an answer decided anew would carry a later clock.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        decide_batch(batch).await,
        first,
        "the retry is answered as the first attempt"
    );
    assert_eq!(raw.len(key).await, 3, "the retry spent nothing");
    let kept = raw.pttl_of(raw.batch_name(batch)).await;
    assert!(
        (1..=10_000).contains(&kept),
        "the answer is kept for {kept} ms, at most 10 s"
    );

    let other = decide_batch(Uuid::now_v7()).await;
    assert_eq!(
        other.keys,
        vec![room(2, first.now_ms + LONG_WINDOW_MS - other.now_ms)],
        "a new batch spends: 2 of its 3"
    );
    assert_eq!(raw.len(key).await, 5);
    assert_eq!(
        decide_batch(batch).await,
        first,
        "the first answer again, though the key has changed since"
    );
    assert_eq!(raw.len(key).await, 5, "the retry spent nothing");
}
