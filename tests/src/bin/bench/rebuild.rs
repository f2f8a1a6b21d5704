//! The `rebuild` scenario (issue 6): `projector::rebuild` of every read
//! model from a log of `--events` events (1,000,000: mostly lead and
//! customer creates and updates across `--tenants` tenants, bulk-loaded
//! with COPY), against bulk `COPY`s in the same run: of the rows it produced
//! into tables of the same shape (bare, and with the read models' indexes),
//! and of the log's own rows into a bare table shaped like `events`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DateTime, TimeZone, Utc};
use projector::projections::Projection;
use projector::rebuild::{rebuild, Options, Report, CONNECTIONS, DEFAULT_PAGE_SIZE};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use schema::events::{
    stream_types, CustomerCreated, CustomerUpdated, EventPayload, KeyMinted, LeadCreated,
    LeadStage, LeadStageChanged, LeadUpdated, OrderCreated, OrderItem, OrderStatus, ProductCreated,
    Scope, TenantCreated,
};
use serde::Serialize;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::database::Scratch;
use crate::report::{thousands, Section};
use crate::Common;

const DEFAULT_EVENTS: usize = 1_000_000;
const DEFAULT_TENANTS: usize = 100;
/// Issue 6's goals.
const GOAL_EVENTS_PER_S: f64 = 100_000.0;
const GOAL_COPY_RATIO: f64 = 0.3;
/// Bytes of CSV sent to COPY at a time.
const COPY_CHUNK: usize = 1 << 20;

const STAGES: [LeadStage; 7] = [
    LeadStage::New,
    LeadStage::Contacted,
    LeadStage::Qualified,
    LeadStage::MeetingBooked,
    LeadStage::Proposal,
    LeadStage::Won,
    LeadStage::Lost,
];
const FIRST: [&str; 10] = [
    "Sarah", "Sam", "Alex", "Maria", "John", "Priya", "Chen", "Fatima", "Lucas", "Zoë",
];
const LAST: [&str; 8] = [
    "Patel", "Smith", "Garcia", "Müller", "Nguyen", "O'Brien", "Kim", "Dubois",
];

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Events in the log.
    #[arg(long, default_value_t = DEFAULT_EVENTS)]
    events: usize,
    /// Tenants the events are spread over.
    #[arg(long, default_value_t = DEFAULT_TENANTS)]
    tenants: usize,
    /// Events per page (and per load transaction) of the rebuild.
    #[arg(long, default_value_t = DEFAULT_PAGE_SIZE)]
    page_size: i64,
    /// Connections the rebuild gets (`jeanus-projector rebuild` opens
    /// `CONNECTIONS`; before 2026-12-05 the bench gave it 4).
    #[arg(long, default_value_t = CONNECTIONS)]
    connections: u32,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            events: DEFAULT_EVENTS,
            tenants: DEFAULT_TENANTS,
            page_size: DEFAULT_PAGE_SIZE,
            connections: CONNECTIONS,
        }
    }
}

#[derive(Debug, Serialize)]
struct Results {
    events: u64,
    tenants: usize,
    page_size: i64,
    log_load_s: f64,
    rebuild_s: f64,
    rebuild_events_per_s: f64,
    load_s: f64,
    indexes_s: f64,
    swap_ms: f64,
    page_p50_ms: f64,
    page_p99_ms: f64,
    /// Rows of every read model after the rebuild.
    rows: u64,
    /// COPY of those rows into tables without indexes.
    copy_s: f64,
    /// COPY of those rows into tables with the read models' indexes.
    copy_indexed_s: f64,
    /// COPY of the log's rows (the events) into a bare events-shaped table.
    copy_events_s: f64,
    /// COPY time ÷ rebuild time: the rebuild's speed as a fraction of the COPY's.
    ratio: f64,
    ratio_indexed: f64,
    ratio_events: f64,
}

pub async fn run(common: &Common, args: &Args) -> anyhow::Result<Section> {
    ensure!(
        args.events >= 2 * args.tenants,
        "--events must be at least twice --tenants"
    );
    ensure!(args.tenants > 0, "--tenants must be above 0");
    ensure!(args.page_size > 0, "--page-size must be above 0");
    // One held by the bench, one reading the log, at least one loading.
    ensure!(args.connections >= 3, "--connections must be at least 3");
    let scratch = Scratch::create(common.database_url()?).await?;
    eprintln!("rebuild: measuring in scratch database {}", scratch.name());
    let measured = tokio::select! {
        r = measure(&scratch, args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    let results = measured?;
    Ok(section(&results))
}

async fn measure(scratch: &Scratch, args: &Args) -> anyhow::Result<Results> {
    let pool = scratch.pool(args.connections).await?;
    eprintln!(
        "rebuild: writing {} events to the log with COPY",
        thousands(args.events as f64)
    );
    let started = Instant::now();
    let csv = generate(args.events, args.tenants);
    let mut conn = pool.acquire().await?;
    // COPY has no way to compute the hash chain (migration 0010): the rows
    // go to a staging table, then into the log with the migration's own
    // chain functions, as its backfill did.
    sqlx::query("create unlogged table events_staging as table events with no data")
        .execute(&mut *conn)
        .await?;
    copy_in(&mut conn, "copy events_staging (position, id, tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, occurred_at, metadata, data) from stdin with (format csv)", csv.as_bytes()).await?;
    sqlx::query(
        "insert into events (position, id, tenant_id, stream_type, stream_id, stream_version,
                             event_type, schema_version, occurred_at, metadata, data, hash)
         select position, id, tenant_id, stream_type, stream_id, stream_version,
                event_type, schema_version, occurred_at, metadata, data,
                jeanus_chain(jeanus_event_canonical(position, id, event_type, schema_version,
                                                    stream_type, stream_id, stream_version,
                                                    occurred_at, metadata, data),
                             '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
                    over (partition by tenant_id order by position)
           from events_staging",
    )
    .execute(&mut *conn)
    .await
    .context("failed to chain the generated log")?;
    sqlx::query("drop table events_staging")
        .execute(&mut *conn)
        .await?;
    sqlx::query("update event_log_head set position = $1")
        .bind(args.events as i64)
        .execute(&mut *conn)
        .await?;
    sqlx::query("vacuum analyze events")
        .execute(&mut *conn)
        .await?;
    sqlx::query("checkpoint").execute(&mut *conn).await?;
    let log_load = started.elapsed();
    drop(csv);
    eprintln!(
        "rebuild: log written in {:.1} s; rebuilding",
        log_load.as_secs_f64()
    );

    let report = rebuild(
        &pool,
        Projection::ALL,
        &Options {
            page_size: args.page_size,
            progress: false,
        },
    )
    .await?;
    eprintln!("rebuild: {report}");
    ensure!(
        report.events == args.events as u64,
        "the rebuild applied {} of {} events",
        report.events,
        args.events
    );
    sqlx::query("checkpoint").execute(&mut *conn).await?;

    eprintln!("rebuild: the COPY baseline");
    let (rows, copy, copy_indexed) = copy_baseline(&mut conn).await?;
    let copy_events = copy_events_baseline(&mut conn).await?;
    Ok(results(
        args,
        log_load,
        &report,
        rows,
        [copy, copy_indexed, copy_events],
    ))
}

fn results(
    args: &Args,
    log_load: Duration,
    report: &Report,
    rows: u64,
    [copy, copy_indexed, copy_events]: [Duration; 3],
) -> Results {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Results {
        events: report.events,
        tenants: args.tenants,
        page_size: args.page_size,
        log_load_s: log_load.as_secs_f64(),
        rebuild_s: report.total.as_secs_f64(),
        rebuild_events_per_s: report.events_per_second(),
        load_s: report.load.as_secs_f64(),
        indexes_s: report.indexes.as_secs_f64(),
        swap_ms: ms(report.swap),
        page_p50_ms: ms(report.page_p50),
        page_p99_ms: ms(report.page_p99),
        rows,
        copy_s: copy.as_secs_f64(),
        copy_indexed_s: copy_indexed.as_secs_f64(),
        copy_events_s: copy_events.as_secs_f64(),
        ratio: copy.as_secs_f64() / report.total.as_secs_f64(),
        ratio_indexed: copy_indexed.as_secs_f64() / report.total.as_secs_f64(),
        ratio_events: copy_events.as_secs_f64() / report.total.as_secs_f64(),
    }
}

/// Every read model's rows, copied out, then copied into a table like it:
/// once without indexes, once with them. Returns the rows and both times.
async fn copy_baseline(conn: &mut PgConnection) -> anyhow::Result<(u64, Duration, Duration)> {
    let mut tables = Vec::new();
    let mut rows = 0;
    for p in Projection::ALL {
        let data = copy_out(conn, &format!("copy {} to stdout", p.table())).await?;
        rows += data.iter().filter(|&&b| b == b'\n').count() as u64;
        tables.push((p.table(), data));
    }
    let mut times = Vec::new();
    for (suffix, indexes) in [("plain", "excluding indexes"), ("indexed", "")] {
        for (table, _) in &tables {
            sqlx::query(&format!(
                "create table bench_{table}_{suffix} (like {table} including all {indexes})"
            ))
            .execute(&mut *conn)
            .await?;
        }
        let started = Instant::now();
        for (table, data) in &tables {
            copy_in(
                conn,
                &format!("copy bench_{table}_{suffix} from stdin"),
                data,
            )
            .await?;
        }
        times.push(started.elapsed());
        sqlx::query("checkpoint").execute(&mut *conn).await?;
    }
    Ok((rows, times[0], times[1]))
}

/// The log's rows (every event the rebuild read), copied out, then timed
/// being copied into a table shaped like `events` without its indexes: the
/// other reading of "a bulk COPY of the same rows".
async fn copy_events_baseline(conn: &mut PgConnection) -> anyhow::Result<Duration> {
    let data = copy_out(conn, "copy events to stdout").await?;
    sqlx::query("create table bench_events (like events including all excluding indexes)")
        .execute(&mut *conn)
        .await?;
    let started = Instant::now();
    copy_in(conn, "copy bench_events from stdin", &data).await?;
    let took = started.elapsed();
    sqlx::query("checkpoint").execute(&mut *conn).await?;
    Ok(took)
}

async fn copy_in(conn: &mut PgConnection, statement: &str, data: &[u8]) -> anyhow::Result<()> {
    let mut copy = conn
        .copy_in_raw(statement)
        .await
        .with_context(|| format!("failed to start `{statement}`"))?;
    for chunk in data.chunks(COPY_CHUNK) {
        copy.send(chunk).await?;
    }
    copy.finish()
        .await
        .with_context(|| format!("failed to finish `{statement}`"))?;
    Ok(())
}

async fn copy_out(conn: &mut PgConnection, statement: &str) -> anyhow::Result<Vec<u8>> {
    use futures::TryStreamExt;
    let mut stream = conn.copy_out_raw(statement).await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// One stream as the generator knows it.
struct Stream {
    id: Uuid,
    tenant: usize,
    version: i64,
    stage: LeadStage,
}

/// The log as CSV for COPY: per tenant a TenantCreated and a KeyMinted, then
/// 40 % lead creates, 25 % lead updates and stage changes, 20 % customer
/// creates, 11 % customer updates, 2 % product and 2 % order creates, in
/// random tenants; each event one append of its own, as the api writes them.
fn generate(events: usize, tenants: usize) -> String {
    let mut rng = StdRng::seed_from_u64(6);
    let start: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let tenant_ids: Vec<Uuid> = (0..tenants).map(|_| Uuid::new_v4()).collect();
    let mut leads: Vec<Stream> = Vec::new();
    let mut customers: Vec<Stream> = Vec::new();
    let mut out = String::with_capacity(events * 400);
    let mut position = 0i64;
    let mut push = |out: &mut String,
                    tenant: Uuid,
                    stream_type: &str,
                    stream_id: Uuid,
                    version: i64,
                    payload: EventPayload| {
        position += 1;
        let at = start + chrono::Duration::milliseconds(position);
        let metadata = json!({"request_id": Uuid::new_v4().to_string()}).to_string();
        out.push_str(&format!(
            "{position},{},{tenant},{stream_type},{stream_id},{version},{},{},{},{},{}\n",
            Uuid::new_v4(),
            payload.event_type(),
            payload.schema_version(),
            at.to_rfc3339(),
            quoted(&metadata),
            quoted(&payload.to_data().to_string()),
        ));
    };
    for &tenant in &tenant_ids {
        push(
            &mut out,
            tenant,
            stream_types::TENANT,
            tenant,
            1,
            TenantCreated {
                name: format!("Tenant {tenant}"),
            }
            .into(),
        );
        push(
            &mut out,
            tenant,
            stream_types::API_KEY,
            Uuid::new_v4(),
            1,
            KeyMinted {
                label: "bench".into(),
                scopes: vec![Scope::Read, Scope::Write],
                key_sha256: format!("{:064x}", rng.gen::<u128>()),
                key_start: "jns_live_a1b2".into(),
                expires_at: None,
                allowed_ips: Vec::new(),
                rate_limit_per_minute: 600,
            }
            .into(),
        );
    }
    let name = |rng: &mut StdRng| {
        format!(
            "{} {}",
            FIRST.choose(rng).copied().unwrap_or("A"),
            LAST.choose(rng).copied().unwrap_or("B")
        )
    };
    for _ in 2 * tenants..events {
        let roll = rng.gen_range(0..100);
        let t = rng.gen_range(0..tenants);
        match roll {
            0..=24 if !leads.is_empty() => {
                let s = rng.gen_range(0..leads.len());
                let lead = &mut leads[s];
                lead.version += 1;
                let payload: EventPayload = if rng.gen_bool(0.5) {
                    let stage = *STAGES
                        .iter()
                        .filter(|&&x| x != lead.stage)
                        .collect::<Vec<_>>()
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or(&LeadStage::Won);
                    let changed = LeadStageChanged {
                        previous_stage: lead.stage,
                        stage,
                    };
                    lead.stage = stage;
                    changed.into()
                } else {
                    let mut patch = serde_json::Map::new();
                    patch.insert("probability".into(), json!(rng.gen_range(0..=100)));
                    patch.insert(
                        "notes".into(),
                        json!(format!("call back on day {}", rng.gen_range(1..28))),
                    );
                    LeadUpdated { patch }.into()
                };
                push(
                    &mut out,
                    tenant_ids[lead.tenant],
                    stream_types::LEAD,
                    lead.id,
                    lead.version,
                    payload,
                );
            }
            25..=35 if !customers.is_empty() => {
                let s = rng.gen_range(0..customers.len());
                let customer = &mut customers[s];
                customer.version += 1;
                let mut patch = serde_json::Map::new();
                patch.insert(
                    "phone".into(),
                    json!(format!("+1 555 {:04}", rng.gen_range(0..10_000))),
                );
                push(
                    &mut out,
                    tenant_ids[customer.tenant],
                    stream_types::CUSTOMER,
                    customer.id,
                    customer.version,
                    CustomerUpdated { patch }.into(),
                );
            }
            36..=55 => {
                let id = Uuid::now_v7();
                let n = name(&mut rng);
                let email = format!(
                    "{}{}@example.com",
                    n.to_lowercase().replace([' ', '\''], "."),
                    rng.gen_range(0..1000)
                );
                push(
                    &mut out,
                    tenant_ids[t],
                    stream_types::CUSTOMER,
                    id,
                    1,
                    CustomerCreated {
                        name: n,
                        email: Some(email),
                        phone: None,
                        company: Some("Patel Holdings".into()),
                        notes: None,
                    }
                    .into(),
                );
                customers.push(Stream {
                    id,
                    tenant: t,
                    version: 1,
                    stage: LeadStage::New,
                });
            }
            56..=57 => {
                let sku = format!("SKU-{}", rng.gen_range(0..1_000_000));
                push(
                    &mut out,
                    tenant_ids[t],
                    stream_types::PRODUCT,
                    Uuid::now_v7(),
                    1,
                    ProductCreated {
                        name: "Widget".into(),
                        sku: Some(sku),
                        description: None,
                        price: Some(rng.gen_range(100..100_000)),
                        currency: Some("USD".into()),
                        active: true,
                    }
                    .into(),
                );
            }
            58..=59 => {
                let quantity = rng.gen_range(1..10);
                push(
                    &mut out,
                    tenant_ids[t],
                    stream_types::ORDER,
                    Uuid::now_v7(),
                    1,
                    OrderCreated {
                        customer_id: Uuid::now_v7(),
                        status: OrderStatus::Open,
                        currency: Some("USD".into()),
                        items: vec![OrderItem {
                            product_id: Uuid::now_v7(),
                            quantity,
                            unit_price: 1999,
                        }],
                        total: Some(quantity * 1999),
                        notes: None,
                    }
                    .into(),
                );
            }
            _ => {
                let id = Uuid::now_v7();
                let n = name(&mut rng);
                let stage = *STAGES.choose(&mut rng).unwrap_or(&LeadStage::New);
                push(
                    &mut out,
                    tenant_ids[t],
                    stream_types::LEAD,
                    id,
                    1,
                    LeadCreated {
                        name: n,
                        company: Some("Acme".into()),
                        email: None,
                        phone: None,
                        stage,
                        estimated_value: Some(rng.gen_range(0..1_000_000)),
                        probability: Some(rng.gen_range(0..=100)),
                        source: "calendly".into(),
                        notes: None,
                    }
                    .into(),
                );
                leads.push(Stream {
                    id,
                    tenant: t,
                    version: 1,
                    stage,
                });
            }
        }
    }
    out
}

/// A CSV field, quoted.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn section(r: &Results) -> Section {
    let mut md = String::from("## rebuild\n\n");
    md.push_str(&format!(
        "{} events over {} tenants (log written with COPY in {:.1} s); every read model rebuilt with pages of {} events.\n\n",
        thousands(r.events as f64), r.tenants, r.log_load_s, thousands(r.page_size as f64)
    ));
    md.push_str("| measurement | result |\n|---|---:|\n");
    md.push_str(&format!(
        "| rebuild, total (load, indexes, catch-up, swap) | {:.2} s |\n",
        r.rebuild_s
    ));
    md.push_str(&format!(
        "| rebuild rate | {} events/s |\n",
        thousands(r.rebuild_events_per_s)
    ));
    md.push_str(&format!(
        "| load / indexes / swap | {:.2} s / {:.2} s / {:.0} ms |\n",
        r.load_s, r.indexes_s, r.swap_ms
    ));
    md.push_str(&format!(
        "| one page applied, p50 / p99 | {:.1} / {:.1} ms |\n",
        r.page_p50_ms, r.page_p99_ms
    ));
    md.push_str(&format!(
        "| rows produced | {} |\n",
        thousands(r.rows as f64)
    ));
    md.push_str(&format!(
        "| COPY of those rows, no indexes | {:.2} s |\n",
        r.copy_s
    ));
    md.push_str(&format!(
        "| COPY of those rows, with the indexes | {:.2} s |\n",
        r.copy_indexed_s
    ));
    md.push_str(&format!(
        "| COPY of the log's {} events, no indexes | {:.2} s |\n",
        thousands(r.events as f64),
        r.copy_events_s
    ));
    md.push_str(&format!(
        "| ratio, COPY time ÷ rebuild time (rows / rows with indexes / events) | {:.2}× / {:.2}× / {:.2}× |\n\n",
        r.ratio, r.ratio_indexed, r.ratio_events
    ));
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    md.push_str(&format!(
        "Goals: ≥ {} events/s: **{}**; ≥ {GOAL_COPY_RATIO}× the COPY of the rows without indexes: **{}**, with them: **{}**, of the events: **{}**.\n",
        thousands(GOAL_EVENTS_PER_S),
        verdict(r.rebuild_events_per_s >= GOAL_EVENTS_PER_S),
        verdict(r.ratio >= GOAL_COPY_RATIO),
        verdict(r.ratio_indexed >= GOAL_COPY_RATIO),
        verdict(r.ratio_events >= GOAL_COPY_RATIO),
    ));
    Section {
        name: "rebuild",
        markdown: md,
        json: serde_json::to_value(r).unwrap_or_default(),
    }
}
