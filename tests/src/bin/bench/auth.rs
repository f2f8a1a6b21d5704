//! The `auth` scenario (issue 3): what the layers on `/api/v1` cost. In one
//! run, against one in-process api: authenticated `GET /api/v1/me` (every
//! layer: authentication through the key cache, scope, IP allowlist, the
//! global rate limit in Redis, the durable audit entry in PostgreSQL) against
//! unauthenticated `GET /healthz` (none of them), at the same concurrency;
//! the time authentication itself takes on a cache hit; and the database
//! queries a malformed key causes (none).
//!
//! The keys are written straight into the `tenants` and `api_keys` read
//! models (no projector runs): what is measured is the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use api::auth::authenticate::{self, KeyCache};
use api::auth::key::{Mode, PlainKey};
use chrono::Utc;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cpu;
use crate::database::Scratch;
use crate::harness::{self, Measured, Window};
use crate::report::{thousands, Section};
use crate::Common;

const DEFAULT_CLIENTS: usize = 64;
/// Single rounds' ratios spread ±25 % on a 2-core machine (0.20× to 0.40×
/// for one binary within minutes): the median of 7 is steadier.
const DEFAULT_ROUNDS: usize = 7;
/// Issue 3's goals.
const GOAL_RATIO: f64 = 0.3;
const GOAL_AUTH_P99_MS: f64 = 0.2;
/// So high that no request is refused: the limiter still does all its work.
const BENCH_RATE_LIMIT: i32 = 1_000_000_000;
/// Malformed keys sent to count the queries they cause.
const MALFORMED_REQUESTS: usize = 2_000;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Concurrent HTTP clients (closed loop).
    #[arg(long, default_value_t = DEFAULT_CLIENTS)]
    clients: usize,
    /// Rounds of (/healthz, /api/v1/me), alternating, so that both sides of
    /// each ratio share the machine's load of the moment; the report takes
    /// the round with the median ratio.
    #[arg(long, default_value_t = DEFAULT_ROUNDS)]
    rounds: usize,
    /// The NATS server the api connects to (it needs one to start).
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
            clients: DEFAULT_CLIENTS,
            rounds: DEFAULT_ROUNDS,
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Figures {
    requests: u64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU time of this process (HTTP clients and the api) per request
    /// measured, over the measured window.
    process_cpu_us: f64,
    /// CPU time of PostgreSQL (the api's backends and the server's
    /// background processes) per request measured, over the same window.
    postgres_cpu_us: f64,
    /// CPU time of the Redis server (the rate limiter's store) per request
    /// measured, over the same window; `None` when it is not a process of
    /// this machine.
    redis_cpu_us: Option<f64>,
}

impl Figures {
    fn of(m: &Measured) -> Self {
        Self {
            requests: m.operations,
            per_s: m.per_second(),
            p50_ms: m.quantile_ms(0.50),
            p99_ms: m.quantile_ms(0.99),
            max_ms: m.max_ms(),
            process_cpu_us: 0.0,
            postgres_cpu_us: 0.0,
            redis_cpu_us: None,
        }
    }
}

#[derive(Debug, Serialize)]
struct AuthTime {
    concurrency: usize,
    calls: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

#[derive(Debug, Serialize)]
struct Round {
    healthz: Figures,
    me: Figures,
    /// `me` requests/s ÷ `healthz` requests/s.
    ratio: f64,
    /// PostgreSQL transactions committed on the scratch database per `me`
    /// request (limiter and audit batches, plus background work).
    transactions_per_me: f64,
    /// Rate-limit decisions per batch the api sent.
    decisions_per_batch: f64,
    /// Audit entries per batch the api sent.
    entries_per_batch: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    clients: usize,
    /// Every round, in the order run.
    rounds: Vec<Round>,
    /// The index in `rounds` of the round with the median ratio.
    median: usize,
    auth: Vec<AuthTime>,
    malformed_requests: usize,
    /// Key lookups the api sent to PostgreSQL for them (its own counter).
    malformed_lookups: u64,
    /// Scans of `api_keys` PostgreSQL counted meanwhile.
    malformed_api_key_scans: i64,
    /// The same, for one request with a valid key (the positive control).
    control_api_key_scans: i64,
}

pub async fn run(common: &Common, args: &Args) -> anyhow::Result<Section> {
    ensure!(args.clients > 0, "--clients must be above 0");
    let window = common.window()?;
    let base_url = common.database_url()?;
    let scratch = Scratch::create(base_url).await?;
    eprintln!("auth: measuring in scratch database {}", scratch.name());
    let database_url = database_url_for(base_url, scratch.name());

    let measured = tokio::select! {
        r = measure(&scratch, &database_url, args, window) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    Ok(section(&measured?, window))
}

/// The Redis server's process id, when it runs on this machine (for its CPU
/// time): found once, by [`measure`].
static REDIS_PID: OnceLock<Option<u32>> = OnceLock::new();

/// The process id Redis at `url` reports, if that process is a `redis-*`
/// of this machine.
async fn redis_pid(url: &str) -> Option<u32> {
    let mut conn = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    let pid: u32 = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.starts_with("redis").then_some(pid)
}

async fn measure(
    scratch: &Scratch,
    database_url: &str,
    args: &Args,
    window: Window,
) -> anyhow::Result<Results> {
    // One connection of our own: between phases, it is the only one left.
    let stats = scratch.pool(1).await?;
    let keys = insert_keys(&stats, args.clients).await?;
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..12]);
    let config = api::config::Config::for_test(database_url, &args.nats_url, &prefix)
        .context("failed to configure the api")?;
    if REDIS_PID.get().is_none() {
        let _ = REDIS_PID.set(redis_pid(&config.redis_url).await);
    }
    let stream = config.nats_prefix.stream_name();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(30))
        .build()
        .context("failed to build an HTTP client")?;

    let results = measure_phases(&stats, &config, &client, &keys, args, window).await;

    if let Ok(nats) = async_nats::connect(&args.nats_url).await {
        let _ = async_nats::jetstream::new(nats)
            .delete_stream(&stream)
            .await;
    }
    stats.close().await;
    results
}

/// An api instance running in this process (the `leads` scenario uses it too).
pub struct RunningApi {
    pub base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningApi {
    pub async fn start(
        config: &api::config::Config,
        client: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind a port for the api")?;
        let base = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let task = tokio::spawn(api::run(
            config.clone(),
            listener,
            stop.clone().cancelled_owned(),
        ));
        let api = Self { base, stop, task };
        wait_ready(client, &api.base).await?;
        Ok(api)
    }

    /// Stops it and waits until it has closed its connections.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("the api task failed")?
    }
}

async fn measure_phases(
    stats: &PgPool,
    config: &api::config::Config,
    client: &reqwest::Client,
    keys: &[String],
    args: &Args,
    window: Window,
) -> anyhow::Result<Results> {
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let r = measure_round(stats, config, client, keys, args, window).await?;
        eprintln!(
            "auth: round {round}: /healthz {:.0}/s, /api/v1/me {:.0}/s: {:.2}×",
            r.healthz.per_s, r.me.per_s, r.ratio
        );
        rounds.push(r);
    }
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| rounds[a].ratio.total_cmp(&rounds[b].ratio));
    let median = order[order.len() / 2];

    // Authentication alone, on a cache hit: the function the middleware calls.
    let mut auth = Vec::new();
    for concurrency in [1, args.clients] {
        let time = auth_time(stats, &keys[0], concurrency, window).await?;
        eprintln!(
            "auth: authenticate() on a cache hit, {concurrency:>2} tasks: p50 {:.1} µs  p99 {:.1} µs",
            time.p50_us, time.p99_us
        );
        auth.push(time);
    }

    // Malformed keys, counted by the api (lookups sent) and by PostgreSQL
    // (scans of api_keys, complete once the api's connections have closed).
    let before = settled(stats, API_KEY_SCANS).await?;
    let api = RunningApi::start(config, client).await?;
    let lookups_before = authenticate::database_lookups();
    let burst = malformed_burst(client, &api.base, &keys[0], args.clients).await;
    let malformed_lookups = authenticate::database_lookups() - lookups_before;
    api.stop().await?;
    burst?;
    let after_burst = settled(stats, API_KEY_SCANS).await?;
    // The positive control: one valid key never used by this instance.
    let api = RunningApi::start(config, client).await?;
    let control = get(
        client.clone(),
        format!("{}/api/v1/me", api.base),
        Some(keys[1 % keys.len()].clone()),
    )
    .await;
    api.stop().await?;
    control?;
    let after_control = settled(stats, API_KEY_SCANS).await?;
    let malformed_api_key_scans = after_burst - before;
    let control_api_key_scans = after_control - after_burst;
    eprintln!(
        "auth: {MALFORMED_REQUESTS} malformed keys: {malformed_lookups} key lookups, \
         {malformed_api_key_scans} scans of api_keys (one valid key: {control_api_key_scans})"
    );

    Ok(Results {
        clients: args.clients,
        rounds,
        median,
        auth,
        malformed_requests: MALFORMED_REQUESTS,
        malformed_lookups,
        malformed_api_key_scans,
        control_api_key_scans,
    })
}

/// One round: `/healthz` on a fresh instance, then `/api/v1/me` on another.
async fn measure_round(
    stats: &PgPool,
    config: &api::config::Config,
    client: &reqwest::Client,
    keys: &[String],
    args: &Args,
    window: Window,
) -> anyhow::Result<Round> {
    // Unauthenticated: no layer but the request id, trace and timeout.
    let api = RunningApi::start(config, client).await?;
    let healthz = closed_loop(stats, client, &api.base, "/healthz", None, args, window).await;
    api.stop().await?;
    let (healthz, _) = healthz?;

    // Authenticated: every layer, each client with its own key. The
    // transactions are counted once the instance has exited.
    let commits_before = settled(stats, COMMITS).await?;
    let sent_before = api::gate::sent();
    let api = RunningApi::start(config, client).await?;
    let me = closed_loop(
        stats,
        client,
        &api.base,
        "/api/v1/me",
        Some(keys),
        args,
        window,
    )
    .await;
    api.stop().await?;
    let (me, sent) = me?;
    let transactions_per_me =
        (settled(stats, COMMITS).await? - commits_before) as f64 / sent.max(1) as f64;
    let batched = api::gate::sent();
    let per_batch = |items: u64, batches: u64| items as f64 / batches.max(1) as f64;
    let decisions_per_batch = per_batch(
        batched.decisions - sent_before.decisions,
        batched.decision_batches - sent_before.decision_batches,
    );
    let entries_per_batch = per_batch(
        batched.entries - sent_before.entries,
        batched.entry_batches - sent_before.entry_batches,
    );
    eprintln!(
        "auth: {transactions_per_me:.3} transactions per /api/v1/me; per batch: \
         {decisions_per_batch:.1} decisions, {entries_per_batch:.1} entries"
    );
    Ok(Round {
        decisions_per_batch,
        entries_per_batch,
        ratio: if healthz.per_s > 0.0 {
            me.per_s / healthz.per_s
        } else {
            0.0
        },
        healthz,
        me,
        transactions_per_me,
    })
}

/// `clients` tasks sending `GET path` in a closed loop (with one key each,
/// when given); the figures and how many requests were sent in all.
async fn closed_loop(
    stats: &PgPool,
    client: &reqwest::Client,
    base: &str,
    path: &str,
    keys: Option<&[String]>,
    args: &Args,
    window: Window,
) -> anyhow::Result<(Figures, u64)> {
    let next_key = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (measured, cpu) = cpu::during(
        stats,
        REDIS_PID.get().copied().flatten(),
        window,
        harness::run(args.clients, window, {
            let client = client.clone();
            let url = format!("{base}{path}");
            let keys: Option<Arc<[String]>> = keys.map(|k| k.to_vec().into());
            let sent = sent.clone();
            move || {
                sent.fetch_add(1, Ordering::Relaxed);
                let key = keys.as_ref().map(|keys| {
                    let i = next_key.fetch_add(1, Ordering::Relaxed) as usize;
                    keys[i % keys.len()].clone()
                });
                get(client.clone(), url.clone(), key)
            }
        }),
    )
    .await?;
    let sent = sent.load(Ordering::Relaxed).max(1);
    let mut figures = Figures::of(&measured);
    let per_request = |d: Duration| d.as_secs_f64() * 1e6 / measured.operations.max(1) as f64;
    figures.process_cpu_us = per_request(cpu.here);
    figures.postgres_cpu_us = per_request(cpu.postgres);
    figures.redis_cpu_us = cpu.redis.map(per_request);
    eprintln!(
        "auth: GET {path:<12} {:>8} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  \
         CPU/request: {:.0} µs here, {:.0} µs in PostgreSQL, {:.1} µs in Redis",
        thousands(figures.per_s),
        figures.p50_ms,
        figures.p99_ms,
        figures.process_cpu_us,
        figures.postgres_cpu_us,
        figures.redis_cpu_us.unwrap_or(f64::NAN),
    );
    Ok((figures, sent))
}

fn get(
    client: reqwest::Client,
    url: String,
    key: Option<String>,
) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
    Box::pin(async move {
        let mut request = client.get(&url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let status = response.status();
        // Read the body: a request is done when its answer is.
        let body = response.bytes().await.context("failed to read a body")?;
        ensure!(
            status == StatusCode::OK,
            "GET {url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    })
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the api was not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tenant and `n` live keys, written into the read models; their plaintexts.
async fn insert_keys(pool: &PgPool, n: usize) -> anyhow::Result<Vec<String>> {
    let tenant = Uuid::now_v7();
    sqlx::query("insert into tenants (id, name, created_at) values ($1, 'bench', now())")
        .bind(tenant)
        .execute(pool)
        .await
        .context("failed to insert the bench tenant")?;
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let key = PlainKey::generate(Mode::Live);
        sqlx::query(
            "insert into api_keys (id, tenant_id, label, scopes, key_hash, key_start, \
                                   allowed_ips, rate_limit_per_minute, created_at) \
             values ($1, $2, $3, array['read'], $4, $5, array['127.0.0.0/8', '::1/128'], $6, now())",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(format!("bench {i}"))
        .bind(key.hash())
        .bind(key.start())
        .bind(BENCH_RATE_LIMIT)
        .execute(pool)
        .await
        .context("failed to insert a bench key")?;
        keys.push(key.expose().to_owned());
    }
    Ok(keys)
}

/// `concurrency` tasks calling `KeyCache::authenticate` with a cached key for
/// the measurement window; each call timed in nanoseconds.
async fn auth_time(
    pool: &PgPool,
    key: &str,
    concurrency: usize,
    window: Window,
) -> anyhow::Result<AuthTime> {
    let cache = KeyCache::new(pool.clone());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().context("a header value")?,
    );
    cache
        .authenticate(&headers)
        .await
        .map_err(|r| anyhow::anyhow!("the bench key was refused: {}", r.error.code()))?;
    let headers = Arc::new(headers);
    let until = Instant::now() + window.measure;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (cache, headers) = (cache.clone(), headers.clone());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3)?;
            while Instant::now() < until {
                let began = Instant::now();
                let principal = cache.authenticate(&headers).await;
                let ns = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                ensure!(principal.is_ok(), "a cached key was refused");
                h.saturating_record(ns.max(1));
                // Let the other tasks run, as requests would.
                tokio::task::yield_now().await;
            }
            anyhow::Ok(h)
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3)?;
    while let Some(joined) = tasks.join_next().await {
        all.add(joined.context("an auth task panicked")??)?;
    }
    Ok(AuthTime {
        concurrency,
        calls: all.len(),
        p50_us: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: all.value_at_quantile(0.99) as f64 / 1000.0,
        max_us: all.max() as f64 / 1000.0,
    })
}

/// Malformed keys of every kind: bad checksum, bad length, bad prefix.
async fn malformed_burst(
    client: &reqwest::Client,
    base: &str,
    valid: &str,
    clients: usize,
) -> anyhow::Result<()> {
    let url = format!("{base}/api/v1/me");
    let per_client = MALFORMED_REQUESTS.div_ceil(clients);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, url, valid) = (client.clone(), url.clone(), valid.to_owned());
        tasks.spawn(async move {
            for i in 0..per_client {
                let key = match (c + i) % 3 {
                    0 => format!(
                        "{}{}",
                        &valid[..valid.len() - 1],
                        if valid.ends_with('a') { 'b' } else { 'a' }
                    ),
                    1 => format!("{valid}x"),
                    _ => valid.replace("jns_live_", "jns_prod_"),
                };
                let response = client.get(&url).bearer_auth(key).send().await?;
                ensure!(
                    response.status() == StatusCode::UNAUTHORIZED,
                    "a malformed key got {}",
                    response.status()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a client task panicked")??;
    }
    Ok(())
}

/// Scans of `api_keys`, whoever made them.
const API_KEY_SCANS: &str =
    "select coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::bigint \
     from pg_stat_user_tables where relname = 'api_keys'";
/// Transactions committed on the scratch database.
const COMMITS: &str = "select xact_commit from pg_stat_database where datname = current_database()";

/// A statistics counter (`query`) once every other backend on the database
/// has exited: a backend reports its counters up to 10 s late while it
/// lives, but always before it exits (and leaves `pg_stat_activity` only
/// after that), so the count is then complete.
async fn settled(stats: &PgPool, query: &str) -> anyhow::Result<i64> {
    let mut conn = stats.acquire().await.context("the statistics connection")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *conn)
        .await
        .context("failed to read pg_stat_activity")?;
        if others == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{others} other backends are still on the scratch database"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Our own transaction's counters are reported at once, not cached.
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .context("failed to refresh the statistics snapshot")?;
    sqlx::query_scalar(query)
        .fetch_one(&mut *conn)
        .await
        .context("failed to read the statistics")
}

/// `base` with its database name replaced by `database`.
pub fn database_url_for(base: &str, database: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let (authority, query) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path.split_once('?').map(|(_, q)| q)),
        None => (
            rest.split('?').next().unwrap_or(rest),
            rest.split_once('?').map(|(_, q)| q),
        ),
    };
    match query {
        Some(q) => format!("{scheme}://{authority}/{database}?{q}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

fn section(r: &Results, window: Window) -> Section {
    let mut md = String::from("## auth: every /api/v1 layer against none\n\n");
    md.push_str(&format!(
        "One in-process api (pool of 32 connections), {} concurrent HTTP/1.1 clients in a \
         closed loop on the same machine, {} s measured after {} s warm-up. `GET /healthz` \
         passes no layer but request id, trace and timeout; `GET /api/v1/me` passes all: \
         authentication (key cache), scope, IP allowlist, the global rate limit (one Redis \
         script call per batch of requests) and the audit entry (one group commit per \
         batch), each client with its own key.\n\n",
        r.clients,
        window.measure.as_secs_f64(),
        window.warmup.as_secs_f64(),
    ));
    let m = &r.rounds[r.median];
    md.push_str(&format!(
        "{} rounds of both, alternating; the table is the round with the median ratio \
         (ratios of every round: {}).\n\n",
        r.rounds.len(),
        r.rounds
            .iter()
            .map(|x| format!("{:.2}×", x.ratio))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str(
        "| request | req/s | p50 ms | p99 ms | max ms | CPU µs/request: clients + api | PostgreSQL | Redis |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, f) in [("GET /healthz", &m.healthz), ("GET /api/v1/me", &m.me)] {
        md.push_str(&format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {} |\n",
            thousands(f.per_s),
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.process_cpu_us,
            f.postgres_cpu_us,
            f.redis_cpu_us
                .map_or_else(|| "—".to_owned(), |us| format!("{us:.1}")),
        ));
    }
    md.push_str(&format!(
        "\nRatio /api/v1/me ÷ /healthz: **{:.2}×** (goal ≥ {GOAL_RATIO}). PostgreSQL \
         transactions per /api/v1/me request: {:.3} (group commits of the audit log, plus \
         background work); per batch: {:.1} rate-limit decisions (one Redis call), {:.1} \
         audit entries (one PostgreSQL transaction).\n\n",
        m.ratio, m.transactions_per_me, m.decisions_per_batch, m.entries_per_batch
    ));
    md.push_str(
        "`KeyCache::authenticate` on a cache hit (header parse, checksum, SHA-256, cache \
         lookup, tombstone and expiry checks, principal clone):\n\n\
         | tasks | calls | p50 µs | p99 µs | max µs |\n|---:|---:|---:|---:|---:|\n",
    );
    for a in &r.auth {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            a.concurrency,
            thousands(a.calls as f64),
            a.p50_us,
            a.p99_us,
            a.max_us
        ));
    }
    md.push_str(&format!(
        "\nMalformed keys: {} requests, {} key lookups sent by the api, {} scans of `api_keys` \
         counted by PostgreSQL (counted once the api had exited; one request with a valid key \
         on a fresh instance, the control: {} scans).\n",
        r.malformed_requests,
        r.malformed_lookups,
        r.malformed_api_key_scans,
        r.control_api_key_scans
    ));

    let auth_p99_ms = r.auth.iter().map(|a| a.p99_us).fold(0.0, f64::max) / 1000.0;
    let goals = [
        (
            format!("/api/v1/me ≥ {GOAL_RATIO}× /healthz"),
            format!("{:.2}× (median of {} rounds)", m.ratio, r.rounds.len()),
            m.ratio >= GOAL_RATIO,
        ),
        (
            format!("authentication p99 ≤ {GOAL_AUTH_P99_MS} ms on a cache hit"),
            format!("{auth_p99_ms:.4} ms"),
            auth_p99_ms <= GOAL_AUTH_P99_MS,
        ),
        (
            "no database query for a malformed key".to_owned(),
            format!(
                "{} lookups, {} scans",
                r.malformed_lookups, r.malformed_api_key_scans
            ),
            r.malformed_lookups == 0
                && r.malformed_api_key_scans == 0
                && r.control_api_key_scans > 0,
        ),
    ];
    md.push_str("\nGoals (issue 3):\n\n");
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
        name: "auth",
        markdown: md,
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::database_url_for;

    #[test]
    fn the_database_is_replaced() {
        assert_eq!(
            database_url_for("postgres://postgres@127.0.0.1:5432/postgres", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            database_url_for("postgres://u:p@h:1/db?sslmode=disable", "b2"),
            "postgres://u:p@h:1/b2?sslmode=disable"
        );
        assert_eq!(
            database_url_for("postgres://h:1", "b3"),
            "postgres://h:1/b3"
        );
    }
}
