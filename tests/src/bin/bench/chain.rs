//! The `chain` scenario (issue 6): what the hash chain costs at append, and
//! how fast `verify` re-walks it.
//!
//! 1. Appends through one shared `EventStore`, as in `append`, with the
//!    chain (`jeanus_append` of migration 0018: the writer chains its
//!    batches, the database checks the head they chain from) and without it
//!    (0001's function under 0018's signature, swapped in with `create or
//!    replace`), on the same database, interleaved with, without, without,
//!    with for each line so that drift (autovacuum, other builds) falls on
//!    both sides.
//! 2. The same two functions' instructions per call in the database, for
//!    batches of `--instruction-appends` appends of `--events` events
//!    (`instructions`): what the chain adds there, without the drift that
//!    moves the timed figures by as much as the cost measured.
//! 3. `verify` over a log of `--verify-events` events of 100 tenants
//!    (written in SQL with the migration's own chain functions, as its
//!    backfill does), against `verify`'s own pages read without hashing
//!    (`projector::verify::Pages`: read ahead on several connections, each
//!    row decoded), and against the walk `verify` made before it read ahead
//!    (keyset pages on one connection, hashed as read) with and without its
//!    hashing. Each is measured `--verify-rounds` times, the order turned
//!    each round, and the median reported. `--skip-appends` and
//!    `--skip-instructions` leave out parts 1 and 2.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use projector::verify::{self, Options, Outcome, Pages, Row};
use schema::chain::{self, CanonicalEvent};
use schema::store::EventStore;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use jeanus_tests::chain::write_chained_log;

use crate::append::{append_op, checkpoint, Figures, Shape};
use crate::cpu::{self, Cpu};
use crate::database::Scratch;
use crate::harness::{self, Measured, Window};
use crate::instructions::{self, Cluster};
use crate::report::{thousands, Section};
use crate::Common;

const DEFAULT_WRITERS: [usize; 2] = [1, 64];
const DEFAULT_EVENTS: [usize; 2] = [1, 10];
const DEFAULT_VERIFY_EVENTS: i64 = 1_000_000;
const DEFAULT_VERIFY_ROUNDS: usize = 3;
const DEFAULT_APPEND_ROUNDS: usize = 3;
const DEFAULT_INSTRUCTION_APPENDS: [usize; 2] = [1, 32];
const TENANTS: i64 = 100;
const STORE_CONNECTIONS: u32 = 2;

/// Issue 6's goals.
const GOAL_ADDED_COST: f64 = 0.05;
const GOAL_VERIFY_PER_S: f64 = 200_000.0;

const MIGRATION_0001: &str = include_str!("../../../../schema/migrations/0001_event_log.sql");
const MIGRATION_0018: &str =
    include_str!("../../../../schema/migrations/0018_chain_answered_as_decided.sql");

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
    /// Times `verify` and each read are measured.
    #[arg(long, default_value_t = DEFAULT_VERIFY_ROUNDS)]
    verify_rounds: usize,
    /// Rounds of (with, without, without, with) for each line of appends:
    /// from run to run a side moves by a few per cent, as much as the
    /// cost measured, so the verdict takes the rounds pooled.
    #[arg(long, default_value_t = DEFAULT_APPEND_ROUNDS)]
    append_rounds: usize,
    /// Do not time appends (instructions are still counted, unless
    /// `--skip-instructions`).
    #[arg(long)]
    skip_appends: bool,
    /// Appends per batch for the instruction counts, comma-separated (with
    /// each of `--events` events).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_INSTRUCTION_APPENDS)]
    instruction_appends: Vec<usize>,
    #[command(flatten)]
    instructions: instructions::Options,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            writers: DEFAULT_WRITERS.to_vec(),
            events: DEFAULT_EVENTS.to_vec(),
            verify_events: DEFAULT_VERIFY_EVENTS,
            verify_rounds: DEFAULT_VERIFY_ROUNDS,
            append_rounds: DEFAULT_APPEND_ROUNDS,
            skip_appends: false,
            instruction_appends: DEFAULT_INSTRUCTION_APPENDS.to_vec(),
            instructions: instructions::Options::default(),
        }
    }
}

#[derive(Debug, Serialize)]
struct AppendLine {
    writers: usize,
    events_per_append: usize,
    with_chain: Figures,
    without_chain: Figures,
    /// 1 − with ÷ without, in events/s: the share of throughput the chain
    /// costs, of every round pooled.
    added_cost: f64,
    /// The same, round by round.
    round_added_costs: Vec<f64>,
    /// CPU time per event (this process and PostgreSQL), µs, every round
    /// pooled.
    with_chain_cpu_us: CpuPerEvent,
    without_chain_cpu_us: CpuPerEvent,
    /// with ÷ without − 1, in CPU time per event: what the chain adds to
    /// the work of an append, of every round pooled.
    added_cpu: f64,
    /// The same, round by round.
    round_added_cpus: Vec<f64>,
}

/// CPU time per event, µs.
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuPerEvent {
    /// This process: the writers and the store's writer task (the
    /// chain's hashing).
    here: f64,
    /// PostgreSQL: the store's backends and the server's background
    /// processes.
    postgres: f64,
    total: f64,
}

impl CpuPerEvent {
    fn of(cpu: &Cpu, events: u64) -> Self {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / events.max(1) as f64;
        Self {
            here: per(cpu.here),
            postgres: per(cpu.postgres),
            total: per(cpu.total()),
        }
    }
}

/// What one side of a line measured: the appends and the CPU they took.
#[derive(Default)]
struct Side {
    measured: Option<Measured>,
    cpu: Cpu,
}

impl Side {
    fn add(&mut self, m: Measured, cpu: &Cpu) -> anyhow::Result<()> {
        self.cpu.add(cpu);
        match &mut self.measured {
            None => self.measured = Some(m),
            Some(earlier) => merge(earlier, m)?,
        }
        Ok(())
    }

    fn merge(&mut self, other: Side) -> anyhow::Result<()> {
        match other.measured {
            Some(m) => self.add(m, &other.cpu),
            None => Ok(()),
        }
    }

    /// Events/s and CPU per event.
    fn rates(&self, events_per_append: usize) -> anyhow::Result<(f64, CpuPerEvent)> {
        let m = self.measured.as_ref().context("a measurement is missing")?;
        let events = m.operations * events_per_append as u64;
        Ok((
            m.per_second() * events_per_append as f64,
            CpuPerEvent::of(&self.cpu, events),
        ))
    }
}

/// What the chain adds, side `[with, without]` against each other.
struct Added {
    /// 1 − with ÷ without, in events/s.
    throughput: f64,
    /// with ÷ without − 1, in CPU time per event.
    cpu: f64,
    with_cpu_us: CpuPerEvent,
    without_cpu_us: CpuPerEvent,
}

impl Added {
    fn of([with, without]: &[Side; 2], events_per_append: usize) -> anyhow::Result<Self> {
        let (with_rate, with_cpu_us) = with.rates(events_per_append)?;
        let (without_rate, without_cpu_us) = without.rates(events_per_append)?;
        Ok(Self {
            throughput: 1.0 - with_rate / without_rate,
            cpu: with_cpu_us.total / without_cpu_us.total - 1.0,
            with_cpu_us,
            without_cpu_us,
        })
    }
}

#[derive(Debug, Serialize)]
struct VerifyFigures {
    events: i64,
    tenants: i64,
    /// Pages read at once (`projector::verify::READERS`).
    readers: usize,
    /// `verify` over every tenant: the median round, and every round.
    verify_s: f64,
    verify_per_s: f64,
    verify_rounds_s: Vec<f64>,
    /// `verify --tenant` of one tenant (about events ÷ tenants), once.
    one_tenant_events: u64,
    one_tenant_per_s: f64,
    /// `verify`'s pages read and decoded without hashing.
    read_s: f64,
    read_per_s: f64,
    read_rounds_s: Vec<f64>,
    /// Before: keyset pages on one connection, hashed as read.
    keyset_walk_s: f64,
    keyset_walk_per_s: f64,
    keyset_walk_rounds_s: Vec<f64>,
    /// Keyset pages of the same columns on one connection, without hashing.
    keyset_read_s: f64,
    keyset_read_per_s: f64,
    keyset_read_rounds_s: Vec<f64>,
    /// The load average (1 min) before and after the measurements.
    load_before: f64,
    load_after: f64,
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
    ensure!(args.verify_rounds > 0, "--verify-rounds must be above 0");
    ensure!(args.append_rounds > 0, "--append-rounds must be above 0");
    let window = common.window()?;
    let url = common.database_url()?;

    let (appends, work_us) = if args.skip_appends {
        (Vec::new(), f64::NAN)
    } else {
        let scratch = Scratch::create(url).await?;
        eprintln!("chain: appends in scratch database {}", scratch.name());
        let appends = tokio::select! {
            lines = measure_appends(&scratch, args, window) => lines,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        scratch.drop().await;
        appends?
    };

    let counted = match args.instructions.cluster().await? {
        Some(cluster) => count_instructions(&cluster, args).await?,
        None => Vec::new(),
    };

    let scratch = Scratch::create(url).await?;
    eprintln!("chain: verify in scratch database {}", scratch.name());
    let verified = tokio::select! {
        figures = measure_verify(&scratch, args.verify_events, args.verify_rounds) => figures,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    let verified = verified?;
    Ok(section(&appends, work_us, &counted, &verified, window))
}

/// A batch whose instructions are counted: `appends` appends of `events`
/// events each, each to a new stream of one tenant.
#[derive(Debug, Clone, Copy, Serialize)]
struct Batch {
    appends: usize,
    events: usize,
}

/// Calls the set-up of each run makes before it is measured, so that the
/// log is not empty.
const WARM_UP_CALLS: usize = 20;
/// Events the measured calls hold, at least: calls differ in which B-tree
/// pages they split, so one call is not enough.
const EVENTS_COUNTED: usize = 200;
/// Calls measured, at least.
const CALLS_COUNTED: usize = 20;

impl Batch {
    fn events_per_call(&self) -> usize {
        self.appends * self.events
    }

    /// Calls `first..first + n` of `jeanus_append` for batches of this
    /// shape, one a line, as the event store makes them: the batch as JSON
    /// text (the events of `append`'s scenario, each append to a new
    /// stream), the head the log will be at (each call before appended one
    /// batch), the tenant's tip and a hash for each event, so that a
    /// function that takes the writer's hashes takes them. Each answers
    /// how many appends it appended and how many with the writer's hashes.
    fn calls(&self, shape: &Shape, first: usize, n: usize) -> anyhow::Result<String> {
        let mut sql = String::from(
            "prepare append(jsonb, bigint, uuid[], bytea[], bytea[]) as \
             select count(*) as appended, count(*) filter (where writer_chained) as chained \
             from jeanus_append($1, $2, $3, $4, $5);\n",
        );
        let tenant = shape.stream().tenant_id;
        for call in first..first + n {
            let batch: Vec<_> = (0..self.appends)
                .map(|_| {
                    let stream = shape.stream();
                    let events: Vec<_> = (0..self.events).map(|_| shape.event()).collect();
                    serde_json::json!({
                        "tenant_id": stream.tenant_id, "stream_type": stream.stream_type,
                        "stream_id": stream.stream_id, "expected": 0, "events": events,
                    })
                })
                .collect();
            let batch = serde_json::to_string(&batch)?.replace('\'', "''");
            sql.push_str(&format!(
                "execute append('{batch}', {head}, array['{tenant}'::uuid], \
                 array['\\x{genesis}'::bytea], array_fill('\\x{hash}'::bytea, array[{total}]));\n",
                head = call * self.events_per_call(),
                genesis = "00".repeat(32),
                hash = "ab".repeat(32),
                total = self.events_per_call(),
            ));
        }
        Ok(sql)
    }
}

/// One batch's instructions in the database, with the chain and without.
#[derive(Debug, Serialize)]
struct Counted {
    batch: Batch,
    with_chain: f64,
    without_chain: f64,
}

impl Counted {
    /// with ÷ without − 1.
    fn added(&self) -> f64 {
        self.with_chain / self.without_chain - 1.0
    }
}

/// Instructions per call of `jeanus_append` with the chain and without, for
/// each batch of `--instruction-appends` appends of `--events` events.
async fn count_instructions(cluster: &Cluster, args: &Args) -> anyhow::Result<Vec<Counted>> {
    let (with, without) = (
        append_function(MIGRATION_0018)?,
        unchained_append_function()?,
    );
    let shape = Shape::new();
    let mut counted = Vec::new();
    for &appends in &args.instruction_appends {
        for &events in &args.events {
            let batch = Batch { appends, events };
            let calls = |first, n| batch.calls(&shape, first, n);
            let measured = CALLS_COUNTED.max(EVENTS_COUNTED.div_ceil(batch.events_per_call()));
            let warm_up = calls(0, WARM_UP_CALLS)?;
            let mut per_call = [0.0; 2];
            for (figure, (function, takes_hashes)) in
                per_call.iter_mut().zip([(&with, true), (&without, false)])
            {
                let setup = format!("{function}\n{warm_up}");
                let chained = if takes_hashes { appends } else { 0 };
                let check = |output: &str, n: usize| {
                    let (all, taken) = (
                        instructions::answered(output, "appended", appends),
                        instructions::answered(output, "chained", chained),
                    );
                    ensure!(
                        all == n && taken == n,
                        "of {n} calls, {all} appended {appends} appends and {taken} took the \
                         writer's hashes for {chained}: {}",
                        instructions::first_error(output)
                    );
                    Ok(())
                };
                *figure = cluster
                    .per_call(&setup, WARM_UP_CALLS, measured, calls, check)
                    .await?;
            }
            let [with_chain, without_chain] = per_call;
            let line = Counted {
                batch,
                with_chain,
                without_chain,
            };
            eprintln!(
                "chain: instructions per call of {appends} appends × {events} events: \
                 {} with the chain, {} without: {:+.1} %",
                thousands(with_chain),
                thousands(without_chain),
                line.added() * 100.0
            );
            counted.push(line);
        }
    }
    Ok(counted)
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

/// 0001's `jeanus_append` (no chain) under the signature of 0018's, which
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
    Ok(unchained.replace(&old, &signature(&append_function(MIGRATION_0018)?)?))
}

/// Events the writer's chain work is timed over, per round.
const WORK_EVENTS: usize = 100_000;
const WORK_ROUNDS: usize = 5;

/// The chain's work in the writer alone, in CPU µs per event (the median
/// of [`WORK_ROUNDS`]): each event's canonical pieces, printed on its
/// caller's task, and its link (SHA-256) on the writer's, for the events
/// `append` writes. Without the chain the store does neither.
fn chain_work_us(shape: &Shape) -> anyhow::Result<f64> {
    let events: Vec<_> = (0..WORK_EVENTS).map(|_| shape.event()).collect();
    let stream = shape.stream();
    let mut rounds = Vec::with_capacity(WORK_ROUNDS);
    for _ in 0..WORK_ROUNDS {
        let before = cpu::this_thread().context("no CPU clock for this thread")?;
        let mut prev = chain::GENESIS;
        for (i, event) in (1..).zip(&events) {
            let pieces = chain::Unplaced::of(stream.stream_type, stream.stream_id, event)
                .context("the bench's event has no certain jsonb text")?;
            prev = pieces.link(&prev, i, 1);
        }
        std::hint::black_box(prev);
        let used = cpu::this_thread()
            .context("no CPU clock for this thread")?
            .saturating_sub(before);
        rounds.push(used.as_secs_f64() * 1e6 / WORK_EVENTS as f64);
    }
    Ok(median(&rounds))
}

async fn measure_appends(
    scratch: &Scratch,
    args: &Args,
    window: Window,
) -> anyhow::Result<(Vec<AppendLine>, f64)> {
    let admin = scratch.pool(1).await?;
    // Rows written without the chain have no hash.
    sqlx::query("alter table events alter column hash drop not null")
        .execute(&admin)
        .await
        .context("failed to relax events.hash")?;
    let with = append_function(MIGRATION_0018)?;
    let without = unchained_append_function()?;

    let store_pool = scratch.pool(STORE_CONNECTIONS).await?;
    let store = EventStore::spawn(store_pool.clone());
    let shape = Arc::new(Shape::new());
    let work_us = chain_work_us(&shape)?;
    eprintln!("chain: the writer's chain work alone: {work_us:.2} µs of CPU per event");
    let mut lines = Vec::new();
    for &writers in &args.writers {
        for &events in &args.events {
            let mut sides: [Side; 2] = Default::default();
            let mut round_added_costs = Vec::with_capacity(args.append_rounds);
            let mut round_added_cpus = Vec::with_capacity(args.append_rounds);
            for _ in 0..args.append_rounds {
                let mut round: [Side; 2] = Default::default();
                for chained in [true, false, false, true] {
                    sqlx::raw_sql(if chained { &with } else { &without })
                        .execute(&admin)
                        .await
                        .context("failed to swap jeanus_append")?;
                    checkpoint(&admin).await;
                    let chained_before = store.batches_chained_by_writer();
                    let (m, cpu) = cpu::during(
                        &admin,
                        None,
                        window,
                        harness::run(writers, window, append_op(&store, &shape, events)),
                    )
                    .await?;
                    let per_event = CpuPerEvent::of(&cpu, m.operations * events as u64);
                    eprintln!(
                        "chain: {writers:>2} writers × {events:>2} events, {}: {:>9} events/s  \
                         p99 {:>7.2} ms  CPU/event {:>6.1} µs ({:.1} here, {:.1} PostgreSQL)  \
                         batches chained by the writer: {}",
                        if chained {
                            "with chain   "
                        } else {
                            "without chain"
                        },
                        thousands(m.per_second() * events as f64),
                        m.quantile_ms(0.99),
                        per_event.total,
                        per_event.here,
                        per_event.postgres,
                        store.batches_chained_by_writer() - chained_before,
                    );
                    round[usize::from(!chained)].add(m, &cpu)?;
                }
                let added = Added::of(&round, events)?;
                round_added_costs.push(added.throughput);
                round_added_cpus.push(added.cpu);
                for (side, measured) in sides.iter_mut().zip(round) {
                    side.merge(measured)?;
                }
            }
            let added = Added::of(&sides, events)?;
            let [Some(with_chain), Some(without_chain)] = sides.map(|side| side.measured) else {
                anyhow::bail!("a measurement is missing");
            };
            lines.push(AppendLine {
                writers,
                events_per_append: events,
                with_chain: Figures::of(&with_chain, events),
                without_chain: Figures::of(&without_chain, events),
                added_cost: added.throughput,
                round_added_costs,
                with_chain_cpu_us: added.with_cpu_us,
                without_chain_cpu_us: added.without_cpu_us,
                added_cpu: added.cpu,
                round_added_cpus,
            });
        }
    }
    drop(store);
    store_pool.close().await;
    admin.close().await;
    Ok((lines, work_us))
}

fn merge(into: &mut Measured, other: Measured) -> anyhow::Result<()> {
    into.operations += other.operations;
    into.window += other.window;
    into.latency
        .add(&other.latency)
        .context("failed to merge latency histograms")
}

async fn measure_verify(
    scratch: &Scratch,
    events: i64,
    rounds: usize,
) -> anyhow::Result<VerifyFigures> {
    let pool = scratch.pool(verify::READERS as u32 + 1).await?;
    let started = Instant::now();
    write_log(&pool, events).await?;
    eprintln!(
        "chain: wrote {} events of {TENANTS} tenants in {:.1} s",
        thousands(events as f64),
        started.elapsed().as_secs_f64()
    );

    // One read first to warm the cache for all.
    read_pages(&pool, events).await?;
    let load_before = load_average();
    let mut rounds_s: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        for walk in (0..4).map(|w| (w + round) % 4) {
            rounds_s[walk].push(match walk {
                0 => verify_all(&pool, events).await?,
                1 => read_pages(&pool, events).await?,
                2 => walk_keyset(&pool, events, true).await?,
                _ => walk_keyset(&pool, events, false).await?,
            });
        }
        let rate = |walk: usize| thousands(events as f64 / rounds_s[walk][round]);
        eprintln!(
            "chain: round {}: verify {} events/s, its pages read {}; before: keyset walk {}, \
             keyset read {}",
            round + 1,
            rate(0),
            rate(1),
            rate(2),
            rate(3),
        );
    }
    let [verify_rounds_s, read_rounds_s, keyset_walk_rounds_s, keyset_read_rounds_s] = rounds_s;

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
    let load_after = load_average();
    pool.close().await;
    let (verify_s, read_s, keyset_walk_s, keyset_read_s) = (
        median(&verify_rounds_s),
        median(&read_rounds_s),
        median(&keyset_walk_rounds_s),
        median(&keyset_read_rounds_s),
    );
    Ok(VerifyFigures {
        events,
        tenants: TENANTS,
        readers: verify::READERS,
        verify_s,
        verify_per_s: events as f64 / verify_s,
        verify_rounds_s,
        one_tenant_events: one.events,
        one_tenant_per_s: one.events as f64 / one_s,
        read_s,
        read_per_s: events as f64 / read_s,
        read_rounds_s,
        keyset_walk_s,
        keyset_walk_per_s: events as f64 / keyset_walk_s,
        keyset_walk_rounds_s,
        keyset_read_s,
        keyset_read_per_s: events as f64 / keyset_read_s,
        keyset_read_rounds_s,
        load_before,
        load_after,
    })
}

/// Seconds for `verify` over every tenant, which must find all `events`.
async fn verify_all(pool: &PgPool, events: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let outcome = verify::verify(pool, &Options::default(), |p| {
        eprint!("\rchain: verify at position {} of {}", p.position, p.head);
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!();
    let Outcome::Intact(all) = outcome else {
        anyhow::bail!("the generated chain does not verify: {outcome:?}");
    };
    ensure!(
        all.events as i64 == events,
        "verify saw {} events",
        all.events
    );
    Ok(seconds)
}

/// Seconds to read and decode every event in `verify`'s pages, hashing
/// nothing.
async fn read_pages(pool: &PgPool, events: i64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut pages = Pages::new(pool, None, 0, events);
    let (mut seen, mut total) = (0i64, 0u64);
    while let Some(page) = pages.next().await? {
        for row in &page {
            let row = Row::decode(row)?;
            seen += 1;
            total += (row.event.data.len() + row.event.metadata.len()) as u64 % 2;
        }
    }
    std::hint::black_box(total);
    ensure!(seen == events, "the pages held {seen} events");
    Ok(started.elapsed().as_secs_f64())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The 1-minute load average, or NaN where `/proc/loadavg` is not.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `events` lead events of [`TENANTS`] tenants, interleaved, chained with
/// the migration's functions.
async fn write_log(pool: &PgPool, events: i64) -> anyhow::Result<()> {
    let event = Shape::new().event();
    write_chained_log(
        pool,
        events,
        TENANTS,
        event.event_type,
        event.schema_version,
        &serde_json::to_value(&event.metadata)?,
        &event.data,
    )
    .await
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

/// Seconds for the walk `verify` made before it read ahead: keyset pages
/// of [`verify::PAGE_SIZE`] on one connection, each row decoded into owned
/// columns and, if `hash`, hashed as it arrives (without the checks of
/// density, which cost nothing).
async fn walk_keyset(pool: &PgPool, events: i64, hash: bool) -> anyhow::Result<f64> {
    let sql = format!(
        "select {} from events where position > $1 order by position limit $2",
        verify::COLUMNS
    );
    let started = Instant::now();
    let (mut after, mut total) = (0i64, 0u64);
    let mut prev: HashMap<Uuid, chain::Hash> = HashMap::new();
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let mut rows = sqlx::query_as::<_, Columns>(&sql)
            .bind(after)
            .bind(verify::PAGE_SIZE)
            .fetch(pool);
        let mut in_page = 0;
        while let Some(row) = rows.try_next().await? {
            let (position, id, tenant_id, event_type, schema_version, stream_type) =
                (row.0, row.1, row.2, &row.3, row.4, &row.5);
            let (stream_id, stream_version, occurred_at, metadata, data, stored) =
                (row.6, row.7, row.8, &row.9, &row.10, &row.11);
            after = position;
            in_page += 1;
            total += data.len() as u64 % 2;
            if !hash {
                continue;
            }
            let event = CanonicalEvent {
                position,
                id,
                event_type,
                schema_version,
                stream_type,
                stream_id,
                stream_version,
                occurred_at,
                metadata,
                data,
            };
            chain::write_canonical(&event, &mut buffer);
            let link = chain::next_hash(prev.get(&tenant_id).unwrap_or(&chain::GENESIS), &buffer);
            ensure!(stored[..] == link[..], "the chain breaks at {position}");
            prev.insert(tenant_id, link);
        }
        if in_page < verify::PAGE_SIZE {
            break;
        }
    }
    std::hint::black_box(total);
    let seconds = started.elapsed().as_secs_f64();
    ensure!(after == events, "the keyset walk ended at {after}");
    Ok(seconds)
}

fn section(
    lines: &[AppendLine],
    work_us: f64,
    counted: &[Counted],
    v: &VerifyFigures,
    window: Window,
) -> Section {
    let mut md = String::from("## chain: the hash chain at append, and `verify`\n\n");
    if !lines.is_empty() {
        append_lines(&mut md, lines, work_us, window);
    }
    if !counted.is_empty() {
        instruction_lines(&mut md, counted, lines, work_us);
    }
    md.push_str(&format!(
        "`verify` over {} events of {} tenants, median of {} rounds ({} cores, load average \
         {:.2} before, {:.2} after):\n\n\
         | walk | s | events/s |\n|---|---:|---:|\n\
         | `verify`, every tenant | {:.2} | **{}** |\n\
         | its pages ({} read at once), decoded, not hashed | {:.2} | {} |\n\
         | before: keyset pages on one connection, hashed as read | {:.2} | {} |\n\
         | before: keyset pages on one connection, not hashed | {:.2} | {} |\n\
         | `verify --tenant`, one tenant ({} events), once | | {} |\n\n\
         Goal ≥ {} events/s: {}; verify at {:.2}× its pages' bare read, {:.2}× the walk \
         before.\n",
        thousands(v.events as f64),
        v.tenants,
        v.verify_rounds_s.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        v.load_before,
        v.load_after,
        v.verify_s,
        thousands(v.verify_per_s),
        v.readers,
        v.read_s,
        thousands(v.read_per_s),
        v.keyset_walk_s,
        thousands(v.keyset_walk_per_s),
        v.keyset_read_s,
        thousands(v.keyset_read_per_s),
        thousands(v.one_tenant_events as f64),
        thousands(v.one_tenant_per_s),
        thousands(GOAL_VERIFY_PER_S),
        verdict(v.verify_per_s >= GOAL_VERIFY_PER_S),
        v.verify_per_s / v.read_per_s,
        v.verify_per_s / v.keyset_walk_per_s,
    ));
    Section {
        name: "chain",
        markdown: md,
        json: serde_json::json!({
            "appends": lines,
            "chain_work_us_per_event": work_us,
            "instructions": counted,
            "verify": v,
        }),
    }
}

fn append_lines(md: &mut String, lines: &[AppendLine], work_us: f64, window: Window) {
    md.push_str(&format!(
        "Appends as in `append` (one shared `EventStore`, pool of {STORE_CONNECTIONS}, each \
         append to a new stream), with `jeanus_append` of migration 0018 (the chain, computed \
         by the writer) and of 0001 (none) swapped in turn on the same database: {} rounds of with, \
         without, without, with, {} s each after {} s warm-up; figures of every run of a side \
         together. CPU time is this process's (the writers, the store's writer task) and \
         PostgreSQL's (the store's backends, the server's background processes) over the \
         measured spans, per event.\n\n\
         | writers | events/append | chain | events/s | p50 ms | p99 ms | max ms | CPU µs/event | here | PostgreSQL |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        lines.first().map_or(0, |l| l.round_added_costs.len()),
        window.measure.as_secs_f64(),
        window.warmup.as_secs_f64()
    ));
    for line in lines {
        for (name, f, cpu) in [
            ("with", &line.with_chain, &line.with_chain_cpu_us),
            ("without", &line.without_chain, &line.without_chain_cpu_us),
        ] {
            md.push_str(&format!(
                "| {} | {} | {name} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |\n",
                line.writers,
                line.events_per_append,
                thousands(f.events_per_s),
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                cpu.total,
                cpu.here,
                cpu.postgres,
            ));
        }
    }
    md.push_str(
        "\nAdded cost, every round pooled, and round by round: in CPU time per event (with ÷ \
         without − 1), and in throughput (1 − with ÷ without, events/s). Rounds of one line \
         spread by as much as the goal (5 %), so the goal's verdict is taken from the \
         instruction counts below (unless `--skip-instructions`):\n\n",
    );
    let percents = |costs: &[f64]| -> String {
        costs
            .iter()
            .map(|c| format!("{:+.1} %", c * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for line in lines {
        md.push_str(&format!(
            "- {} writers × {} events: CPU {:+.1} % (rounds: {}); throughput {:+.1} % \
             (rounds: {}); the writer's chain work alone: {:.1} % of the CPU per event \
             without the chain\n",
            line.writers,
            line.events_per_append,
            line.added_cpu * 100.0,
            percents(&line.round_added_cpus),
            line.added_cost * 100.0,
            percents(&line.round_added_costs),
            work_us / line.without_chain_cpu_us.total * 100.0,
        ));
    }
    md.push_str(&format!(
        "\nThe writer's chain work alone (each event's canonical pieces and its SHA-256 \
         link, {WORK_EVENTS} events on one thread, median of {WORK_ROUNDS}): {work_us:.2} µs of \
         CPU per event.\n\n"
    ));
}

fn instruction_lines(md: &mut String, counted: &[Counted], lines: &[AppendLine], work_us: f64) {
    md.push_str(
        "Instructions per call of `jeanus_append` in the database (`valgrind --tool=callgrind`, \
         one backend in single-user mode, each call its own transaction; the event store's \
         call, prepared, with the batch as JSON text of `append`'s events and a prediction \
         that holds; the difference between a run of few calls and one of many, so start-up \
         cancels out), with the chain and without:\n\n\
         | appends × events | with | without | added |\n|---|---:|---:|---:|\n",
    );
    for c in counted {
        md.push_str(&format!(
            "| {} × {} | {} | {} | {:+.1} % |\n",
            c.batch.appends,
            c.batch.events,
            thousands(c.with_chain),
            thousands(c.without_chain),
            c.added() * 100.0
        ));
    }
    md.push_str(
        "\nThe chain's whole added cost, from counts that do not drift: the database's added \
         instructions, weighted by PostgreSQL's share of the CPU per event without the chain, \
         plus the writer's chain work alone over that CPU per event (goal ≤ 5 %):\n\n",
    );
    for line in lines {
        // A batch of one append stands for one writer's batches, a batch of
        // the most appends counted for many writers'.
        let appends = if line.writers == 1 {
            counted.iter().map(|c| c.batch.appends).min()
        } else {
            counted.iter().map(|c| c.batch.appends).max()
        };
        let Some(c) = counted
            .iter()
            .find(|c| Some(c.batch.appends) == appends && c.batch.events == line.events_per_append)
        else {
            continue;
        };
        let cpu = &line.without_chain_cpu_us;
        let database = c.added() * cpu.postgres / cpu.total;
        let writer = work_us / cpu.total;
        md.push_str(&format!(
            "- {} writers × {} events (counted as {} × {}): {:+.1} % (database {:+.1} % × \
             {:.2} of the CPU, writer {:.1} %) {}\n",
            line.writers,
            line.events_per_append,
            c.batch.appends,
            c.batch.events,
            (database + writer) * 100.0,
            c.added() * 100.0,
            cpu.postgres / cpu.total,
            writer * 100.0,
            verdict(database + writer <= GOAL_ADDED_COST),
        ));
    }
    md.push('\n');
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**not met**"
    }
}
