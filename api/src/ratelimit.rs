//! The per-key rate limit: an exact sliding window shared by every api
//! instance, kept in Redis, and the headers that report it.
//!
//! A key never gets more than its `rate_limit_per_minute` requests accepted
//! in any window (60 s; `JEANUS_RATE_LIMIT_WINDOW` shortens it for tests),
//! and a client that stays under the limit is never refused. The state is,
//! per key, a Redis list of the times of its accepted requests still in the
//! window, newest first, which expires a window after its newest. Every
//! instance funnels its decisions through one [`Batcher`]; a batch is one
//! call of one script (`ratelimit/decide.lua`), each key once with its count
//! of spends: it drops the key's requests that have left the window, spends
//! what room is left, and answers the room; [`answers`] works out each
//! request's answer from it, in arrival order. A script runs alone, against
//! one clock (Redis's), so batches from many instances never interleave and
//! each key's list stays in time order. Each accepted request is pushed once
//! and popped once: O(1) amortised per request, whatever the limit.
//!
//! **When Redis is down the limiter fails closed**: `/api/v1` answers 503
//! `unavailable` (and the refusal is still audited, in PostgreSQL); once
//! Redis answers again requests pass, without a restart. Failing open would
//! hand every key an unlimited quota for as long as the outage lasts.
//! The windows are not persisted (run Redis with `maxmemory-policy
//! noeviction`, and without persistence if you like): after a Redis restart
//! every window starts empty, which lets a key make at most one extra
//! window's worth of requests, once. A batch whose connection failed is
//! retried once, as the same batch: the store answers a repeat with its
//! first answer, so a batch carried out whose answer was lost is not spent
//! twice ([`Store::decide_keys`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis::Script;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::gate::Gate;

/// How long a request waits for its decision before it is answered 503
/// (the limiter sits outside the request timeout).
const DECISION_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection attempt to Redis, or one answer from it, may
/// take: a batch takes well under a millisecond.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// draft-ietf-httpapi-ratelimit-headers (-08 to -11): the policy, `q` the
/// quota and `w` the window in seconds.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The same draft: `r` the remaining quota, `t` seconds until it resets.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whether a check spends one request of the quota or only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consume {
    Yes,
    No,
}

/// A key's quota after one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    /// The request was accepted (for `Consume::No`: would have been).
    pub allowed: bool,
    pub remaining: u32,
    /// The store's (Redis's) clock at the decision, in Unix milliseconds.
    pub now_ms: i64,
    /// How long until a request is next free (0 when `remaining > 0`).
    pub reset_after_ms: i64,
    pub window: Duration,
}

impl Quota {
    /// Unix seconds at which a request is next free, rounded up.
    pub fn reset_unix(&self) -> i64 {
        ceil_div(self.now_ms + self.reset_after_ms, 1000)
    }

    /// Seconds until a request is next free, rounded up.
    pub fn reset_seconds(&self) -> u64 {
        u64::try_from(ceil_div(self.reset_after_ms.max(0), 1000)).unwrap_or(0)
    }

    /// `Retry-After` for a refusal: at least 1 s.
    pub fn retry_after(&self) -> u64 {
        self.reset_seconds().max(1)
    }
}

fn ceil_div(n: i64, d: i64) -> i64 {
    n.div_euclid(d) + i64::from(n.rem_euclid(d) != 0)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LimiterError {
    #[error("the rate limiter's store failed: {0}")]
    Store(#[source] Arc<redis::RedisError>),
    #[error("the rate limiter's batch writer has stopped")]
    Stopped,
    #[error("the rate limiter did not decide within {} s", DECISION_TIMEOUT.as_secs())]
    TimedOut,
}

pub(crate) struct Ask {
    key_id: Uuid,
    limit: u32,
    consume: Consume,
    /// When its request stops waiting (and is answered 503): an ask still
    /// queued then spends nothing.
    deadline: Instant,
}

/// This process's handle onto the shared limiter. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    gate: Gate,
}

impl RateLimiter {
    /// Decide through `gate`, the process's writer for the request path.
    pub fn new(gate: Gate) -> Self {
        Self { gate }
    }

    pub fn window(&self) -> Duration {
        self.gate.window()
    }

    /// The store the decisions are made in.
    pub fn store(&self) -> &Store {
        self.gate.limits()
    }

    /// Decide one request of `key_id` under `limit` per window.
    pub async fn check(
        &self,
        key_id: Uuid,
        limit: u32,
        consume: Consume,
    ) -> Result<Quota, LimiterError> {
        let deadline = Instant::now() + DECISION_TIMEOUT;
        let ask = Ask {
            key_id,
            limit,
            consume,
            deadline,
        };
        match tokio::time::timeout_at(deadline.into(), self.gate.decide(ask)).await {
            Ok(Ok(decided)) => decided,
            Ok(Err(_)) => Err(LimiterError::Stopped),
            Err(_) => Err(LimiterError::TimedOut),
        }
    }
}

/// The limiter's store: a Redis list per key of its accepted requests'
/// times in the window, newest first, decided a batch at a time by one
/// script call (`ratelimit/decide.lua`). Cheap to clone: every clone shares
/// one multiplexed connection.
#[derive(Clone)]
pub struct Store(Arc<StoreInner>);

struct StoreInner {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// The connection every call shares while it works. A call that failed
    /// for it (it broke, timed out, or could not be set up) drops it, and
    /// the next call connects anew: nothing is left waiting on a socket that
    /// will never answer.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// `{<prefix>}:`: every key of a deployment starts with it.
    prefix: String,
}

static DECIDE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("ratelimit/decide.lua")));

/// How long the store keeps a batch's answer, for a retry of the batch:
/// longer than a request waits for its decision.
const BATCH_ANSWER_KEPT: Duration = Duration::from_secs(10);

/// One key's answer from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRoom {
    /// Requests the key may still spend in its window before this batch's.
    pub room: i32,
    /// Should the batch leave no room: how long until a request is next
    /// free, in milliseconds.
    pub reset_after_ms: i64,
}

/// A batch's answers: the store's clock and each key's room, in the order
/// the keys were asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub now_ms: i64,
    pub keys: Vec<KeyRoom>,
}

impl Store {
    /// Connects to Redis at `url` (once: start-up does not wait for a server
    /// that is not there); `prefix` names this deployment's keys (its NATS
    /// prefix, so that tests can share one server).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT));
        let store = Self(Arc::new(StoreInner {
            client,
            config,
            connection: tokio::sync::Mutex::new(None),
            prefix: format!("{{{prefix}}}:"),
        }));
        store.connection().await?;
        Ok(store)
    }

    /// The shared connection, made if there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        let mut held = self.0.connection.lock().await;
        if let Some(connection) = held.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .0
            .client
            .get_multiplexed_async_connection_with_config(&self.0.config)
            .await?;
        *held = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `call` on the shared connection; drops the connection when the
    /// call failed for it ([`connection_failed`]).
    async fn with_connection<T, F, Fut>(&self, call: F) -> Result<T, redis::RedisError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let result = call(self.connection().await?).await;
        if let Err(e) = &result {
            if connection_failed(e) {
                *self.0.connection.lock().await = None;
            }
        }
        result
    }

    /// Whether Redis answers a PING within `timeout` (for `/readyz`).
    pub async fn ping(&self, timeout: Duration) -> Result<(), &'static str> {
        let ping = self.with_connection(|mut connection| async move {
            redis::cmd("PING").query_async::<()>(&mut connection).await
        });
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: Redis is unreachable");
                Err("unreachable")
            }
            Err(_) => Err("timeout"),
        }
    }

    /// Decides one batch: each key of `keys` once, as `(key, limit, spends)`,
    /// with `limit` at least 1. Spends up to each key's room, against the
    /// store's clock. A call whose connection failed is made once more, on
    /// a new connection, as the same batch: should the first attempt have
    /// been carried out, the store answers the retry with its answer rather
    /// than spending again.
    pub async fn decide_keys(
        &self,
        keys: &[(Uuid, i32, i32)],
        window_ms: i64,
    ) -> Result<Decided, redis::RedisError> {
        let batch = Uuid::now_v7();
        match self.decide_batch(batch, keys, window_ms).await {
            Err(e) if connection_failed(&e) => {
                tracing::warn!(error = %e, keys = keys.len(), "rate limiter call failed; retrying once");
                self.decide_batch(batch, keys, window_ms).await
            }
            decided => decided,
        }
    }

    /// One attempt at the batch `batch` (see [`Store::decide_keys`]); the
    /// same `batch` again, within [`BATCH_ANSWER_KEPT`], gets the same
    /// answer and spends nothing.
    pub async fn decide_batch(
        &self,
        batch: Uuid,
        keys: &[(Uuid, i32, i32)],
        window_ms: i64,
    ) -> Result<Decided, redis::RedisError> {
        let mut invocation = DECIDE.prepare_invoke();
        let key = |kind: &str, id: Uuid| format!("{}{kind}{}", self.0.prefix, id.as_hyphenated());
        invocation.key(key("rate-batch:", batch));
        invocation
            .arg(window_ms)
            .arg(BATCH_ANSWER_KEPT.as_millis() as u64);
        for &(key_id, limit, spends) in keys {
            invocation
                .key(key("rate:", key_id))
                .arg(limit.max(1))
                .arg(spends.max(0));
        }
        let reply: Vec<i64> = self
            .with_connection(|mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Decided::from_reply(&reply, keys.len())
    }
}

impl Decided {
    /// The script's reply for `keys` keys: the clock, then a room and a
    /// reset per key.
    fn from_reply(reply: &[i64], keys: usize) -> Result<Self, redis::RedisError> {
        let Some((&now_ms, rooms)) = reply.split_first() else {
            return Err(unanswered(keys));
        };
        if rooms.len() != 2 * keys {
            return Err(unanswered(keys));
        }
        let keys = rooms
            .chunks_exact(2)
            .map(|pair| KeyRoom {
                room: i32::try_from(pair[0]).unwrap_or(i32::MAX),
                reset_after_ms: pair[1],
            })
            .collect();
        Ok(Self { now_ms, keys })
    }
}

/// Whether a call failed for its connection (it broke, timed out, or could
/// not be set up), which warrants a new connection and one more try; not
/// when Redis answered with an error (the script raised one, a key held
/// something else, the server is out of memory), which would only recur.
fn connection_failed(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Io | redis::ErrorKind::Parse | redis::ErrorKind::AuthenticationFailed
    ) || e.is_timeout()
        || e.is_connection_dropped()
}

fn unanswered(keys: usize) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "the rate limit script did not answer every key",
        format!("{keys} keys asked"),
    ))
}

/// A batch of asks as the store takes them: each key once (in the order of
/// its first ask), with its newest limit and how many of its asks spend
/// quota; and each ask's key.
struct Asked {
    keys: Vec<(Uuid, i32, i32)>,
    /// For each ask, its key's index in `keys`.
    key_of: Vec<usize>,
    /// For each ask, whether its request had stopped waiting when the batch
    /// left (it spends nothing).
    expired: Vec<bool>,
}

impl Asked {
    /// The asks of a batch leaving at `now`.
    fn of(asks: &[Ask], now: Instant) -> Self {
        let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(asks.len());
        let mut asked = Self {
            keys: Vec::new(),
            key_of: Vec::with_capacity(asks.len()),
            expired: Vec::with_capacity(asks.len()),
        };
        for ask in asks {
            let expired = ask.deadline <= now;
            let k = *index.entry(ask.key_id).or_insert_with(|| {
                asked.keys.push((ask.key_id, 0, 0));
                asked.keys.len() - 1
            });
            // A limit of 0 would be a window of no requests: such a key is
            // refused outright (see `answers`; minting refuses 0 anyway).
            asked.keys[k].1 = i32::try_from(ask.limit.max(1)).unwrap_or(i32::MAX);
            asked.keys[k].2 += i32::from(spends(ask, expired));
            asked.key_of.push(k);
            asked.expired.push(expired);
        }
        asked
    }
}

/// Whether `ask` spends a request of its key's quota.
fn spends(ask: &Ask, expired: bool) -> bool {
    ask.consume == Consume::Yes && ask.limit > 0 && !expired
}

pub(crate) fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Decides a batch (the decisions' writer in [`crate::gate`] calls this).
pub(crate) async fn decide(
    store: &Store,
    asks: &[Ask],
    window: Duration,
) -> Vec<Result<Quota, LimiterError>> {
    let asked = Asked::of(asks, Instant::now());
    match store.decide_keys(&asked.keys, window_ms(window)).await {
        Ok(decided) => answers(asks, &asked, &decided, window),
        Err(e) => fail_all(asks.len(), e),
    }
}

/// Each ask's quota from its key's room, in the asks' order: of a key's
/// asks that spend, the first `room` are accepted; an ask that only reads
/// is allowed while room is left after the spends before it.
fn answers(
    asks: &[Ask],
    asked: &Asked,
    decided: &Decided,
    window: Duration,
) -> Vec<Result<Quota, LimiterError>> {
    let window_ms = window_ms(window);
    let now_ms = decided.now_ms;
    let mut spent = vec![0_i64; decided.keys.len()];
    asks.iter()
        .zip(&asked.key_of)
        .zip(&asked.expired)
        .map(|((ask, &k), &expired)| {
            let key = &decided.keys[k];
            if expired {
                return Err(LimiterError::TimedOut);
            }
            if ask.limit == 0 {
                return Ok(Quota {
                    limit: 0,
                    allowed: false,
                    remaining: 0,
                    now_ms,
                    reset_after_ms: window_ms,
                    window,
                });
            }
            let spend = i64::from(spends(ask, false));
            spent[k] += spend;
            let left = i64::from(key.room) - spent[k];
            Ok(Quota {
                limit: ask.limit,
                allowed: spent[k] - spend < i64::from(key.room),
                remaining: u32::try_from(left.max(0)).unwrap_or(0),
                now_ms,
                reset_after_ms: if left > 0 { 0 } else { key.reset_after_ms },
                window,
            })
        })
        .collect()
}

fn fail_all(n: usize, e: redis::RedisError) -> Vec<Result<Quota, LimiterError>> {
    tracing::error!(error = %e, requests = n, "rate limiter call failed");
    let e = Arc::new(e);
    (0..n)
        .map(|_| Err(LimiterError::Store(e.clone())))
        .collect()
}

/// The rate limit on `/api/v1`: spends one request of the caller's quota,
/// answers 429 `rate_limited` (with `Retry-After`) beyond it, and puts the
/// quota headers on the response either way. Requests without a
/// [`Principal`] pass through.
pub async fn middleware(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let Some(principal) = request.extensions().get::<Principal>() else {
        return next.run(request).await;
    };
    let key_id = principal.key_id;
    let quota = match limiter
        .check(key_id, principal.rate_limit_per_minute, Consume::Yes)
        .await
    {
        Ok(quota) => quota,
        // Fail closed: see the module documentation.
        Err(e) => {
            // A store's failure is logged once per batch, by `fail_all`.
            if matches!(e, LimiterError::Store(_)) {
                tracing::debug!(error = %e, "rate limiter unavailable; refusing the request");
            } else {
                tracing::warn!(error = %e, "rate limiter unavailable; refusing the request");
            }
            return ApiError::Unavailable.into_response();
        }
    };
    let mut response = if quota.allowed {
        next.run(request).await
    } else {
        tracing::info!(key.id = %key_id, "request refused: rate limit exceeded");
        ApiError::RateLimited {
            retry_after: quota.retry_after(),
        }
        .into_response()
    };
    write_headers(&quota, response.headers_mut());
    response
}

/// The quota headers: `X-RateLimit-*` and the IETF draft's fields.
pub fn write_headers(quota: &Quota, headers: &mut HeaderMap) {
    let window_s = quota.window.as_secs() + u64::from(quota.window.subsec_nanos() > 0);
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(quota.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(quota.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(quota.reset_unix()));
    let policy = format!("\"default\";q={};w={window_s}", quota.limit);
    let current = format!(
        "\"default\";r={};t={}",
        quota.remaining,
        quota.reset_seconds()
    );
    // Digits, quotes and semicolons: always valid header values.
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&current) {
        headers.insert(RATELIMIT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(remaining: u32, now_ms: i64, reset_after_ms: i64) -> Quota {
        Quota {
            limit: 5,
            allowed: remaining > 0,
            remaining,
            now_ms,
            reset_after_ms,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn times_round_up_to_whole_seconds() {
        let q = quota(0, 1_700_000_000_200, 59_100);
        assert_eq!(q.reset_unix(), 1_700_000_060);
        assert_eq!(q.reset_seconds(), 60);
        assert_eq!(q.retry_after(), 60);

        let q = quota(0, 1_700_000_000_000, 1);
        assert_eq!(q.retry_after(), 1);
        let q = quota(3, 1_700_000_000_000, 0);
        assert_eq!(q.reset_unix(), 1_700_000_000);
        assert_eq!(q.reset_seconds(), 0);
        assert_eq!(q.retry_after(), 1, "Retry-After is never 0");
    }

    fn ask(key_id: Uuid, limit: u32, consume: Consume) -> Ask {
        Ask {
            key_id,
            limit,
            consume,
            deadline: Instant::now() + DECISION_TIMEOUT,
        }
    }

    fn room(room: i32) -> KeyRoom {
        KeyRoom {
            room,
            reset_after_ms: 42_000,
        }
    }

    impl KeyRoom {
        fn with_reset(self, reset_after_ms: i64) -> Self {
            Self {
                reset_after_ms,
                ..self
            }
        }
    }

    /// Each request's answer, worked out from its key's room: of a key's
    /// spends, the first `room` pass; a read passes while room is left.
    #[test]
    fn each_request_is_answered_from_its_keys_room_in_order() {
        let (a, b, zero) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let asks = vec![
            ask(a, 2, Consume::No),
            ask(a, 2, Consume::Yes),
            ask(b, 5, Consume::Yes),
            ask(a, 2, Consume::No),
            ask(a, 2, Consume::Yes),
            ask(zero, 0, Consume::Yes),
            ask(a, 2, Consume::Yes),
            ask(a, 2, Consume::No),
        ];
        let window = Duration::from_secs(60);
        let asked = Asked::of(&asks, Instant::now());
        assert_eq!(
            asked.keys,
            vec![(a, 2, 3), (b, 5, 1), (zero, 1, 0)],
            "each key once, with its spends: reads and a limit of 0 spend nothing"
        );
        let decided = Decided {
            now_ms: 1_700_000_000_000,
            keys: vec![room(2), room(5), room(1)],
        };
        let got: Vec<(bool, u32, i64)> = answers(&asks, &asked, &decided, window)
            .into_iter()
            .map(|q| {
                let q = q.expect("answered");
                (q.allowed, q.remaining, q.reset_after_ms)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (true, 2, 0),
                (true, 1, 0),
                (true, 4, 0),
                (true, 1, 0),
                (true, 0, 42_000),
                (false, 0, 60_000),
                (false, 0, 42_000),
                (false, 0, 42_000),
            ]
        );
    }

    #[test]
    fn a_reply_short_of_a_key_fails_the_batch() {
        let decided = Decided::from_reply(&[1_700_000_000_000, 3, 0, 0, 42_000], 2)
            .expect("two keys answered");
        assert_eq!(decided.keys, vec![room(3).with_reset(0), room(0)]);
        for short in [
            &[][..],
            &[1_700_000_000_000][..],
            &[1_700_000_000_000, 3, 0][..],
        ] {
            Decided::from_reply(short, 2).expect_err("a key unanswered");
        }
    }

    /// An ask whose request has stopped waiting (answered 503 already)
    /// spends nothing when its batch finally leaves.
    #[test]
    fn an_ask_past_its_deadline_spends_nothing() {
        let key = Uuid::now_v7();
        let mut late = ask(key, 5, Consume::Yes);
        let now = Instant::now();
        late.deadline = now;
        let asks = vec![late, ask(key, 5, Consume::Yes)];
        let asked = Asked::of(&asks, now);
        assert_eq!(asked.keys, vec![(key, 5, 1)], "only the live ask spends");
        let decided = Decided {
            now_ms: 1_700_000_000_000,
            keys: vec![room(5)],
        };
        let window = Duration::from_secs(60);
        let answered = answers(&asks, &asked, &decided, window);
        assert!(matches!(answered[0], Err(LimiterError::TimedOut)));
        let live = answered[1].as_ref().expect("answered");
        assert_eq!((live.allowed, live.remaining), (true, 4));
    }

    /// A broken, timed-out or unusable connection is replaced and the
    /// batch retried; an error Redis answered would only recur.
    #[test]
    fn only_a_failed_connection_is_retried() {
        use std::io;
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::TimedOut,
        ] {
            let e = redis::RedisError::from(io::Error::new(kind, "test"));
            assert!(connection_failed(&e), "{kind:?}");
        }
        let answered = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR Error running script",
        ));
        assert!(!connection_failed(&answered));
        assert!(!connection_failed(&unanswered(2)));
    }

    #[test]
    fn headers_follow_the_draft() {
        let mut headers = HeaderMap::new();
        write_headers(&quota(2, 1_000_500, 0), &mut headers);
        assert_eq!(headers[X_RATELIMIT_LIMIT], "5");
        assert_eq!(headers[X_RATELIMIT_REMAINING], "2");
        assert_eq!(headers[X_RATELIMIT_RESET], "1001");
        assert_eq!(headers[RATELIMIT_POLICY], "\"default\";q=5;w=60");
        assert_eq!(headers[RATELIMIT], "\"default\";r=2;t=0");
    }
}
