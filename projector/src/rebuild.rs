//! `jeanus-projector rebuild`: read models rebuilt from the event log in
//! PostgreSQL into fresh tables, then swapped in for the live ones in one
//! transaction, while the api keeps serving the live tables and a running
//! projector keeps applying to them until the swap.
//!
//! 1. **Fresh tables** (`tables`): `<table>_rebuild`, like the live table,
//!    with its primary key only. Whatever a crashed rebuild left is dropped
//!    first. One rebuild at a time: the session advisory lock
//!    `jeanus.rebuild`.
//! 2. **Load**: the log up to its head at the start, only the stream types
//!    of the projections rebuilt, read **stream by stream** (keyset pages of
//!    about [`DEFAULT_PAGE_SIZE`] events on the log's `(stream_id,
//!    stream_version)` index, cut at stream boundaries: `pages`), the next
//!    page read while the current one is applied. Every read-model row is
//!    the fold of its own stream, so stream order builds the same rows as
//!    position order, but each row is folded in memory and inserted once,
//!    never read back and rewritten by a later page. Each page is applied by
//!    the projections' own code ([`Projection::apply_into`]: the live path's
//!    batch step, aimed at the fresh table, writing the rows of streams that
//!    begin in the page with `COPY`: [`NewRows::Copy`]), one transaction per
//!    page, committed with `synchronous_commit = off`: nothing reads these
//!    tables, and a crash throws them away anyway.
//! 3. **Indexes**: the live table's other indexes and constraints, built
//!    once over the loaded rows, two at a time, then `analyze`.
//! 4. **Catch-up**: the events appended meanwhile, in position order (onto
//!    the rows the load wrote), page by page, until what is left is less
//!    than a page.
//! 5. **Swap**, in one transaction: lock the rebuilt projections' checkpoint
//!    rows (`select … for update`, the fence every projector batch takes
//!    first: a running projector now waits, holding nothing), apply the last
//!    events up to the log's head `h` as of now to the fresh tables, drop
//!    each live table and rename the fresh one (and its indexes) to its
//!    name, raise the checkpoints to `h`, notify `jeanus_projected`, commit.
//!    Every event up to `h` is in the fresh tables exactly once; the
//!    projector's next batch locks the checkpoints, reads `h`, skips the
//!    events at or below it and applies the rest to the renamed tables. So
//!    no event is lost or applied twice, whether the projector is running,
//!    behind, ahead of the rebuild, or stopped. Readers of a live table wait
//!    for the swap's few renames (its lock); then they read the new table.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::{Config, RebuildArgs};
use crate::consumer::{
    lock_checkpoints, notify_projected, raise_checkpoints, register_checkpoints,
};
use crate::projections::{NewRows, Projection};
use schema::envelope::RecordedEvent;
use schema::events::EventPayload;

mod pages;
mod tables;

use tables::Fresh;

/// Events per page read from the log and applied in one transaction.
pub const DEFAULT_PAGE_SIZE: i64 = 10_000;

/// The advisory lock key (hashed by `hashtext`) held by the one rebuild
/// allowed at a time.
const REBUILD_LOCK: &str = "jeanus.rebuild";
/// Catch-up rounds before the swap, at most: each one applies what was
/// appended during the previous one, so a few suffice unless the log grows
/// faster than the rebuild applies it; the swap then applies the rest.
const MAX_CATCH_UP_ROUNDS: usize = 5;
/// How long the swap waits for a lock (readers of a live table finishing,
/// a projector batch committing) before it gives up and is tried again.
const SWAP_LOCK_TIMEOUT: &str = "5s";
const SWAP_ATTEMPTS: usize = 3;
/// PostgreSQL's `lock_not_available`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// Connections: one reading the log, one per table being loaded, one for
/// DDL.
pub const CONNECTIONS: u32 = 10;

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events per page (and per load transaction).
    pub page_size: i64,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            page_size: DEFAULT_PAGE_SIZE,
            progress: false,
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone)]
pub struct Report {
    pub projections: Vec<Projection>,
    /// Events applied to the fresh tables (those of the rebuilt
    /// projections' stream types, of types this build knows).
    pub events: u64,
    /// The position the rebuilt read models and their checkpoints are at
    /// when swapped in: the log's head at the swap.
    pub swapped_at: i64,
    /// Reading and applying the log up to its head at the start.
    pub load: Duration,
    /// Building the deferred indexes and constraints, and `analyze`.
    pub indexes: Duration,
    /// Applying what was appended during the load.
    pub catch_up: Duration,
    /// The swap transaction (the live projector waits this long, readers
    /// of the live tables at most this long).
    pub swap: Duration,
    pub total: Duration,
    /// Applying one page (one transaction) during the load: median and 99th
    /// percentile.
    pub page_p50: Duration,
    pub page_p99: Duration,
}

impl Report {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.total.as_secs_f64().max(f64::EPSILON)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        write!(
            f,
            "rebuilt {} from {} events in {:.1} s: {:.0} events/s \
             (load {:.1} s, indexes {:.1} s, catch-up {:.1} s, swap {} ms); \
             swapped in at position {}",
            names.join(", "),
            self.events,
            self.total.as_secs_f64(),
            self.events_per_second(),
            self.load.as_secs_f64(),
            self.indexes.as_secs_f64(),
            self.catch_up.as_secs_f64(),
            self.swap.as_millis(),
            self.swapped_at,
        )
    }
}

/// The `rebuild` command: connects, rebuilds, prints the report on stdout.
pub async fn run(config: Config, args: RebuildArgs) -> anyhow::Result<()> {
    let pool = schema::connect::postgres(&config.database_url, CONNECTIONS).await?;
    let projections = match args.projection {
        Some(one) => vec![one],
        None => Projection::ALL.to_vec(),
    };
    let options = Options {
        page_size: args.page_size,
        progress: true,
    };
    let result = rebuild(&pool, &projections, &options).await;
    pool.close().await;
    println!("{}", result?);
    Ok(())
}

/// Rebuild `projections` from the log and swap them in (see the module doc).
/// On error the live tables are untouched and the fresh ones are dropped.
pub async fn rebuild(
    pool: &PgPool,
    projections: &[Projection],
    options: &Options,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!projections.is_empty(), "no projection to rebuild");
    anyhow::ensure!(options.page_size > 0, "the page size must be above 0");
    let started = Instant::now();
    let mut guard = PgConnection::connect_with(&pool.connect_options())
        .await
        .context("failed to connect for the rebuild lock")?;
    let alone: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1))")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut guard)
        .await
        .context("failed to take the rebuild lock")?;
    anyhow::ensure!(alone, "another rebuild is running on this database");

    register_checkpoints(pool, projections).await?;
    let mut fresh = Vec::new();
    for &projection in projections {
        match tables::create(&mut guard, projection).await {
            Ok(table) => fresh.push(table),
            Err(e) => {
                discard(&mut guard, &fresh).await;
                return Err(e);
            }
        }
    }
    let result = build_and_swap(pool, &fresh, options, started).await;
    if result.is_err() {
        discard(&mut guard, &fresh).await;
    }
    let _ = guard.close().await;
    result
}

async fn build_and_swap(
    pool: &PgPool,
    fresh: &[Fresh],
    options: &Options,
    started: Instant,
) -> anyhow::Result<Report> {
    let head = schema::store::head(pool)
        .await
        .context("failed to read the log's head")?;
    let bar = progress_bar(options.progress);
    let mut loader = Loader {
        pool,
        fresh,
        page_size: options.page_size,
        bar: &bar,
        events: 0,
        page_times: Vec::new(),
    };
    if options.progress {
        bar.set_length(loader.count(head).await?);
    }
    loader.load(head).await?;
    let load = started.elapsed();
    bar.finish_and_clear();

    let indexing = Instant::now();
    tables::finish(pool, fresh).await?;
    let indexes = indexing.elapsed();

    let catching_up = Instant::now();
    let mut through = head;
    for _ in 0..MAX_CATCH_UP_ROUNDS {
        let now = schema::store::head(pool)
            .await
            .context("failed to read the log's head")?;
        if now - through < options.page_size {
            break;
        }
        loader.catch_up(through, now).await?;
        through = now;
    }
    let catch_up = catching_up.elapsed();

    let swapping = Instant::now();
    let mut attempt = 1;
    let swapped_at = loop {
        match loader.swap(through).await {
            Ok(at) => break at,
            Err(e) if attempt < SWAP_ATTEMPTS && is_lock_timeout(&e) => {
                tracing::warn!(attempt, "the swap waited too long for a lock; trying again");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let swap = swapping.elapsed();

    let (page_p50, page_p99) = quantiles(&mut loader.page_times);
    Ok(Report {
        projections: fresh.iter().map(|f| f.projection).collect(),
        events: loader.events,
        swapped_at,
        load,
        indexes,
        catch_up,
        swap,
        total: started.elapsed(),
        page_p50,
        page_p99,
    })
}

/// Applies runs of the log to the fresh tables.
struct Loader<'a> {
    pool: &'a PgPool,
    fresh: &'a [Fresh],
    page_size: i64,
    bar: &'a ProgressBar,
    /// Events applied so far.
    events: u64,
    page_times: Vec<Duration>,
}

impl Loader<'_> {
    /// The events up to `upto` a load reads.
    async fn count(&self, upto: i64) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from events where position <= $1 and stream_type = any($2)",
        )
        .bind(upto)
        .bind(self.stream_types())
        .fetch_one(self.pool)
        .await
        .context("failed to count the events to rebuild from")?;
        Ok(n.max(0) as u64)
    }

    fn stream_types(&self) -> Vec<&'static str> {
        self.fresh
            .iter()
            .flat_map(|f| f.projection.stream_types().iter().copied())
            .collect()
    }

    /// Applies every event up to `upto`, stream by stream, one transaction
    /// per page, the next page read meanwhile.
    async fn load(&mut self, upto: i64) -> anyhow::Result<()> {
        let mut pages = pages::spawn_stream_reader(
            self.pool.clone(),
            upto,
            self.stream_types(),
            self.page_size,
        );
        let pool = self.pool;
        while let Some(page) = pages.recv().await {
            let page = page?;
            let applying = Instant::now();
            // Each table on a connection of its own, at the same time: the
            // tables are independent until the swap, and PostgreSQL then
            // uses every core.
            let applied = self.fresh.iter().map(|table| {
                let events = &page.events;
                async move {
                    let mut conn = pool
                        .acquire()
                        .await
                        .context("failed to connect to load the fresh tables")?;
                    commit_page(&mut conn, std::slice::from_ref(table), events).await
                }
            });
            futures::future::try_join_all(applied).await?;
            self.events += page.events.len() as u64;
            self.page_times.push(applying.elapsed());
            self.bar.inc(page.through as u64);
        }
        Ok(())
    }

    /// Applies `(after, upto]` in position order, one transaction per page.
    async fn catch_up(&mut self, after: i64, upto: i64) -> anyhow::Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("failed to connect to load the fresh tables")?;
        let types = self.stream_types();
        let mut cursor = after;
        while cursor < upto {
            let page = pages::read_page(&mut conn, cursor, upto, &types, self.page_size).await?;
            commit_page(&mut conn, self.fresh, &page.events).await?;
            self.events += page.events.len() as u64;
            cursor = page.through;
        }
        Ok(())
    }

    /// The swap transaction (see the module doc), from the fresh tables at
    /// `through`. Returns the position they were swapped in at.
    async fn swap(&mut self, through: i64) -> anyhow::Result<i64> {
        let projections: Vec<Projection> = self.fresh.iter().map(|f| f.projection).collect();
        let mut tx = schema::tx::begin(self.pool)
            .await
            .context("failed to begin the swap")?;
        sqlx::query(&format!("set local lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await
            .context("failed to set up the swap")?;
        // From here until the commit, no projector batch applies anything to
        // these projections: each one starts by locking these rows.
        let checkpoints = lock_checkpoints(&mut tx, &projections).await?;
        let head = schema::store::head(&mut *tx)
            .await
            .context("failed to read the log's head")?;
        // The projector applied nothing the log did not hold already.
        let live = checkpoints.iter().copied().max().unwrap_or(0);
        anyhow::ensure!(
            live <= head,
            "a checkpoint ({live}) is past the log's head ({head}): the read models belong to another log"
        );
        let mut cursor = through;
        let types = self.stream_types();
        while cursor < head {
            let page = pages::read_page(&mut tx, cursor, head, &types, self.page_size).await?;
            apply(&mut tx, self.fresh, &page.events).await?;
            self.events += page.events.len() as u64;
            cursor = page.through;
        }
        for table in self.fresh {
            tables::swap(&mut tx, table).await?;
        }
        raise_checkpoints(&mut tx, &projections, head).await?;
        let projected: i64 = sqlx::query_scalar("select jeanus_projected_position()")
            .fetch_one(&mut *tx)
            .await
            .context("failed to read the projected position")?;
        notify_projected(&mut tx, projected).await?;
        tx.commit().await.context("failed to commit the swap")?;
        Ok(head)
    }
}

/// Applies `events` to `fresh` in one transaction of its own.
async fn commit_page(
    conn: &mut PgConnection,
    fresh: &[Fresh],
    events: &[(RecordedEvent, EventPayload)],
) -> anyhow::Result<()> {
    let mut tx = conn
        .begin()
        .await
        .context("failed to begin a load transaction")?;
    sqlx::query("set local synchronous_commit = off")
        .execute(&mut *tx)
        .await
        .context("failed to set up a load transaction")?;
    apply(&mut tx, fresh, events).await?;
    tx.commit()
        .await
        .context("failed to commit a load transaction")
}

/// Applies `events` to each of `fresh` through the projection's own code.
async fn apply(
    conn: &mut PgConnection,
    fresh: &[Fresh],
    events: &[(RecordedEvent, EventPayload)],
) -> anyhow::Result<()> {
    let (Some((first, _)), Some((last, _))) = (events.first(), events.last()) else {
        return Ok(());
    };
    for table in fresh {
        let ours = table.projection.stream_types();
        if !events
            .iter()
            .any(|(e, _)| ours.contains(&e.stream_type.as_str()))
        {
            continue;
        }
        table
            .projection
            .apply_into(conn, &table.table, events, NewRows::Copy)
            .await
            .with_context(|| {
                format!(
                    "rebuilding {} failed at the events at positions {} to {}",
                    table.projection.name(),
                    first.position,
                    last.position
                )
            })?;
    }
    Ok(())
}

/// Drops the fresh tables after a failure: the live ones were not touched.
async fn discard(conn: &mut PgConnection, fresh: &[Fresh]) {
    for table in fresh {
        if let Err(e) = tables::drop_if_exists(conn, &table.table).await {
            tracing::warn!(table = %table.table, error = format!("{e:#}"), "failed to drop a fresh table; the next rebuild drops it");
        }
    }
}

fn is_lock_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|e| e.code())
            .is_some_and(|code| code == LOCK_NOT_AVAILABLE)
    })
}

fn progress_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The median and the 99th percentile (zero when empty).
fn quantiles(times: &mut [Duration]) -> (Duration, Duration) {
    if times.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}
