//! The `append` scenario (issue 2): appends through one shared `EventStore`
//! (one writer task, group commit), each to a new stream, against the same
//! rows written by plain autocommit INSERTs at the same concurrency.

use std::sync::Arc;

use anyhow::{anyhow, ensure, Context};
use chrono::Utc;
use schema::envelope::{Metadata, NewEvent};
use schema::events::{stream_types, EventPayload, LeadCreated, LeadStage};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::database::{self, Scratch};
use crate::harness::{self, Measured, Window};
use crate::report::{thousands, Section};
use crate::Common;

const DEFAULT_WRITERS: [usize; 3] = [1, 16, 64];
const DEFAULT_EVENTS: [usize; 2] = [1, 10];
/// The api's pool is shared with its reads; the store's writer holds one
/// connection at a time (a failed batch's per-append retries use the same
/// one, sequentially), so two is enough to never wait on the pool.
const DEFAULT_STORE_CONNECTIONS: u32 = 2;
/// Most connections the baseline opens, whatever the concurrency.
const MAX_PLAIN_CONNECTIONS: usize = 64;
/// Connections left free on the server for the store, this tool and others.
const SPARE_CONNECTIONS: i64 = 8;

/// Issue 2's goals, checked against the line with this many writers.
const GOAL_WRITERS: usize = 64;
const GOAL_RATIO: f64 = 1.0;
const GOAL_P99_MS: f64 = 20.0;
const GOAL_BATCH_EVENTS_PER_S: f64 = 20_000.0;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Concurrent writers, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_WRITERS)]
    writers: Vec<usize>,
    /// Events per append, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EVENTS)]
    events: Vec<usize>,
    /// Connections in the event store's pool.
    #[arg(long, default_value_t = DEFAULT_STORE_CONNECTIONS)]
    store_connections: u32,
    /// SQL to run on the scratch database after the migrations: to measure a
    /// variant of `jeanus_append` (`create or replace function …`) or of a setting.
    #[arg(long, value_name = "FILE")]
    setup_sql: Option<std::path::PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            writers: DEFAULT_WRITERS.to_vec(),
            events: DEFAULT_EVENTS.to_vec(),
            store_connections: DEFAULT_STORE_CONNECTIONS,
            setup_sql: None,
        }
    }
}

/// One line of results: ours and the baseline at the same shape.
#[derive(Debug, Serialize)]
struct Line {
    writers: usize,
    events_per_append: usize,
    /// The baseline's pool size (`writers`, unless the server has fewer to spare).
    plain_connections: usize,
    event_store: Figures,
    plain_insert: Figures,
}

#[derive(Debug, Serialize)]
pub struct Figures {
    pub appends: u64,
    pub appends_per_s: f64,
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Figures {
    pub fn of(measured: &Measured, events_per_append: usize) -> Self {
        Self {
            appends: measured.operations,
            appends_per_s: measured.per_second(),
            events_per_s: measured.per_second() * events_per_append as f64,
            p50_ms: measured.quantile_ms(0.50),
            p99_ms: measured.quantile_ms(0.99),
            max_ms: measured.max_ms(),
        }
    }
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
    ensure!(
        args.store_connections > 0,
        "--store-connections must be above 0"
    );
    let window = common.window()?;
    let scratch = Scratch::create(common.database_url()?).await?;
    eprintln!("append: measuring in scratch database {}", scratch.name());

    let measured = tokio::select! {
        lines = measure(&scratch, args, window) => lines,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    scratch.drop().await;
    let lines = measured?;
    Ok(section(&lines, args, window))
}

async fn measure(scratch: &Scratch, args: &Args, window: Window) -> anyhow::Result<Vec<Line>> {
    let admin = scratch.pool(1).await?;
    if let Some(path) = &args.setup_sql {
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read --setup-sql {}", path.display()))?;
        sqlx::raw_sql(&sql)
            .execute(&admin)
            .await
            .with_context(|| format!("failed to run --setup-sql {}", path.display()))?;
    }
    create_plain_table(&admin).await?;
    let spare = spare_connections(&admin).await?;

    let store_pool = scratch.pool(args.store_connections).await?;
    let store = EventStore::spawn(store_pool.clone());
    let shape = Arc::new(Shape::new());

    let mut lines = Vec::new();
    for &writers in &args.writers {
        let plain_connections = writers.min(MAX_PLAIN_CONNECTIONS).min(spare);
        let plain_pool = scratch.pool(plain_connections as u32).await?;
        for &events in &args.events {
            checkpoint(&admin).await;
            let ours = harness::run(writers, window, append_op(&store, &shape, events)).await?;
            let ours = Figures::of(&ours, events);
            eprintln!(
                "append: {writers:>2} writers × {events:>2} events: event store  {:>9} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                thousands(ours.events_per_s),
                ours.p50_ms,
                ours.p99_ms
            );

            checkpoint(&admin).await;
            let plain =
                harness::run(writers, window, insert_op(&plain_pool, &shape, events)).await?;
            let plain = Figures::of(&plain, events);
            eprintln!(
                "append: {writers:>2} writers × {events:>2} events: plain INSERT {:>9} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                thousands(plain.events_per_s),
                plain.p50_ms,
                plain.p99_ms
            );

            lines.push(Line {
                writers,
                events_per_append: events,
                plain_connections,
                event_store: ours,
                plain_insert: plain,
            });
        }
        plain_pool.close().await;
    }

    drop(store);
    store_pool.close().await;
    admin.close().await;
    Ok(lines)
}

/// What every benchmark event looks like: a lead as the api would create it.
pub struct Shape {
    tenant_id: Uuid,
    metadata: Metadata,
    data: serde_json::Value,
    event_type: &'static str,
    schema_version: i32,
}

impl Shape {
    pub fn new() -> Self {
        let payload = EventPayload::from(LeadCreated {
            name: "Ada Lovelace".into(),
            company: Some("Analytical Engines Ltd".into()),
            email: Some("ada@example.com".into()),
            phone: Some("+44 20 7946 0000".into()),
            stage: LeadStage::New,
            estimated_value: Some(1_250_000),
            probability: Some(40),
            source: "website".into(),
            notes: Some("Asked for a demo of the difference engine.".into()),
        });
        Self {
            tenant_id: Uuid::now_v7(),
            metadata: Metadata {
                request_id: Some(Uuid::now_v7().to_string()),
                key_id: Some(Uuid::now_v7()),
            },
            data: payload.to_data(),
            event_type: payload.event_type(),
            schema_version: payload.schema_version(),
        }
    }

    pub fn event(&self) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            event_type: self.event_type,
            schema_version: self.schema_version,
            occurred_at: Utc::now(),
            metadata: self.metadata.clone(),
            data: self.data.clone(),
        }
    }

    pub fn stream(&self) -> StreamRef {
        StreamRef {
            tenant_id: self.tenant_id,
            stream_type: stream_types::LEAD,
            stream_id: Uuid::now_v7(),
        }
    }
}

/// One append of `events` events to a new stream through the shared store.
pub fn append_op(
    store: &EventStore,
    shape: &Arc<Shape>,
    events: usize,
) -> impl Fn() -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync + 'static {
    let store = store.clone();
    let shape = shape.clone();
    move || {
        let store = store.clone();
        let shape = shape.clone();
        Box::pin(async move {
            let batch = (0..events).map(|_| shape.event()).collect();
            let appended = store
                .append(shape.stream(), ExpectedVersion::NoStream, batch)
                .await
                .context("append failed")?;
            ensure!(
                appended.positions.is_some(),
                "append to a new stream wrote nothing"
            );
            Ok(())
        })
    }
}

/// The same rows as one autocommit INSERT (one row per event, one statement
/// and one commit per append).
fn insert_op(
    pool: &PgPool,
    shape: &Arc<Shape>,
    events: usize,
) -> impl Fn() -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync + 'static {
    let pool = pool.clone();
    let shape = shape.clone();
    let sql: Arc<str> = insert_sql(events).into();
    move || {
        let pool = pool.clone();
        let shape = shape.clone();
        let sql = sql.clone();
        Box::pin(async move {
            let stream = shape.stream();
            let mut query = sqlx::query(&sql);
            for version in 1..=events as i64 {
                let event = shape.event();
                query = query
                    .bind(event.id)
                    .bind(stream.tenant_id)
                    .bind(stream.stream_type)
                    .bind(stream.stream_id)
                    .bind(version)
                    .bind(event.event_type)
                    .bind(event.schema_version)
                    .bind(event.occurred_at)
                    .bind(sqlx::types::Json(event.metadata))
                    .bind(event.data);
            }
            let done = query.execute(&pool).await.context("plain insert failed")?;
            ensure!(
                done.rows_affected() == events as u64,
                "plain insert wrote {} rows, not {events}",
                done.rows_affected()
            );
            Ok(())
        })
    }
}

const PLAIN_COLUMNS: &str = "id, tenant_id, stream_type, stream_id, stream_version, \
                             event_type, schema_version, occurred_at, metadata, data";
const PLAIN_COLUMN_COUNT: usize = 10;

fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=PLAIN_COLUMN_COUNT)
                .map(|col| format!("${}", row * PLAIN_COLUMN_COUNT + col))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "insert into bench_plain ({PLAIN_COLUMNS}) values {}",
        values.join(", ")
    )
}

/// `bench_plain`: the `events` table's columns, constraints and indexes, but
/// positions from an identity sequence (gaps and out-of-order visibility
/// allowed: exactly what the event store must not do).
async fn create_plain_table(pool: &PgPool) -> anyhow::Result<()> {
    for statement in [
        "create table bench_plain (like events including all)",
        "alter table bench_plain alter column position add generated by default as identity",
        // The hash chain (migration 0010) is the event store's work, not the baseline's.
        "alter table bench_plain drop column hash",
    ] {
        sqlx::query(statement)
            .execute(pool)
            .await
            .with_context(|| format!("failed to create the baseline table: {statement}"))?;
    }
    Ok(())
}

/// Connections the baseline may open: what the server allows minus those in
/// use and a margin.
async fn spare_connections(pool: &PgPool) -> anyhow::Result<usize> {
    let mut conn = pool
        .acquire()
        .await
        .context("failed to acquire a connection")?;
    let max: i64 = parse_setting(&mut conn, "max_connections").await?;
    let reserved: i64 = parse_setting(&mut conn, "superuser_reserved_connections").await?;
    let in_use: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity")
        .fetch_one(&mut *conn)
        .await
        .context("failed to count the server's connections")?;
    let spare = max - reserved - in_use - SPARE_CONNECTIONS;
    ensure!(
        spare > 0,
        "PostgreSQL has no connections to spare (max_connections {max}, {in_use} in use)"
    );
    Ok(usize::try_from(spare).unwrap_or(1))
}

async fn parse_setting(conn: &mut PgConnection, name: &str) -> anyhow::Result<i64> {
    let value = database::show(conn, name).await?;
    value
        .parse()
        .with_context(|| format!("the server setting {name} is not a number: {value}"))
}

/// Start each measurement with the same amount of dirty WAL behind it. Needs
/// superuser or `pg_checkpoint`; without, the measurements are just noisier.
pub async fn checkpoint(pool: &PgPool) {
    if let Err(e) = sqlx::query("checkpoint").execute(pool).await {
        eprintln!("append: checkpoint failed ({e}); continuing without");
    }
}

fn section(lines: &[Line], args: &Args, window: Window) -> Section {
    let mut md = String::from("## append: event-store appends against plain INSERTs\n\n");
    md.push_str(&format!(
        "Each append goes to a new stream (`ExpectedVersion::NoStream`) through one shared \
         `EventStore` (one writer task, group commit; pool of {} connections). The baseline \
         writes the same rows into `bench_plain` (the columns, constraints and indexes of \
         `events`, positions from a sequence) with autocommit INSERTs: one single-row INSERT \
         per one-event append, one multi-row INSERT per ten-event append, from as many tasks \
         over a pool of as many connections (at most {MAX_PLAIN_CONNECTIONS}). Each line: \
         {} s measured after {} s warm-up, on a fresh database.\n\n",
        args.store_connections,
        window.measure.as_secs_f64(),
        window.warmup.as_secs_f64(),
    ));

    if let Some(path) = &args.setup_sql {
        md.push_str(&format!(
            "Variant: `{}` was run on the scratch database after the migrations.\n\n",
            path.display()
        ));
    }
    md.push_str(
        "| writers | events/append | writer | appends/s | events/s | p50 ms | p99 ms | max ms |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for line in lines {
        for (name, f) in [
            ("event store", &line.event_store),
            ("plain INSERT", &line.plain_insert),
        ] {
            md.push_str(&format!(
                "| {} | {} | {name} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
                line.writers,
                line.events_per_append,
                thousands(f.appends_per_s),
                thousands(f.events_per_s),
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
            ));
        }
    }

    md.push_str(
        "\nRatios, event store ÷ plain INSERT (events/s: higher is better; latency: lower is better):\n\n\
         | writers | events/append | events/s | p50 | p99 |\n|---:|---:|---:|---:|---:|\n",
    );
    for line in lines {
        md.push_str(&format!(
            "| {} | {} | {:.2}× | {:.2}× | {:.2}× |\n",
            line.writers,
            line.events_per_append,
            ratio(
                line.event_store.events_per_s,
                line.plain_insert.events_per_s
            ),
            ratio(line.event_store.p50_ms, line.plain_insert.p50_ms),
            ratio(line.event_store.p99_ms, line.plain_insert.p99_ms),
        ));
    }
    if let Some(capped) = lines.iter().find(|l| l.plain_connections < l.writers) {
        md.push_str(&format!(
            "\nThe server had connections for only {} baseline connections; the baseline's \
             tasks shared them.\n",
            capped.plain_connections
        ));
    }

    let goals = goals(lines);
    md.push_str(&format!(
        "\nGoals (issue 2), at {GOAL_WRITERS} writers:\n\n"
    ));
    for goal in &goals {
        md.push_str(&format!(
            "- {}: {}: **{}**\n",
            goal.name,
            goal.measured,
            goal.verdict()
        ));
    }

    let json = serde_json::json!({
        "seconds": window.measure.as_secs_f64(),
        "warmup_seconds": window.warmup.as_secs_f64(),
        "store_connections": args.store_connections,
        "setup_sql": args.setup_sql.as_ref().map(|p| p.display().to_string()),
        "lines": lines,
        "goals": goals,
    });
    Section {
        name: "append",
        markdown: md,
        json,
    }
}

#[derive(Debug, Serialize)]
struct Goal {
    name: String,
    measured: String,
    /// `None` when the run did not include the line the goal is about.
    met: Option<bool>,
}

impl Goal {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    }
}

fn goals(lines: &[Line]) -> Vec<Goal> {
    let at = |events: usize| {
        lines
            .iter()
            .find(|l| l.writers == GOAL_WRITERS && l.events_per_append == events)
    };
    let unmeasured = || "not in this run".to_owned();
    let one = at(1);
    let ten = at(10);
    vec![
        Goal {
            name: format!("one-event appends ≥ {GOAL_RATIO:.1}× the plain INSERTs' events/s"),
            measured: one.map_or_else(unmeasured, |l| {
                format!(
                    "{:.2}×",
                    ratio(l.event_store.events_per_s, l.plain_insert.events_per_s)
                )
            }),
            met: one.map(|l| {
                ratio(l.event_store.events_per_s, l.plain_insert.events_per_s) >= GOAL_RATIO
            }),
        },
        Goal {
            name: format!("one-event appends p99 ≤ {GOAL_P99_MS:.0} ms"),
            measured: one.map_or_else(unmeasured, |l| format!("{:.2} ms", l.event_store.p99_ms)),
            met: one.map(|l| l.event_store.p99_ms <= GOAL_P99_MS),
        },
        Goal {
            name: format!(
                "ten-event appends ≥ {} events/s",
                thousands(GOAL_BATCH_EVENTS_PER_S)
            ),
            measured: ten.map_or_else(unmeasured, |l| {
                format!("{} events/s", thousands(l.event_store.events_per_s))
            }),
            met: ten.map(|l| l.event_store.events_per_s >= GOAL_BATCH_EVENTS_PER_S),
        },
    ]
}

fn ratio(ours: f64, plain: f64) -> f64 {
    if plain > 0.0 {
        ours / plain
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_insert_numbers_its_parameters_row_by_row() {
        assert_eq!(
            insert_sql(2),
            format!(
                "insert into bench_plain ({PLAIN_COLUMNS}) values \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), \
                 ($11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
            )
        );
    }
}
