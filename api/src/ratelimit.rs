//! The per-key rate limit: an exact sliding window shared by every api
//! instance, kept in PostgreSQL, and the headers that report it.
//!
//! A key never gets more than its `rate_limit_per_minute` requests accepted
//! in any window (60 s; `JEANUS_RATE_LIMIT_WINDOW` shortens it for tests),
//! and a client that stays under the limit is never refused. The state is a
//! ring of the last `limit` accepted request times per key. A decision
//! writes one slot and reads none while the key's oldest request is still
//! in the window, and O(log n) slots when it has left, however long the key
//! was idle: `jeanus_rate_limit` in
//! `schema/migrations/0013_rate_limit_set_based.sql` has the details, and
//! `0014_rate_limit_one_statement.sql` its common case in one statement;
//! `0019_rate_limit_per_key.sql` takes each key of a batch once, with its
//! count of spends, and [`answers`] works out each request's answer;
//! `0020_rate_limit_moving_window.sql` keeps a key in steady use, whose
//! oldest request leaves with nearly every batch, in that one statement
//! (it moves the window by reading up to 256 slots on). Every
//! instance funnels its decisions through one [`Batcher`]: one round trip
//! for all the requests that arrived meanwhile. Time is PostgreSQL's clock,
//! the one clock every instance shares.
//!
//! **When PostgreSQL is down the limiter fails closed**: `/api/v1` answers
//! 503 `unavailable`. The audit log needs PostgreSQL for every response
//! anyway, so failing open here would buy nothing. The tables are UNLOGGED
//! (the windows are not worth WAL): after a PostgreSQL crash every window
//! starts empty, which lets a key make at most one extra window's worth of
//! requests once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use schema::connect::Held;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::Arguments;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::gate::Gate;

/// How long a request waits for its decision before it is answered 503
/// (the limiter sits outside the request timeout).
const DECISION_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// PostgreSQL's clock at the decision, in Unix milliseconds.
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
    #[error("the rate limiter's database query failed: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("the rate limiter's batch writer has stopped")]
    Stopped,
    #[error("the rate limiter did not decide within {} s", DECISION_TIMEOUT.as_secs())]
    TimedOut,
}

pub(crate) struct Ask {
    key_id: Uuid,
    limit: u32,
    consume: Consume,
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

    /// Decide one request of `key_id` under `limit` per window.
    pub async fn check(
        &self,
        key_id: Uuid,
        limit: u32,
        consume: Consume,
    ) -> Result<Quota, LimiterError> {
        let ask = Ask {
            key_id,
            limit,
            consume,
        };
        match tokio::time::timeout(DECISION_TIMEOUT, self.gate.decide(ask)).await {
            Ok(Ok(decided)) => decided,
            Ok(Err(_)) => Err(LimiterError::Stopped),
            Err(_) => Err(LimiterError::TimedOut),
        }
    }
}

/// One key's row of [`DECIDE`].
#[derive(sqlx::FromRow)]
struct Decision {
    idx: i64,
    /// Requests the key may still spend in its window before this batch's.
    room: i32,
    /// Once the room is spent, how long until a request is next free.
    reset_after_ms: i64,
    now_ms: i64,
}

/// The statement that decides a batch, one row per key, its parameters
/// `$1`–`$4` (see [`Asked::add_to`]).
const DECIDE: &str = "select idx, room, reset_after_ms, now_ms \
                        from jeanus_rate_limit_keys($1, $2, $3, $4)";

/// A batch of asks as the columns `jeanus_rate_limit_keys` takes: each key
/// once (in the order of its first ask), with its newest limit and how
/// many of its asks spend quota; and each ask's key.
struct Asked {
    key_ids: Vec<Uuid>,
    limits: Vec<i32>,
    spends: Vec<i32>,
    /// For each ask, its key's index in `key_ids`.
    key_of: Vec<usize>,
    window_ms: i64,
}

impl Asked {
    fn of(asks: &[Ask], window: Duration) -> Self {
        let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(asks.len());
        let mut asked = Self {
            key_ids: Vec::new(),
            limits: Vec::new(),
            spends: Vec::new(),
            key_of: Vec::with_capacity(asks.len()),
            window_ms: window_ms(window),
        };
        for ask in asks {
            let k = *index.entry(ask.key_id).or_insert_with(|| {
                asked.key_ids.push(ask.key_id);
                asked.limits.push(0);
                asked.spends.push(0);
                asked.key_ids.len() - 1
            });
            // A limit of 0 would be a ring of no slots: such a key is
            // refused outright (see `answers`; minting refuses 0 anyway).
            asked.limits[k] = i32::try_from(ask.limit.max(1)).unwrap_or(i32::MAX);
            asked.spends[k] += i32::from(spends(ask));
            asked.key_of.push(k);
        }
        asked
    }

    /// Adds `$1`–`$4` of [`DECIDE`].
    fn add_to(&self, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(&self.key_ids)?;
        args.add(&self.limits)?;
        args.add(&self.spends)?;
        args.add(self.window_ms)
    }
}

/// Whether `ask` spends a request of its key's quota.
fn spends(ask: &Ask) -> bool {
    ask.consume == Consume::Yes && ask.limit > 0
}

pub(crate) fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Decides a batch (the decisions' writer in [`crate::gate`] calls this).
pub(crate) async fn decide(
    db: &Held,
    asks: &[Ask],
    window: Duration,
) -> Vec<Result<Quota, LimiterError>> {
    let asked = Asked::of(asks, window);
    let query = || async {
        let mut args = PgArguments::default();
        asked.add_to(&mut args).map_err(sqlx::Error::Encode)?;
        let mut held = db.checkout().await?;
        let rows = sqlx::query_as_with::<_, Decision, _>(DECIDE, args)
            .fetch_all(held.conn())
            .await?;
        held.keep();
        Ok::<_, sqlx::Error>(rows)
    };
    let rows = match query().await {
        // Once more, on a fresh connection. Should the failed attempt have
        // committed unseen, its requests count twice: more refusals, never
        // more admissions.
        Err(e) => {
            tracing::warn!(error = %e, requests = asks.len(), "rate limiter query failed; retrying once");
            query().await
        }
        ok => ok,
    };
    match rows {
        Ok(rows) => answers(asks, &asked, rows, window),
        Err(e) => fail_all(asks.len(), e),
    }
}

/// Each ask's quota from its key's row of [`DECIDE`], in the asks' order:
/// of a key's asks that spend, the first `room` are accepted; an ask that
/// only reads is allowed while room is left after the spends before it.
fn answers(
    asks: &[Ask],
    asked: &Asked,
    rows: Vec<Decision>,
    window: Duration,
) -> Vec<Result<Quota, LimiterError>> {
    let mut by_key: Vec<Option<Decision>> = Vec::new();
    by_key.resize_with(asked.key_ids.len(), || None);
    for row in rows {
        if let Some(slot) = usize::try_from(row.idx - 1)
            .ok()
            .and_then(|k| by_key.get_mut(k))
        {
            *slot = Some(row);
        }
    }
    let Some(by_key) = by_key.into_iter().collect::<Option<Vec<Decision>>>() else {
        let e = sqlx::Error::Protocol(format!(
            "jeanus_rate_limit_keys did not answer every one of {} keys",
            asked.key_ids.len()
        ));
        return fail_all(asks.len(), e);
    };
    let window_ms = window_ms(window);
    let mut spent = vec![0_i64; by_key.len()];
    asks.iter()
        .zip(&asked.key_of)
        .map(|(ask, &k)| {
            let row = &by_key[k];
            if ask.limit == 0 {
                return Ok(Quota {
                    limit: 0,
                    allowed: false,
                    remaining: 0,
                    now_ms: row.now_ms,
                    reset_after_ms: window_ms,
                    window,
                });
            }
            let spend = i64::from(spends(ask));
            spent[k] += spend;
            let left = i64::from(row.room) - spent[k];
            Ok(Quota {
                limit: ask.limit,
                allowed: spent[k] - spend < i64::from(row.room),
                remaining: u32::try_from(left.max(0)).unwrap_or(0),
                now_ms: row.now_ms,
                reset_after_ms: if left > 0 { 0 } else { row.reset_after_ms },
                window,
            })
        })
        .collect()
}

fn fail_all(n: usize, e: sqlx::Error) -> Vec<Result<Quota, LimiterError>> {
    tracing::error!(error = %e, requests = n, "rate limiter query failed");
    let e = Arc::new(e);
    (0..n)
        .map(|_| Err(LimiterError::Database(e.clone())))
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
            tracing::error!(error = %e, "rate limiter unavailable; refusing the request");
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
        }
    }

    fn row(idx: i64, room: i32) -> Decision {
        Decision {
            idx,
            room,
            reset_after_ms: 42_000,
            now_ms: 1_700_000_000_000,
        }
    }

    /// What `jeanus_rate_limit` answered per request before 0019 (see
    /// `tests/tests/rate_limit.rs`, `refusals_and_reads_spend_nothing`),
    /// now worked out from the key's room.
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
        let asked = Asked::of(&asks, window);
        assert_eq!(asked.key_ids, vec![a, b, zero]);
        assert_eq!(
            asked.spends,
            vec![3, 1, 0],
            "reads and a limit of 0 spend nothing"
        );
        assert_eq!(asked.limits, vec![2, 5, 1]);
        let rows = vec![row(3, 1), row(1, 2), row(2, 5)];
        let got: Vec<(bool, u32, i64)> = answers(&asks, &asked, rows, window)
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
    fn a_key_left_unanswered_fails_the_batch() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let asks = vec![ask(a, 3, Consume::Yes), ask(b, 3, Consume::Yes)];
        let window = Duration::from_secs(60);
        let asked = Asked::of(&asks, window);
        let answered = answers(&asks, &asked, vec![row(1, 3)], window);
        assert!(answered.iter().all(Result::is_err));
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
