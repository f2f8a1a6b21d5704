//! The `chain` scenario (issue 6): what the hash chain costs at append, and
//! how fast `verify` re-walks it.
//!
//! 1. Appends through one shared `EventStore`, as in `append`, with the
//!    chain (`jeanus_append` of migration 0016: the writer chains its
//!    batches, the database checks where they chain from) and without it
//!    (0001's function under 0016's signature, swapped in with `create or
//!    replace`), on the same database, interleaved with, without, without,
//!    with for each line so that drift (autovacuum, other builds) falls on
//!    both sides.
//! 2. `verify` over a log of `--verify-events` events of 100 tenants
//!    (written in SQL with the migration's own chain functions, as its
//!    backfill does), against a keyset read of the same columns that
//!    hashes nothing.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use projector::verify::{self, Options, Outcome};
use schema::store::EventStore;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::append::{append_op, checkpoint, Figures, Shape};
use crate::database::Scratch;
use crate::harness::{self, Measured, Window};
use crate::report::{thousands, Section};
use crate::Common;

const DEFAULT_WRITERS: [usize; 2] = [1, 64];
const DEFAULT_EVENTS: [usize; 2] = [1, 10];
const DEFAULT_VERIFY_EVENTS: i64 = 1_000_000;
const TENANTS: i64 = 100;
const STORE_CONNECTIONS: u32 = 2;

/// Issue 6's goals.
const GOAL_ADDED_COST: f64 = 0.05;
const GOAL_VERIFY_PER_S: f64 = 200_000.0;

const MIGRATION_0001: &str = include_str!("../../../../schema/migrations/0001_event_log.sql");
const MIGRATION_0016: &str =
    include_str!("../../../../schema/migrations/0016_chain_by_the_writer.sql");

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Concurrent writers, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_WRITERS)]
    writers: Vec<usize>,
    /// Events per append, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EVENTS)]
    events: Vec<usize>,
    /// Events in the log `verify` walks.
    #[arg(long, default_value_t = DEFAULT_VERIFY_EVENTS)]
    verify_events: i64,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            writers: DEFAULT_WRITERS.to_vec(),
            events: DEFAULT_EVENTS.to_vec(),
            verify_events: DEFAULT_VERIFY_EVENTS,
        }
    }
}

#[derive(Debug, Serialize)]
struct AppendLine {
    writers: usize,
    events_per_append: usize,
    with_chain: Figures,
    without_chain: Figures,
    /// 1 − with ÷ without, in events/s: the share of throughput the chain costs.
    added_cost: f64,
}

#[derive(Debug, Serialize)]
struct VerifyFigures {
    events: i64,
    tenants: i64,
    /// `verify` over every tenant.
    verify_s: f64,
    verify_per_s: f64,
    /// `verify --tenant` of one tenant (about events ÷ tenants).
    one_tenant_events: u64,
    one_tenant_per_s: f64,
    /// The same keyset pages read without hashing.
    read_s: f64,
    read_per_s: f64,
}

pub async fn run(common: &Common, args: &Args) -> anyhow::Result<Section> {
    ensure!(
        !args.writers.is_empty() && args.writers.iter().all(|&w| w > 0),
        "--writers must list numbers above 0"
    );
    ensure!(
        !args.events.is_empty() && args.events.iter().all(|&e| e > 0),
        "--events must list numbers above 0"
    );
    ensure!(args.verify_events > 0, "--verify-events must be above 0");
    let window = common.window()?;
    let url = common.database_url()?;

    let scratch = Scratch::create(url).await?;
    eprintln!("chain: appends in scratch database {}", scratch.name());
    let appends = tokio::select! {
        lines = measure_appends(&scratch, args, window) => lines,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    let appends = appends?;

    let scratch = Scratch::create(url).await?;
    eprintln!("chain: verify in scratch database {}", scratch.name());
    let verified = tokio::select! {
        figures = measure_verify(&scratch, args.verify_events) => figures,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    let verified = verified?;
    Ok(section(&appends, &verified, window))
}

/// `create or replace function jeanus_append …` as migration `sql` defines it.
fn append_function(sql: &str) -> anyhow::Result<String> {
    // The definition, not a `drop function jeanus_append(…)` before it.
    let at = sql
        .find("create function jeanus_append(")
        .or_else(|| sql.find("create or replace function jeanus_append("))
        .context("the migration defines no jeanus_append")?;
    let start = at
        + sql[at..]
            .find("function jeanus_append(")
            .context("the migration defines no jeanus_append")?;
    let end = sql[start..]
        .find("\n$$;")
        .context("jeanus_append has no end")?;
    Ok(format!(
        "create or replace {}",
        &sql[start..start + end + "\n$$;".len()]
    ))
}

/// 0001's `jeanus_append` (no chain) under the signature of 0016's, which
/// the event store calls: it ignores the writer's hashes and answers no
/// hash, so the writer, never learning a tip, computes none either.
fn unchained_append_function() -> anyhow::Result<String> {
    let signature = |sql: &str| -> anyhow::Result<String> {
        let start = sql
            .find("jeanus_append(")
            .context("the migration defines no jeanus_append")?;
        let end = sql[start..]
            .find("\nlanguage plpgsql")
            .context("jeanus_append is not in plpgsql")?;
        Ok(sql[start..start + end].to_owned())
    };
    let unchained = append_function(MIGRATION_0001)?;
    let old = signature(&unchained)?;
    Ok(unchained.replace(&old, &signature(&append_function(MIGRATION_0016)?)?))
}

async fn measure_appends(
    scratch: &Scratch,
    args: &Args,
    window: Window,
) -> anyhow::Result<Vec<AppendLine>> {
    let admin = scratch.pool(1).await?;
    // Rows written without the chain have no hash.
    sqlx::query("alter table events alter column hash drop not null")
        .execute(&admin)
        .await
        .context("failed to relax events.hash")?;
    let with = append_function(MIGRATION_0016)?;
    let without = unchained_append_function()?;

    let store_pool = scratch.pool(STORE_CONNECTIONS).await?;
    let store = EventStore::spawn(store_pool.clone());
    let shape = Arc::new(Shape::new());
    let mut lines = Vec::new();
    for &writers in &args.writers {
        for &events in &args.events {
            let mut measured: [Option<Measured>; 2] = [None, None];
            for chained in [true, false, false, true] {
                sqlx::raw_sql(if chained { &with } else { &without })
                    .execute(&admin)
                    .await
                    .context("failed to swap jeanus_append")?;
                checkpoint(&admin).await;
                let m = harness::run(writers, window, append_op(&store, &shape, events)).await?;
                eprintln!(
                    "chain: {writers:>2} writers × {events:>2} events, {}: {:>9} events/s  p99 {:>7.2} ms",
                    if chained { "with chain   " } else { "without chain" },
                    thousands(m.per_second() * events as f64),
                    m.quantile_ms(0.99)
                );
                let slot = &mut measured[usize::from(!chained)];
                match slot {
                    None => *slot = Some(m),
                    Some(earlier) => merge(earlier, m)?,
                }
            }
            let [Some(with_chain), Some(without_chain)] = measured else {
                anyhow::bail!("a measurement is missing");
            };
            let with_chain = Figures::of(&with_chain, events);
            let without_chain = Figures::of(&without_chain, events);
            lines.push(AppendLine {
                writers,
                events_per_append: events,
                added_cost: 1.0 - with_chain.events_per_s / without_chain.events_per_s,
                with_chain,
                without_chain,
            });
        }
    }
    drop(store);
    store_pool.close().await;
    admin.close().await;
    Ok(lines)
}

fn merge(into: &mut Measured, other: Measured) -> anyhow::Result<()> {
    into.operations += other.operations;
    into.window += other.window;
    into.latency
        .add(&other.latency)
        .context("failed to merge latency histograms")
}

async fn measure_verify(scratch: &Scratch, events: i64) -> anyhow::Result<VerifyFigures> {
    let pool = scratch.pool(2).await?;
    let started = Instant::now();
    write_log(&pool, events).await?;
    eprintln!(
        "chain: wrote {} events of {TENANTS} tenants in {:.1} s",
        thousands(events as f64),
        started.elapsed().as_secs_f64()
    );

    // The baseline first, which also warms the cache for both.
    let read_s = read_all(&pool).await?;
    let started = Instant::now();
    let outcome = verify::verify(&pool, &Options::default(), |p| {
        eprint!("\rchain: verify at position {} of {}", p.position, p.head);
    })
    .await?;
    let verify_s = started.elapsed().as_secs_f64();
    eprintln!();
    let Outcome::Intact(all) = outcome else {
        anyhow::bail!("the generated chain does not verify: {outcome:?}");
    };
    ensure!(
        all.events as i64 == events,
        "verify saw {} events",
        all.events
    );

    let tenant: Uuid = sqlx::query_scalar("select tenant_id from events where position = 1")
        .fetch_one(&pool)
        .await
        .context("failed to pick a tenant")?;
    let started = Instant::now();
    let one = verify::verify(
        &pool,
        &Options {
            tenant: Some(tenant),
            checkpoint: None,
        },
        |_| {},
    )
    .await?;
    let one_s = started.elapsed().as_secs_f64();
    let Outcome::Intact(one) = one else {
        anyhow::bail!("one tenant's chain does not verify: {one:?}");
    };
    pool.close().await;
    Ok(VerifyFigures {
        events,
        tenants: TENANTS,
        verify_s,
        verify_per_s: events as f64 / verify_s,
        one_tenant_events: one.events,
        one_tenant_per_s: one.events as f64 / one_s,
        read_s,
        read_per_s: events as f64 / read_s,
    })
}

/// `events` lead events of [`TENANTS`] tenants, interleaved, chained with
/// the migration's functions; then `vacuum analyze`.
async fn write_log(pool: &PgPool, events: i64) -> anyhow::Result<()> {
    let shape = Shape::new();
    let event = shape.event();
    sqlx::query(
        "insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                             event_type, schema_version, occurred_at, metadata, data, hash)
         select position, id, tenant_id, 'lead', id, 1, $3, $4, occurred_at, $5, $6,
                jeanus_chain(jeanus_event_canonical(position, id, $3, $4, 'lead', id, 1,
                                                    occurred_at, $5, $6),
                             '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                    over (partition by tenant_id order by position)
           from (select g as position, gen_random_uuid() as id,
                        ('00000000-0000-4000-8000-' || lpad((g % $2)::text, 12, '0'))::uuid
                            as tenant_id,
                        now() + make_interval(secs => g / 1000.0) as occurred_at
                   from generate_series(1, $1) g) s",
    )
    .bind(events)
    .bind(TENANTS)
    .bind(event.event_type)
    .bind(event.schema_version)
    .bind(sqlx::types::Json(&event.metadata))
    .bind(&event.data)
    .execute(pool)
    .await
    .context("failed to write the log")?;
    sqlx::query("update event_log_head set position = $1")
        .bind(events)
        .execute(pool)
        .await
        .context("failed to move the head")?;
    sqlx::query("vacuum analyze events")
        .execute(pool)
        .await
        .context("failed to vacuum")?;
    Ok(())
}

/// The columns of [`verify::COLUMNS`].
type Columns = (
    i64,
    Uuid,
    Uuid,
    String,
    i32,
    String,
    Uuid,
    i64,
    DateTime<Utc>,
    String,
    String,
    Vec<u8>,
);

/// Seconds to read every event in `verify`'s pages, hashing nothing.
async fn read_all(pool: &PgPool) -> anyhow::Result<f64> {
    let sql = format!(
        "select {} from events where position > $1 order by position limit $2",
        verify::COLUMNS
    );
    let started = Instant::now();
    let (mut after, mut total) = (0i64, 0u64);
    loop {
        let mut rows = sqlx::query_as::<_, Columns>(&sql)
            .bind(after)
            .bind(verify::PAGE_SIZE)
            .fetch(pool);
        let mut in_page = 0;
        while let Some((position, .., data, _)) = rows.try_next().await? {
            after = position;
            in_page += 1;
            total += data.len() as u64 % 2;
        }
        if in_page < verify::PAGE_SIZE {
            break;
        }
    }
    std::hint::black_box(total);
    Ok(started.elapsed().as_secs_f64())
}

fn section(lines: &[AppendLine], v: &VerifyFigures, window: Window) -> Section {
    let mut md = String::from("## chain: the hash chain at append, and `verify`\n\n");
    md.push_str(&format!(
        "Appends as in `append` (one shared `EventStore`, pool of {STORE_CONNECTIONS}, each \
         append to a new stream), with `jeanus_append` of migration 0016 (the chain, computed \
         by the writer) and of 0001 (none) swapped in turn on the same database: with, without, without, with, \
         {} s each after {} s warm-up; figures of both runs of a side together.\n\n\
         | writers | events/append | chain | events/s | p50 ms | p99 ms | max ms |\n\
         |---:|---:|---|---:|---:|---:|---:|\n",
        window.measure.as_secs_f64(),
        window.warmup.as_secs_f64()
    ));
    for line in lines {
        for (name, f) in [("with", &line.with_chain), ("without", &line.without_chain)] {
            md.push_str(&format!(
                "| {} | {} | {name} | {} | {:.2} | {:.2} | {:.2} |\n",
                line.writers,
                line.events_per_append,
                thousands(f.events_per_s),
                f.p50_ms,
                f.p99_ms,
                f.max_ms
            ));
        }
    }
    md.push_str("\nAdded cost (1 − with ÷ without, events/s; goal ≤ 5 %):\n\n");
    for line in lines {
        md.push_str(&format!(
            "- {} writers × {} events: {:+.1} % {}\n",
            line.writers,
            line.events_per_append,
            line.added_cost * 100.0,
            verdict(line.added_cost <= GOAL_ADDED_COST)
        ));
    }
    md.push_str(&format!(
        "\n`verify` over {} events of {} tenants: {:.2} s, **{} events/s** (goal ≥ {}: {}); \
         one tenant ({} events): {} events/s; the same pages read without hashing: {:.2} s, \
         {} events/s (verify at {:.2}× the bare read).\n",
        thousands(v.events as f64),
        v.tenants,
        v.verify_s,
        thousands(v.verify_per_s),
        thousands(GOAL_VERIFY_PER_S),
        verdict(v.verify_per_s >= GOAL_VERIFY_PER_S),
        thousands(v.one_tenant_events as f64),
        thousands(v.one_tenant_per_s),
        v.read_s,
        thousands(v.read_per_s),
        v.verify_per_s / v.read_per_s,
    ));
    Section {
        name: "chain",
        markdown: md,
        json: serde_json::json!({ "appends": lines, "verify": v }),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**not met**"
    }
}
