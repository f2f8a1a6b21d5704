//! The `leads` scenario (issue 4): the read side and the write path of the
//! v1 resources, in one run against one in-process api and projector:
//!
//! - a tenant with `--leads` leads (100,000), bulk-appended through the
//!   `EventStore` (the api's relay publishing them meanwhile) and then
//!   projected from scratch, once all are in JetStream (the projector's
//!   catch-up rate, events/s);
//! - `GET /api/v1/leads?limit=50`, and with `q=`, at each `--clients`
//!   concurrency, against the same statement run straight on PostgreSQL
//!   (`api::lists::query::List::fetch`: the same page and the same count,
//!   on a pool as large as the api's) — the ratio of their throughputs;
//! - `POST /api/v1/leads`, closed loop: throughput and latency (each POST
//!   waits until its lead is projected before it answers);
//! - projection lag under an open-loop load of `--write-rate` appends/s:
//!   from an append's commit (its `append` returning) to the projector's
//!   `jeanus_projected` notification of a position at or past it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use api::auth::key::{Mode, PlainKey};
use api::lists::query::{Filter, List};
use chrono::Utc;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use schema::envelope::{Metadata, NewEvent};
use schema::events::{
    stream_types, EventPayload, KeyMinted, LeadCreated, LeadStage, Scope, TenantCreated,
};
use schema::resources::Lead;
use schema::store::{self, EventStore, ExpectedVersion, StreamRef};
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{database_url_for, RunningApi};
use crate::database::Scratch;
use crate::harness::{self, Measured, Window};
use crate::report::{thousands, Section};
use crate::Common;

const DEFAULT_LEADS: usize = 100_000;
const DEFAULT_CLIENTS: [usize; 2] = [16, 64];
const DEFAULT_Q: &str = "sar";
const DEFAULT_WRITE_RATE: f64 = 1000.0;
/// As many connections as the api's pool, for the direct SQL.
const SQL_CONNECTIONS: u32 = 32;
/// Appends in flight while bulk-loading: the store groups them into commits
/// of up to 512.
const BULK_IN_FLIGHT: usize = 4096;
/// So high that no request is refused: the limiter still does all its work.
const BENCH_RATE_LIMIT: u32 = 1_000_000_000;

/// Issue 4's goals.
const GOAL_LIST_RATIO: f64 = 0.5;
const GOAL_LAG_P99_MS: f64 = 50.0;

const FIRST: [&str; 20] = [
    "Sarah", "Sam", "Alex", "Maria", "John", "Priya", "Chen", "Fatima", "Lucas", "Emma", "Noah",
    "Olivia", "Liam", "Ava", "Mateo", "Zoe", "Ivan", "Aisha", "Kenji", "Nina",
];
const LAST: [&str; 10] = [
    "Patel", "Smith", "Garcia", "Müller", "Nguyen", "O'Brien", "Kowalski", "Silva", "Kim", "Dubois",
];
const STAGES: [LeadStage; 7] = [
    LeadStage::New,
    LeadStage::Contacted,
    LeadStage::Qualified,
    LeadStage::MeetingBooked,
    LeadStage::Proposal,
    LeadStage::Won,
    LeadStage::Lost,
];

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Leads in the tenant.
    #[arg(long, default_value_t = DEFAULT_LEADS)]
    leads: usize,
    /// Concurrent HTTP clients (and SQL tasks), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_CLIENTS)]
    clients: Vec<usize>,
    /// The `q` of the search measurement (matches about 5% of the leads).
    #[arg(long, default_value = DEFAULT_Q)]
    q: String,
    /// Appends per second during the projection-lag measurement.
    #[arg(long, default_value_t = DEFAULT_WRITE_RATE)]
    write_rate: f64,
    /// The NATS server the api and the projector connect to.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    nats_url: String,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            leads: DEFAULT_LEADS,
            clients: DEFAULT_CLIENTS.to_vec(),
            q: DEFAULT_Q.to_owned(),
            write_rate: DEFAULT_WRITE_RATE,
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Figures {
    operations: u64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Figures {
    fn of(m: &Measured) -> Self {
        Self {
            operations: m.operations,
            per_s: m.per_second(),
            p50_ms: m.quantile_ms(0.50),
            p99_ms: m.quantile_ms(0.99),
            max_ms: m.max_ms(),
        }
    }
}

#[derive(Debug, Serialize)]
struct ListLine {
    clients: usize,
    /// The query string after `/api/v1/leads?`.
    query: String,
    /// `pagination.total` of that list.
    total: i64,
    http: Figures,
    sql: Figures,
    /// HTTP requests/s ÷ direct SQL statements/s.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Lag {
    rate_per_s: f64,
    appends: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    leads: usize,
    bulk_append_s: f64,
    bulk_appends_per_s: f64,
    /// Projecting the whole log from an empty checkpoint (one tenant, its
    /// key and the leads), with every event already in JetStream.
    catch_up_events: i64,
    /// Transactions committed on the database meanwhile.
    catch_up_transactions: i64,
    catch_up_s: f64,
    catch_up_events_per_s: f64,
    lists: Vec<ListLine>,
    posts: Vec<(usize, Figures)>,
    lag: Lag,
}

pub async fn run(common: &Common, args: &Args) -> anyhow::Result<Section> {
    ensure!(args.leads > 0, "--leads must be above 0");
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| c > 0),
        "--clients must list numbers above 0"
    );
    ensure!(
        args.write_rate.is_finite() && args.write_rate > 0.0,
        "--write-rate must be above 0"
    );
    let window = common.window()?;
    let base_url = common.database_url()?;
    let scratch = Scratch::create(base_url).await?;
    eprintln!("leads: measuring in scratch database {}", scratch.name());
    let database_url = database_url_for(base_url, scratch.name());

    let measured = tokio::select! {
        r = measure(&scratch, &database_url, args, window) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    let results = measured?;
    Ok(section(&results, args, window))
}

/// The in-process projector.
struct RunningProjector {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningProjector {
    fn start(config: projector::config::Config) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(projector::run(config, stop.clone().cancelled_owned()));
        Self { stop, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("the projector task failed")?
    }
}

async fn measure(
    scratch: &Scratch,
    database_url: &str,
    args: &Args,
    window: Window,
) -> anyhow::Result<Results> {
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..12]);
    let api_config = api::config::Config::for_test(database_url, &args.nats_url, &prefix)
        .context("failed to configure the api")?;
    let projector_config =
        projector::config::Config::for_test(database_url, &args.nats_url, &prefix)
            .context("failed to configure the projector")?;
    let stream = api_config.nats_prefix.stream_name();
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_clients)
        .timeout(Duration::from_secs(60))
        .build()
        .context("failed to build an HTTP client")?;

    let pool = scratch.pool(SQL_CONNECTIONS).await?;
    let result = measure_phases(&pool, &api_config, projector_config, &client, args, window).await;

    if let Ok(nats) = async_nats::connect(&args.nats_url).await {
        let _ = async_nats::jetstream::new(nats)
            .delete_stream(&stream)
            .await;
    }
    pool.close().await;
    result
}

async fn measure_phases(
    pool: &PgPool,
    api_config: &api::config::Config,
    projector_config: projector::config::Config,
    client: &reqwest::Client,
    args: &Args,
    window: Window,
) -> anyhow::Result<Results> {
    let store = EventStore::spawn(pool.clone());
    let (tenant_id, key) = tenant_and_key(&store).await?;
    // The api's relay publishes the log as it is appended; once it is all in
    // JetStream, the projector starts from an empty checkpoint.
    let api = RunningApi::start(api_config, client).await?;
    let run = async {
        eprintln!("leads: appending {} leads", args.leads);
        let started = Instant::now();
        bulk_append(&store, tenant_id, args.leads).await?;
        let bulk_append_s = started.elapsed().as_secs_f64();
        let head = store::head(pool).await?;
        eprintln!(
            "leads: appended in {bulk_append_s:.1} s ({} appends/s)",
            thousands(args.leads as f64 / bulk_append_s)
        );
        wait_published(&api_config.nats_url, &api_config.nats_prefix.stream_name(), head).await?;
        let commits_before = commits(pool).await?;
        let started = Instant::now();
        let projector = RunningProjector::start(projector_config);
        wait_projected(pool, head, Duration::from_secs(600)).await?;
        let catch_up_s = started.elapsed().as_secs_f64();
        // Nothing else writes meanwhile, so these are (about) the
        // projector's transactions.
        let catch_up_transactions = commits(pool).await? - commits_before;
        eprintln!(
            "leads: projected {head} events in {catch_up_s:.1} s ({} events/s, {catch_up_transactions} transactions)",
            thousands(head as f64 / catch_up_s)
        );
        // What autovacuum would do by itself in time: visibility map and
        // statistics for the new rows.
        sqlx::query("vacuum (analyze) leads")
            .execute(pool)
            .await
            .context("failed to vacuum the leads")?;

        let mut lists = Vec::new();
        for &clients in &args.clients {
            for query in ["limit=50".to_owned(), format!("limit=50&q={}", args.q)] {
                let line = list_line(pool, client, &api.base, &key, tenant_id, clients, &query, args, window).await?;
                lists.push(line);
            }
        }

        let mut posts = Vec::new();
        for &clients in &args.clients {
            let measured = harness::run(clients, window, {
                let (client, url, key) = (client.clone(), format!("{}/api/v1/leads", api.base), key.clone());
                move || post_lead(client.clone(), url.clone(), key.clone())
            })
            .await?;
            let figures = Figures::of(&measured);
            eprintln!(
                "leads: POST /api/v1/leads, {clients:>2} clients: {:>7} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                thousands(figures.per_s),
                figures.p50_ms,
                figures.p99_ms
            );
            posts.push((clients, figures));
        }

        let lag = lag(pool, &store, tenant_id, args.write_rate, window).await?;
        eprintln!(
            "leads: projection lag at {} appends/s: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            thousands(args.write_rate),
            lag.p50_ms,
            lag.p99_ms,
            lag.max_ms
        );
        projector.stop().await?;
        anyhow::Ok(Results {
            leads: args.leads,
            bulk_append_s,
            bulk_appends_per_s: args.leads as f64 / bulk_append_s,
            catch_up_events: head,
            catch_up_transactions,
            catch_up_s,
            catch_up_events_per_s: head as f64 / catch_up_s,
            lists,
            posts,
            lag,
        })
    }
    .await;
    api.stop().await?;
    run
}

/// A tenant and a read+write key, appended as events (the projector builds
/// their read models); the tenant id and the plaintext key.
async fn tenant_and_key(store: &EventStore) -> anyhow::Result<(Uuid, String)> {
    let tenant_id = Uuid::now_v7();
    let created = EventPayload::from(TenantCreated {
        name: "bench".into(),
    });
    store
        .append(
            StreamRef {
                tenant_id,
                stream_type: stream_types::TENANT,
                stream_id: tenant_id,
            },
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&created, Metadata::default())],
        )
        .await
        .context("failed to append the bench tenant")?;
    let key = PlainKey::generate(Mode::Live);
    let minted = EventPayload::from(KeyMinted {
        label: "bench".into(),
        scopes: vec![Scope::Read, Scope::Write],
        key_sha256: key.hash(),
        key_start: key.start(),
        expires_at: None,
        allowed_ips: Vec::new(),
        rate_limit_per_minute: BENCH_RATE_LIMIT,
    });
    store
        .append(
            StreamRef {
                tenant_id,
                stream_type: stream_types::API_KEY,
                stream_id: Uuid::now_v7(),
            },
            ExpectedVersion::NoStream,
            vec![NewEvent::new(&minted, Metadata::default())],
        )
        .await
        .context("failed to append the bench key")?;
    Ok((tenant_id, key.expose().to_owned()))
}

fn random_lead(rng: &mut impl Rng, i: usize) -> EventPayload {
    let first = *FIRST.choose(rng).unwrap_or(&"Sarah");
    let last = *LAST.choose(rng).unwrap_or(&"Patel");
    LeadCreated {
        name: format!("{first} {last}"),
        company: rng.gen_bool(0.5).then(|| format!("{last} Holdings")),
        email: Some(format!(
            "{}.{}{i}@example.com",
            first.to_lowercase(),
            last.to_lowercase()
        )),
        phone: None,
        stage: *STAGES.choose(rng).unwrap_or(&LeadStage::New),
        estimated_value: Some(rng.gen_range(0..10_000_000)),
        probability: Some(rng.gen_range(0..=100)),
        source: "api".into(),
        notes: None,
    }
    .into()
}

/// `n` leads, one append (one new stream) each, many in flight so that the
/// store commits them in large groups.
async fn bulk_append(store: &EventStore, tenant_id: Uuid, n: usize) -> anyhow::Result<()> {
    let rng = Arc::new(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(4)));
    let mut appends = futures::stream::iter(0..n)
        .map(|i| {
            let payload = {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                random_lead(&mut *rng, i)
            };
            let store = store.clone();
            async move {
                store
                    .append(
                        StreamRef {
                            tenant_id,
                            stream_type: stream_types::LEAD,
                            stream_id: Uuid::now_v7(),
                        },
                        ExpectedVersion::NoStream,
                        vec![NewEvent::new(&payload, Metadata::default())],
                    )
                    .await
            }
        })
        .buffer_unordered(BULK_IN_FLIGHT);
    while let Some(appended) = appends.next().await {
        appended.context("a bulk append failed")?;
    }
    Ok(())
}

/// Waits until the stream holds `head` messages (the relay keeps the stream
/// sequence equal to the position).
async fn wait_published(nats_url: &str, stream: &str, head: i64) -> anyhow::Result<()> {
    let nats = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;
    let js = async_nats::jetstream::new(nats);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if info.state.last_sequence >= head as u64 {
                    return Ok(());
                }
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the relay did not publish {head} events within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Transactions committed on the scratch database so far (as the
/// statistics collector last reported them).
async fn commits(pool: &PgPool) -> anyhow::Result<i64> {
    let mut conn = pool.acquire().await?;
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
    .context("failed to read the commit count")
}

async fn wait_projected(pool: &PgPool, position: i64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let projected: i64 = sqlx::query_scalar("select jeanus_projected_position()")
            .fetch_one(pool)
            .await?;
        if projected >= position {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the projector reached {projected} of {position} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One list measurement: HTTP and the same statement straight on PostgreSQL.
#[allow(clippy::too_many_arguments)]
async fn list_line(
    pool: &PgPool,
    client: &reqwest::Client,
    base: &str,
    key: &str,
    tenant_id: Uuid,
    clients: usize,
    query: &str,
    args: &Args,
    window: Window,
) -> anyhow::Result<ListLine> {
    let url = format!("{base}/api/v1/leads?{query}");
    let mut filters = Vec::new();
    if query.contains("q=") {
        filters.push(Filter::Prefix {
            columns: &["name", "email"],
            prefix: args.q.clone(),
        });
    }
    let list = Arc::new(List {
        table: "leads",
        tenant_id,
        filters,
        limit: 50,
        offset: 0,
    });

    // Both answer the same page and the same total.
    let body: serde_json::Value = client
        .get(&url)
        .bearer_auth(key)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let direct = list.fetch::<Lead>(pool).await?;
    let total = body["pagination"]["total"].as_i64().unwrap_or(-1);
    ensure!(
        total == direct.total,
        "GET {url} counts {total}, the direct SQL {}",
        direct.total
    );
    let http_ids: Vec<&str> = body["data"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["id"].as_str()).collect())
        .unwrap_or_default();
    let sql_ids: Vec<String> = direct.rows.iter().map(|l| l.meta.id.to_string()).collect();
    ensure!(
        http_ids == sql_ids,
        "GET {url} and the direct SQL return different pages"
    );

    let http = harness::run(clients, window, {
        let (client, url, key) = (client.clone(), url.clone(), key.to_owned());
        move || get(client.clone(), url.clone(), key.clone())
    })
    .await?;
    let sql = harness::run(clients, window, {
        let (pool, list) = (pool.clone(), list.clone());
        move || {
            let (pool, list) = (pool.clone(), list.clone());
            async move {
                list.fetch::<Lead>(&pool).await?;
                anyhow::Ok(())
            }
        }
    })
    .await?;
    let (http, sql) = (Figures::of(&http), Figures::of(&sql));
    let ratio = if sql.per_s > 0.0 {
        http.per_s / sql.per_s
    } else {
        0.0
    };
    eprintln!(
        "leads: GET ?{query:<16} {clients:>2} clients: HTTP {:>6} req/s (p50 {:.2} p99 {:.2} ms)  SQL {:>6}/s (p50 {:.2} p99 {:.2} ms)  ratio {ratio:.2}",
        thousands(http.per_s),
        http.p50_ms,
        http.p99_ms,
        thousands(sql.per_s),
        sql.p50_ms,
        sql.p99_ms
    );
    Ok(ListLine {
        clients,
        query: query.to_owned(),
        total,
        http,
        sql,
        ratio,
    })
}

fn get(
    client: reqwest::Client,
    url: String,
    key: String,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let response = client
            .get(&url)
            .bearer_auth(key)
            .send()
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let status = response.status();
        response.bytes().await.context("failed to read a body")?;
        ensure!(status == StatusCode::OK, "GET {url} answered {status}");
        Ok(())
    })
}

fn post_lead(
    client: reqwest::Client,
    url: String,
    key: String,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let response = client
            .post(&url)
            .bearer_auth(key)
            .json(&serde_json::json!({
                "name": "Sarah Patel",
                "company": "Patel Holdings",
                "email": "sarah@patelholdings.com",
                "stage": "new",
                "source": "calendly",
                "estimated_value": 1_200_000
            }))
            .send()
            .await
            .with_context(|| format!("POST {url} failed"))?;
        let status = response.status();
        response.bytes().await.context("failed to read a body")?;
        ensure!(
            status == StatusCode::CREATED,
            "POST {url} answered {status}"
        );
        Ok(())
    })
}

/// Open loop: one append every 1/rate s for the window (after the warm-up),
/// each timed from its commit to the first `jeanus_projected` notification
/// at or past its position.
async fn lag(
    pool: &PgPool,
    store: &EventStore,
    tenant_id: Uuid,
    rate: f64,
    window: Window,
) -> anyhow::Result<Lag> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .context("failed to connect the lag listener")?;
    listener
        .listen(projector::consumer::NOTIFY_CHANNEL)
        .await
        .context("failed to listen for projections")?;
    let notified: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let stop = CancellationToken::new();
    let listening = tokio::spawn({
        let (notified, stop) = (notified.clone(), stop.clone());
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return anyhow::Ok(()),
                    n = listener.recv() => {
                        let n = n.context("the lag listener failed")?;
                        let at = Instant::now();
                        if let Ok(position) = n.payload().parse::<i64>() {
                            notified.lock().await.push((position, at));
                        }
                    }
                }
            }
        }
    });

    let committed: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let from = Instant::now() + window.warmup;
    let until = from + window.measure;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = tokio::task::JoinSet::new();
    let mut i = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        i += 1;
        let (store, committed) = (store.clone(), committed.clone());
        let payload = random_lead(&mut rand::thread_rng(), i);
        appends.spawn(async move {
            let appended = store
                .append(
                    StreamRef {
                        tenant_id,
                        stream_type: stream_types::LEAD,
                        stream_id: Uuid::now_v7(),
                    },
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new(&payload, Metadata::default())],
                )
                .await
                .context("a lag append failed")?;
            let at = Instant::now();
            if at >= from {
                if let Some(positions) = appended.positions {
                    committed.lock().await.push((*positions.end(), at));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = appends.join_next().await {
        joined.context("an append task panicked")??;
    }
    let last = committed
        .lock()
        .await
        .iter()
        .map(|(p, _)| *p)
        .max()
        .unwrap_or(0);
    wait_projected(pool, last, Duration::from_secs(60)).await?;
    // The notification of `last` may trail its commit by a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    listening.await.context("the lag listener panicked")??;

    let mut notified = std::mem::take(&mut *notified.lock().await);
    notified.sort_by_key(|(_, at)| *at);
    let committed = std::mem::take(&mut *committed.lock().await);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (position, at) in &committed {
        // The first notification, in time, at or past the position.
        let seen = notified
            .iter()
            .find(|(p, _)| p >= position)
            .map(|(_, t)| *t)
            .with_context(|| format!("no notification reached position {position}"))?;
        let micros = seen.saturating_duration_since(*at).as_micros();
        histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
    }
    Ok(Lag {
        rate_per_s: committed.len() as f64 / window.measure.as_secs_f64(),
        appends: committed.len() as u64,
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: histogram.max() as f64 / 1000.0,
    })
}

fn section(r: &Results, args: &Args, window: Window) -> Section {
    let mut md = String::from("## leads: lists, writes and projection lag on 100,000 leads\n\n");
    md.push_str(&format!(
        "One tenant with {} leads (bulk-appended through `EventStore` in {:.1} s, {} appends/s; \
         then projected from an empty checkpoint with every event already in JetStream: {} \
         events in {:.1} s, **{} events/s**, in about {} transactions). One in-process api (pool of 32 connections) and \
         projector; `vacuum (analyze) leads` before measuring. {} s measured after {} s warm-up, \
         closed loops, everything (PostgreSQL, NATS, api, projector, clients) on the same \
         machine.\n\n",
        thousands(r.leads as f64),
        r.bulk_append_s,
        thousands(r.bulk_appends_per_s),
        thousands(r.catch_up_events as f64),
        r.catch_up_s,
        thousands(r.catch_up_events_per_s),
        thousands(r.catch_up_transactions as f64),
        window.measure.as_secs_f64(),
        window.warmup.as_secs_f64(),
    ));
    md.push_str(&format!(
        "`GET /api/v1/leads` (every layer: key, scope, rate limit, audit entry, the read-your-writes \
         wait, then the list statement) against the list statement alone run straight on \
         PostgreSQL (`List::fetch`: page and total in one statement, same pool size). `q={}` \
         matches by prefix on name or email.\n\n",
        args.q
    ));
    md.push_str("| query | clients | total | HTTP req/s | p50 ms | p99 ms | SQL /s | p50 ms | p99 ms | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for l in &r.lists {
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2}× |\n",
            l.query,
            l.clients,
            thousands(l.total as f64),
            thousands(l.http.per_s),
            l.http.p50_ms,
            l.http.p99_ms,
            thousands(l.sql.per_s),
            l.sql.p50_ms,
            l.sql.p99_ms,
            l.ratio
        ));
    }
    md.push_str("\n`POST /api/v1/leads` (validation, append, then the wait for its projection before answering):\n\n| clients | req/s | p50 ms | p99 ms | max ms |\n|---:|---:|---:|---:|---:|\n");
    for (clients, f) in &r.posts {
        md.push_str(&format!(
            "| {clients} | {} | {:.2} | {:.2} | {:.2} |\n",
            thousands(f.per_s),
            f.p50_ms,
            f.p99_ms,
            f.max_ms
        ));
    }
    md.push_str(&format!(
        "\nProjection lag, append committed → `jeanus_projected` notification at or past it, under \
         an open-loop load of {} appends/s ({} appends measured): p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms.\n",
        thousands(r.lag.rate_per_s),
        thousands(r.lag.appends as f64),
        r.lag.p50_ms,
        r.lag.p99_ms,
        r.lag.max_ms
    ));

    let worst_ratio = r
        .lists
        .iter()
        .map(|l| l.ratio)
        .fold(f64::INFINITY, f64::min);
    let goals = [
        (
            format!("list throughput ≥ {GOAL_LIST_RATIO}× the direct SQL (worst line)"),
            format!("{worst_ratio:.2}×"),
            worst_ratio >= GOAL_LIST_RATIO,
        ),
        (
            format!(
                "projection lag p99 ≤ {GOAL_LAG_P99_MS} ms at {} writes/s",
                thousands(args.write_rate)
            ),
            format!("{:.2} ms", r.lag.p99_ms),
            r.lag.p99_ms <= GOAL_LAG_P99_MS,
        ),
    ];
    md.push_str("\nGoals (issue 4):\n\n");
    for (name, measured, met) in &goals {
        md.push_str(&format!(
            "- {name}: {measured}: **{}**\n",
            if *met { "met" } else { "NOT met" }
        ));
    }
    let json = serde_json::json!({
        "seconds": window.measure.as_secs_f64(),
        "warmup_seconds": window.warmup.as_secs_f64(),
        "results": r,
        "measured_at": Utc::now(),
        "goals": goals.iter().map(|(name, measured, met)| serde_json::json!({
            "name": name, "measured": measured, "met": met,
        })).collect::<Vec<_>>(),
    });
    Section {
        name: "leads",
        markdown: md,
        json,
    }
}
