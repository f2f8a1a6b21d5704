//! The request path's two batch writers. Every `/api/v1` request needs a
//! rate-limit decision before its handler runs ([`crate::ratelimit`], from
//! Redis) and its audit entry committed in PostgreSQL before its response
//! leaves ([`crate::audit`]). Each goes through a [`Batcher`] of its own: one
//! round trip carries every request that arrived meanwhile, and neither
//! waits behind the other's (a batch of entries waits for PostgreSQL's WAL
//! flush; a decision never did).
//!
//! Both writers linger, each its own way ([`Linger`]), because a batch's
//! fixed cost is most of its cost when batches are small:
//!
//! - the entries' writer waits, up to [`LINGER`], while requests that have
//!   started ([`Gate::announce`]) have not yet handed in their entries, so
//!   that one flush carries them rather than the next;
//! - the decisions' writer lets the runtime run its other ready tasks, up
//!   to [`DECISION_ROUNDS`] times while that brings more asks: requests
//!   queued behind the CPU join the batch; on an idle runtime it costs
//!   microseconds.
//!
//! A lone request never waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use schema::batch::{Announced, Batcher, Expected, Linger, Stopped};
use schema::connect::Held;
use sqlx::PgPool;

use crate::audit::{self, AuditError, Entry};
use crate::ratelimit::{self, Ask, LimiterError, Quota};

/// Items one batch carries at most.
const MAX_BATCH: usize = 1024;

/// The longest an entries' batch waits for announced entries: less than a
/// flush, which is what an entry left behind would wait for first.
const LINGER: Duration = Duration::from_millis(1);

/// How many rounds of the runtime's ready tasks a decisions' batch lets run
/// while they bring more asks (`scripts/bench auth`: with decisions in
/// PostgreSQL, 8 rounds took batches from ≈ 18 to ≈ 25 asks under load; in
/// Redis, 8 rounds against none: 38 against 21 asks per batch, and no
/// higher ratio without them, BENCHMARKS.md session 10).
const DECISION_ROUNDS: usize = 8;

/// The entries' writer's `application_name` in `pg_stat_activity`.
pub const RECORDING: &str = "jeanus-api audit log";

/// Batches and items each writer has sent, in this process, since it
/// started (every instance adds to the same counters): what the benchmark
/// reports as items per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub decision_batches: u64,
    pub decisions: u64,
    pub entry_batches: u64,
    pub entries: u64,
}

static DECISION_BATCHES: AtomicU64 = AtomicU64::new(0);
static DECISIONS: AtomicU64 = AtomicU64::new(0);
static ENTRY_BATCHES: AtomicU64 = AtomicU64::new(0);
static ENTRIES: AtomicU64 = AtomicU64::new(0);

pub fn sent() -> Sent {
    Sent {
        decision_batches: DECISION_BATCHES.load(Ordering::Relaxed),
        decisions: DECISIONS.load(Ordering::Relaxed),
        entry_batches: ENTRY_BATCHES.load(Ordering::Relaxed),
        entries: ENTRIES.load(Ordering::Relaxed),
    }
}

fn count(batches: &AtomicU64, items: &AtomicU64, n: usize) {
    batches.fetch_add(1, Ordering::Relaxed);
    items.fetch_add(n as u64, Ordering::Relaxed);
}

/// This process's writers. Cheap to clone: one reference count (every
/// request clones it, once per layer that holds it).
#[derive(Clone)]
pub struct Gate(Arc<Writers>);

struct Writers {
    decisions: Batcher<Ask, Result<Quota, LimiterError>>,
    entries: Batcher<Entry, Result<(), AuditError>>,
    /// Requests under way whose entries are still to come.
    expected: Expected,
    window: Duration,
    /// Where the decisions are made.
    limits: ratelimit::Store,
    /// The entries' writer's own connection, closed by [`Gate::close`].
    recording: Arc<Held>,
}

impl Gate {
    /// Start both writers on the current runtime: decisions over `window`
    /// in `limits`, entries on a PostgreSQL connection of their own.
    pub fn spawn(db: &PgPool, limits: ratelimit::Store, window: Duration) -> Self {
        let decide_linger = Linger::WhileGrowing {
            rounds: DECISION_ROUNDS,
        };
        let decisions =
            Batcher::spawn_lingering(decide_linger, MAX_BATCH, MAX_BATCH, |_: &Ask| 1, {
                let limits = limits.clone();
                move |asks: Vec<Ask>| {
                    let limits = limits.clone();
                    count(&DECISION_BATCHES, &DECISIONS, asks.len());
                    async move { ratelimit::decide(&limits, &asks, window).await }
                }
            });
        let recording = own_connection(db, RECORDING);
        let expected = Expected::default();
        let linger = Linger::ForAnnounced {
            expected: expected.clone(),
            at_most: LINGER,
        };
        let entries = Batcher::spawn_lingering(linger, MAX_BATCH, MAX_BATCH, |_: &Entry| 1, {
            let db = recording.clone();
            move |entries: Vec<Entry>| {
                let db = db.clone();
                count(&ENTRY_BATCHES, &ENTRIES, entries.len());
                async move { audit::write_batch(&db, &entries).await }
            }
        });
        Self(Arc::new(Writers {
            decisions,
            entries,
            expected,
            window,
            limits,
            recording,
        }))
    }

    /// The rate limit's window.
    pub fn window(&self) -> Duration {
        self.0.window
    }

    /// The rate limiter's store.
    pub fn limits(&self) -> &ratelimit::Store {
        &self.0.limits
    }

    /// Close the writers' connections (at shutdown, once no request is left).
    pub async fn close(&self) {
        self.0.recording.close().await;
    }

    pub(crate) async fn decide(&self, ask: Ask) -> Result<Result<Quota, LimiterError>, Stopped> {
        self.0.decisions.submit(ask).await
    }

    /// A request has started whose entry will follow: the entries' writer
    /// may wait for it while the guard lives.
    pub(crate) fn announce(&self) -> Announced {
        self.0.expected.announce()
    }

    pub(crate) async fn record(
        &self,
        entry: Entry,
        announced: Announced,
    ) -> Result<Result<(), AuditError>, Stopped> {
        self.0.entries.submit_announced(entry, announced).await
    }
}

/// A connection of the writer's own, to the same database as `db`, named
/// `name` in `pg_stat_activity`: the same backend serves every batch, with
/// its plans and compiled functions warm, and no round trip but the batch's
/// own precedes or follows it (see [`Held`]). A broken connection fails one
/// batch and is replaced on the next.
fn own_connection(db: &PgPool, name: &str) -> Arc<Held> {
    let options = (*db.connect_options()).clone().application_name(name);
    Arc::new(Held::new(options))
}
