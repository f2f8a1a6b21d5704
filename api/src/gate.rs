//! The request path's one batch writer. Every `/api/v1` request needs two
//! things from PostgreSQL: a rate-limit decision before its handler runs
//! ([`crate::ratelimit`]) and its audit entry committed before its response
//! leaves ([`crate::audit`]). Both go through this one [`Batcher`], so that
//! one batch carries the decisions of the requests arriving and the entries
//! of the requests leaving: one statement, one transaction, one round trip
//! (and one WAL flush) for both, where two writers took two. The limiter's
//! tables are UNLOGGED, so a decision waits for the flush only because its
//! batch also carries entries.
//!
//! A combined batch that fails is run again as its two halves, each with
//! its own retry: a broken audit table never costs a decision, nor a broken
//! limiter an entry.

use std::sync::LazyLock;
use std::time::Duration;

use schema::batch::{Batcher, Stopped};
use sqlx::postgres::PgArguments;
use sqlx::PgPool;

use crate::audit::{self, AuditError, Columns, Entry};
use crate::ratelimit::{self, Ask, Asked, Decision, LimiterError, Quota};

/// Items (decisions and entries) one batch carries at most.
const MAX_BATCH: usize = 1024;

/// Decides the asks (`$1`–`$4`) and writes the entries (`$5`–`$19`) in one
/// statement.
static BOTH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with recorded as ({}) {}",
        audit::insert_statement(5),
        ratelimit::DECIDE
    )
});

// Most items are entries: boxing them would add an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Item {
    Decide(Ask),
    Record(Entry),
}

pub(crate) enum Done {
    Decided(Result<Quota, LimiterError>),
    Recorded(Result<(), AuditError>),
}

/// This process's writer. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    batcher: Batcher<Item, Done>,
    window: Duration,
    /// The writer's own connection, closed by [`Gate::close`].
    db: PgPool,
}

impl Gate {
    /// Start the batching task on the current runtime, on a connection of
    /// its own, deciding rate limits over `window`.
    pub fn spawn(db: &PgPool, window: Duration) -> Self {
        let db = own_connection(db);
        let batcher = Batcher::spawn(MAX_BATCH, MAX_BATCH, |_: &Item| 1, {
            let db = db.clone();
            move |items: Vec<Item>| flush(db.clone(), items, window)
        });
        Self {
            batcher,
            window,
            db,
        }
    }

    /// The rate limit's window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Close the writer's connection (at shutdown, once no request is left).
    pub async fn close(&self) {
        self.db.close().await;
    }

    pub(crate) async fn submit(&self, item: Item) -> Result<Done, Stopped> {
        self.batcher.submit(item).await
    }
}

/// A pool of one connection, to the same database as `db`: the same backend
/// serves every batch, with its plans and compiled functions warm, and no
/// liveness ping precedes each batch (the shared pool pings on every
/// acquire, one more round trip). A broken connection fails one batch and
/// is replaced on the next.
fn own_connection(db: &PgPool) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with((*db.connect_options()).clone())
}

async fn flush(db: PgPool, items: Vec<Item>, window: Duration) -> Vec<Done> {
    let is_ask: Vec<bool> = items.iter().map(|i| matches!(i, Item::Decide(_))).collect();
    let mut asks = Vec::new();
    let mut entries = Vec::new();
    for item in items {
        match item {
            Item::Decide(ask) => asks.push(ask),
            Item::Record(entry) => entries.push(entry),
        }
    }
    let (decided, recorded) = if asks.is_empty() {
        (Vec::new(), audit::write_batch(&db, &entries).await)
    } else if entries.is_empty() {
        (ratelimit::decide(&db, &asks, window).await, Vec::new())
    } else {
        match both(&db, &asks, &entries, window).await {
            Ok(rows) => (
                ratelimit::answers(&asks, Ok(rows), window),
                (0..entries.len()).map(|_| Ok(())).collect(),
            ),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    decisions = asks.len(),
                    entries = entries.len(),
                    "the combined rate-limit and audit batch failed; running each apart"
                );
                (
                    ratelimit::decide(&db, &asks, window).await,
                    audit::write_batch(&db, &entries).await,
                )
            }
        }
    };
    let mut decided = decided.into_iter();
    let mut recorded = recorded.into_iter();
    is_ask
        .into_iter()
        .map(|ask| {
            if ask {
                Done::Decided(decided.next().unwrap_or(Err(LimiterError::Stopped)))
            } else {
                Done::Recorded(recorded.next().unwrap_or(Err(AuditError::Stopped)))
            }
        })
        .collect()
}

async fn both(
    db: &PgPool,
    asks: &[Ask],
    entries: &[Entry],
    window: Duration,
) -> Result<Vec<Decision>, sqlx::Error> {
    let asked = Asked::of(asks, window);
    let columns = Columns::of(entries);
    let mut args = PgArguments::default();
    asked.add_to(&mut args).map_err(sqlx::Error::Encode)?;
    columns.add_to(&mut args).map_err(sqlx::Error::Encode)?;
    sqlx::query_as_with::<_, Decision, _>(&BOTH, args)
        .fetch_all(db)
        .await
}
