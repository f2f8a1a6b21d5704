//! The `webhooks` scenario (issue 5): the api and the projector in this
//! process, the dispatcher as a process of its own (the `jeanus-dispatcher`
//! release binary, so that its memory is its own), delivering to real HTTP
//! receivers on 127.0.0.1 (`jeanus_tests::receiver`):
//!
//! - end-to-end latency at `--rate` stage changes per second (open loop):
//!   from a `PATCH /api/v1/leads/{id}` being answered to its
//!   `lead.stage_changed` reaching the subscriber, p50/p99;
//! - the same with a hanging and a failing receiver subscribed too (their
//!   deliveries are made by the same dispatcher at the same time). The two
//!   kinds of phase alternate for `--rounds` rounds, healthy first in odd
//!   rounds and faulty first in even ones (so that neither kind is always the
//!   later, on a fuller table), each phase at the same rate for the same
//!   window, with receivers and subscriptions of its own (the previous
//!   phase's are unsubscribed first), so that both see the same load and the
//!   same machine; a first phase, not counted, warms everything up;
//! - sustained deliveries per second: leads with a ~1 KiB body created as
//!   fast as the api takes them, each delivered to `--endpoints` endpoints
//!   whose receivers take `--receiver-ms` to answer; meanwhile the
//!   dispatcher's resident memory is sampled (`/proc/<pid>/status`), as it
//!   is once at idle, after start-up.
//!
//! `--dispatcher PATH` measures another build of the dispatcher (main's,
//! say) under the same bench, api and projector.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use api::config::Secret;
use hdrhistogram::Histogram;
use jeanus_tests::process::{Memory, Service};
use jeanus_tests::receiver::{Behaviour, Receiver};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::{database_url_for, RunningApi};
use crate::database::Scratch;
use crate::harness::Window;
use crate::report::{thousands, Section};
use crate::Common;

const ADMIN_TOKEN: &str = "bench-operator-token-0123456789";
const LEADS: usize = 200;
/// Issue 5's goals.
const GOAL_P99_MS: f64 = 50.0;
const GOAL_DELIVERIES_PER_S: f64 = 2000.0;
const GOAL_RISE: f64 = 0.10;
const GOAL_RESIDENT_MB: f64 = 100.0;
/// How often the dispatcher's memory is read during the throughput phase.
const MEMORY_SAMPLE: Duration = Duration::from_millis(100);
/// How long the dispatcher runs before its idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Stage changes per second during the latency measurement.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Rounds of the latency measurement: each is a phase with healthy
    /// receivers only and one with a hanging and a failing one beside them.
    /// Four by default: on a shared machine one pair's p99 says little.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Endpoints (one receiver each) during the throughput measurement.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// How long each receiver takes to answer, in milliseconds.
    #[arg(long, default_value_t = 2)]
    receiver_ms: u64,
    /// The dispatcher binary to run (default: `jeanus-dispatcher` beside
    /// this program).
    #[arg(long)]
    dispatcher: Option<PathBuf>,
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
            rate: 500.0,
            rounds: 4,
            endpoints: 100,
            receiver_ms: 2,
            dispatcher: None,
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        }
    }
}

/// One latency phase.
struct Phase {
    faulty: bool,
    /// PATCHes answered 200 inside the measured window.
    changes: u64,
    /// PATCHes the api refused (503 under overload): not counted.
    refused: u64,
    /// Of `changes`, how many reached the healthy receiver.
    received: u64,
    latency: Histogram<u64>,
    /// CPU time the dispatcher process used during the phase's load.
    dispatcher_cpu: Duration,
    /// Requests the hanging and the failing receivers got.
    faulty_requests: usize,
}

impl Phase {
    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

struct Results {
    phases: Vec<Phase>,
    /// Every healthy phase's latencies, and every faulty phase's.
    healthy: Histogram<u64>,
    faulty: Histogram<u64>,
    events: usize,
    deliveries: u64,
    deliveries_per_s: f64,
    /// The most resident memory sampled during the throughput phase.
    throughput_resident: u64,
    /// The dispatcher's high-water mark over its whole run.
    peak_resident: u64,
    /// The dispatcher's resident memory at idle, after start-up.
    idle_resident: u64,
}

pub async fn run(common: &Common, args: &Args) -> anyhow::Result<Section> {
    ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be above 0"
    );
    ensure!(args.endpoints > 0, "--endpoints must be above 0");
    ensure!(args.rounds > 0, "--rounds must be above 0");
    let window = common.window()?;
    let base_url = common.database_url()?;
    let scratch = Scratch::create(base_url).await?;
    eprintln!("webhooks: measuring in scratch database {}", scratch.name());
    let database_url = database_url_for(base_url, scratch.name());
    let measured = tokio::select! {
        r = measure(&database_url, args, window) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    scratch.drop().await;
    let r = measured?;
    Ok(section(&r, args, window))
}

async fn measure(database_url: &str, args: &Args, window: Window) -> anyhow::Result<Results> {
    let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..12]);
    let mut api_config = api::config::Config::for_test(database_url, &args.nats_url, &prefix)
        .context("failed to configure the api")?;
    api_config.admin_token = Some(Secret::new(ADMIN_TOKEN));
    let key = api_config
        .secret_key
        .clone()
        .context("the api has no secret key")?;
    let projector_config =
        projector::config::Config::for_test(database_url, &args.nats_url, &prefix)?;
    let stop = CancellationToken::new();
    let projector = tokio::spawn(projector::run(
        projector_config,
        stop.clone().cancelled_owned(),
    ));
    // The default retry schedule (5 s first): the failing receiver's
    // deliveries come due again within a phase.
    let program = match &args.dispatcher {
        Some(path) => path.clone(),
        None => jeanus_tests::process::locate("jeanus-dispatcher").map_err(anyhow::Error::msg)?,
    };
    let dispatcher = Service::spawn_program(
        &program,
        &[],
        &[
            ("DATABASE_URL", database_url.to_owned()),
            ("NATS_URL", args.nats_url.clone()),
            ("JEANUS_NATS_PREFIX", prefix.clone()),
            (schema::sealing::SECRET_KEY_VAR, key.to_base64()),
            ("JEANUS_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let api = RunningApi::start(&api_config, &client).await?;

    let result = async {
        // Idle: connected, its intake following the stream, nothing to send.
        tokio::time::sleep(IDLE_SETTLE).await;
        let idle_resident = dispatcher
            .memory()
            .context("the dispatcher process has exited")?
            .resident;
        // A tenant and key per phase: a key may make 10,000 requests a minute.
        // One phase first that is not counted: the first phase on a fresh
        // database and processes ran up to ten times slower than the same
        // phase later (pools filling, plans, tables growing from empty), and
        // would be charged to the healthy kind alone.
        eprintln!("webhooks: warm-up phase (not counted)");
        let caller = Caller::new(&client, &api.base).await?;
        latency_phase(&caller, args, window, false, &dispatcher).await?;
        let mut phases = Vec::new();
        for round in 1..=args.rounds {
            let order = if round % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            for faulty in order {
                eprintln!(
                    "webhooks: round {round}/{}, {} receivers",
                    args.rounds,
                    if faulty { "faulty" } else { "healthy" }
                );
                let caller = Caller::new(&client, &api.base).await?;
                phases.push(latency_phase(&caller, args, window, faulty, &dispatcher).await?);
            }
        }
        let caller = Caller::new(&client, &api.base).await?;
        let (events, deliveries, per_s, throughput_resident) =
            throughput_phase(&caller, args, window, &dispatcher).await?;
        let peak_resident = dispatcher
            .memory()
            .context("the dispatcher process has exited")?
            .peak;
        let mut healthy = histogram()?;
        let mut faulty = histogram()?;
        for phase in &phases {
            let pooled = if phase.faulty {
                &mut faulty
            } else {
                &mut healthy
            };
            pooled.add(&phase.latency)?;
        }
        anyhow::Ok(Results {
            phases,
            healthy,
            faulty,
            events,
            deliveries,
            deliveries_per_s: per_s,
            throughput_resident,
            peak_resident,
            idle_resident,
        })
    }
    .await;

    api.stop().await?;
    drop(dispatcher);
    stop.cancel();
    let _ = projector.await;
    if let Ok(nats) = async_nats::connect(&args.nats_url).await {
        let _ = async_nats::jetstream::new(nats)
            .delete_stream(api_config.nats_prefix.stream_name())
            .await;
    }
    result
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("failed to create a histogram")
}

/// A tenant's write key on the running api.
#[derive(Clone)]
struct Caller {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Caller {
    async fn new(client: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let admin = |path: &str, body: Value| {
            client
                .post(format!("{base}{path}"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
        };
        let tenant: Value = admin("/admin/v1/tenants", json!({"name": "bench"}))
            .await?
            .json()
            .await?;
        let tenant = tenant["data"]["id"]
            .as_str()
            .context("no tenant id")?
            .to_owned();
        let key: Value = admin(
            &format!("/admin/v1/tenants/{tenant}/keys"),
            json!({"label": "bench", "scopes": ["write"], "rate_limit_per_minute": 10_000u32}),
        )
        .await?
        .json()
        .await?;
        Ok(Self {
            client: client.clone(),
            base: base.to_owned(),
            key: key["data"]["key"].as_str().context("no key")?.to_owned(),
        })
    }

    /// The response, whatever its status.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Ok(request.send().await?)
    }

    /// The response, which must be a success.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let response = self.request(method, path, body).await?;
        ensure!(
            response.status().is_success(),
            "{path} answered {}",
            response.status()
        );
        Ok(response)
    }

    /// Subscribes `url` to `event`; the endpoint's id.
    async fn subscribe(&self, url: &str, event: &str) -> anyhow::Result<Uuid> {
        let body: Value = self
            .send(
                reqwest::Method::POST,
                "/api/v1/webhooks",
                Some(json!({"url": url, "events": [event]})),
            )
            .await?
            .json()
            .await?;
        id_of(&body)
    }

    async fn unsubscribe(&self, endpoint: Uuid) -> anyhow::Result<()> {
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/v1/webhooks/{endpoint}"),
            None,
        )
        .await?;
        Ok(())
    }

    async fn create_lead(&self, name: &str, notes: &str) -> anyhow::Result<Uuid> {
        let body: Value = self
            .send(
                reqwest::Method::POST,
                "/api/v1/leads",
                Some(json!({"name": name, "notes": notes})),
            )
            .await?
            .json()
            .await?;
        id_of(&body)
    }

    /// Moves a lead to `stage`: its new version, or `None` when the api
    /// refused under overload (503).
    async fn move_lead(&self, lead: Uuid, stage: &str) -> anyhow::Result<Option<i64>> {
        let response = self
            .request(
                reqwest::Method::PATCH,
                &format!("/api/v1/leads/{lead}"),
                Some(json!({"stage": stage})),
            )
            .await?;
        if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Ok(None);
        }
        ensure!(
            response.status().is_success(),
            "PATCH /api/v1/leads/{lead} answered {}",
            response.status()
        );
        response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse().ok())
            .map(Some)
            .context("no ETag")
    }
}

fn id_of(body: &Value) -> anyhow::Result<Uuid> {
    body["data"]["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .context("no id in the response")
}

/// Open loop at `--rate` stage changes per second through the warm-up and
/// the window; the latency of each change made in the window from its
/// PATCH's answer to its receipt by the healthy subscriber (with a hanging
/// and a failing one subscribed beside it when `faulty`). Every endpoint of
/// the phase is unsubscribed at its end.
async fn latency_phase(
    caller: &Caller,
    args: &Args,
    window: Window,
    faulty: bool,
    dispatcher: &Service,
) -> anyhow::Result<Phase> {
    let receiver = Receiver::start().await;
    let mut endpoints = vec![
        caller
            .subscribe(&receiver.url, "lead.stage_changed")
            .await?,
    ];
    // With `faulty`, two more subscribers: one that never answers (the
    // dispatcher gives up after its 15 s timeout) and one that always
    // answers 500 (retried on the default schedule: 5 s, then 5 min).
    let mut faults = Vec::new();
    if faulty {
        for behaviour in [Behaviour::Hang, Behaviour::Status(500)] {
            let fault = Receiver::start().await;
            fault.set(behaviour);
            endpoints.push(caller.subscribe(&fault.url, "lead.stage_changed").await?);
            faults.push(fault);
        }
    }
    let mut leads = Vec::with_capacity(LEADS);
    for i in 0..LEADS {
        leads.push(caller.create_lead(&format!("Lead {i}"), "").await?);
    }

    // (lead, version) → when the PATCH was answered, for changes made in the window.
    let acknowledged: Arc<Mutex<HashMap<(Uuid, i64), Instant>>> = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let cpu_before = dispatcher.cpu_time().unwrap_or_default();
    let started = Instant::now();
    let measured_from = started + window.warmup;
    let until = measured_from + window.measure;
    let mut tasks = JoinSet::new();
    let mut tick = 0usize;
    while Instant::now() < until {
        let lead = leads[tick % LEADS];
        let stage = if (tick / LEADS).is_multiple_of(2) {
            "contacted"
        } else {
            "qualified"
        };
        let caller = caller.clone();
        let acknowledged = acknowledged.clone();
        let counted = Instant::now() >= measured_from;
        tasks.spawn(async move {
            let Some(version) = caller.move_lead(lead, stage).await? else {
                return anyhow::Ok(counted);
            };
            if counted {
                acknowledged
                    .lock()
                    .await
                    .insert((lead, version), Instant::now());
            }
            anyhow::Ok(false)
        });
        tick += 1;
        let next = started + interval * tick as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    let mut refused = 0u64;
    while let Some(joined) = tasks.join_next().await {
        if joined?? {
            refused += 1;
        }
    }
    let acknowledged = acknowledged.lock().await;
    let changes = acknowledged.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || {
        receiver
            .requests()
            .iter()
            .filter(|r| key_of(&r.json()).is_some_and(|k| acknowledged.contains_key(&k)))
            .count()
    };
    while count() < changes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dispatcher_cpu = dispatcher
        .cpu_time()
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    let mut latency = histogram()?;
    let mut received = 0;
    for request in receiver.requests() {
        if let Some(at) = key_of(&request.json()).and_then(|k| acknowledged.get(&k)) {
            let micros = request.at.saturating_duration_since(*at).as_micros();
            latency.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            received += 1;
        }
    }
    let faulty_requests = faults.iter().map(|f| f.requests().len()).sum();
    for endpoint in endpoints {
        caller.unsubscribe(endpoint).await?;
    }
    Ok(Phase {
        faulty,
        changes: changes as u64,
        refused,
        received,
        latency,
        dispatcher_cpu,
        faulty_requests,
    })
}

/// The (lead, version) a `lead.stage_changed` body is about.
fn key_of(body: &Value) -> Option<(Uuid, i64)> {
    let lead = body["data"]["lead"]["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())?;
    Some((lead, body["data"]["version"].as_i64()?))
}

/// Leads with ~1 KiB bodies, each delivered to every endpoint; deliveries/s
/// from the first create to the last receipt, and the most resident memory
/// the dispatcher had meanwhile.
async fn throughput_phase(
    caller: &Caller,
    args: &Args,
    window: Window,
    dispatcher: &Service,
) -> anyhow::Result<(usize, u64, f64, u64)> {
    let mut receivers = Vec::with_capacity(args.endpoints);
    for _ in 0..args.endpoints {
        let receiver = Receiver::start().await;
        receiver.set(Behaviour::Slow(Duration::from_millis(args.receiver_ms)));
        caller.subscribe(&receiver.url, "lead.created").await?;
        receivers.push(receiver);
    }
    // Enough events to keep the dispatcher busy for about the window at the goal.
    let events = ((GOAL_DELIVERIES_PER_S * 1.5 * window.measure.as_secs_f64())
        / args.endpoints as f64)
        .ceil()
        .max(1.0) as usize;
    let notes = "x".repeat(700);
    eprintln!("webhooks: {events} events to {} endpoints", args.endpoints);
    let mut most = dispatcher.memory().map_or(0, |m| m.resident);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..events {
        let caller = caller.clone();
        let notes = notes.clone();
        tasks.spawn(async move { caller.create_lead(&format!("Bulk {i}"), &notes).await });
        if tasks.len() >= 8 {
            if let Some(joined) = tasks.join_next().await {
                joined??;
            }
        }
        if i % 16 == 0 {
            most = most.max(dispatcher.memory().map_or(0, |m: Memory| m.resident));
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let expected = (events * args.endpoints) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let count = || {
        receivers
            .iter()
            .map(|r| r.requests().len() as u64)
            .sum::<u64>()
    };
    while count() < expected && Instant::now() < deadline {
        most = most.max(dispatcher.memory().map_or(0, |m| m.resident));
        tokio::time::sleep(MEMORY_SAMPLE).await;
    }
    let last = receivers
        .iter()
        .flat_map(|r| r.requests().into_iter().map(|q| q.at))
        .max()
        .unwrap_or(started);
    let delivered = count();
    let seconds = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-3);
    Ok((events, delivered, delivered as f64 / seconds, most))
}

fn section(r: &Results, args: &Args, window: Window) -> Section {
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let healthy_p99 = ms(&r.healthy, 0.99);
    let faulty_p99 = ms(&r.faulty, 0.99);
    let rise = faulty_p99 / healthy_p99.max(1e-3) - 1.0;
    let all_received = r.phases.iter().all(|p| p.received == p.changes);
    let mut rows = String::new();
    for (i, p) in r.phases.iter().enumerate() {
        rows.push_str(&format!(
            "| {round} | {kind} | {changes} | {refused} | {received} | {p50:.1} | {p99:.1} | {max:.1} | {cpu:.2} | {bad} |\n",
            round = i / 2 + 1,
            kind = if p.faulty { "+ hanging + failing" } else { "healthy only" },
            changes = p.changes,
            refused = p.refused,
            received = p.received,
            p50 = p.ms(0.5),
            p99 = p.ms(0.99),
            max = p.latency.max() as f64 / 1000.0,
            cpu = p.dispatcher_cpu.as_secs_f64(),
            bad = p.faulty_requests,
        ));
    }
    let markdown = format!(
        "## webhooks\n\n\
         End to end (PATCH answered → receiver got it) at {rate} stage changes/s, \
         {seconds:.0} s measured after {warmup:.0} s of warm-up per phase; in the faulty phases a hanging \
         and a failing (500) receiver are subscribed too, and the dispatcher delivers to them \
         at the same time:\n\n\
         | round | receivers | changes | refused | received | p50 ms | p99 ms | max ms | dispatcher CPU s | requests to the bad receivers |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}\n\
         All healthy phases: p50 {hp50:.1} ms, p99 {healthy_p99:.1} ms (goal p99 ≤ {GOAL_P99_MS} ms {m1}). \
         All faulty phases: the healthy receiver's p50 {fp50:.1} ms, p99 {faulty_p99:.1} ms \
         ({rise:+.0} %; goal ≤ +{goal_rise:.0} % {m3}).\n\n\
         Sustained: {events} lead.created events × {endpoints} endpoints (receivers answer in {ms} ms, \
         ~1 KiB bodies): {deliveries} deliveries, {per_s} deliveries/s \
         (goal ≥ {goal} {m2}). The dispatcher's resident memory (its own process): {idle:.1} MB \
         at idle after start-up, at most {tr:.1} MB sampled during this phase, high-water mark \
         {peak:.1} MB over the whole run (goal ≤ {GOAL_RESIDENT_MB:.0} MB {m4}).\n",
        rate = args.rate,
        seconds = window.measure.as_secs_f64(),
        warmup = window.warmup.as_secs_f64(),
        hp50 = ms(&r.healthy, 0.5),
        fp50 = ms(&r.faulty, 0.5),
        m1 = mark(healthy_p99 <= GOAL_P99_MS && all_received),
        rise = rise * 100.0,
        goal_rise = GOAL_RISE * 100.0,
        m3 = mark(rise <= GOAL_RISE && all_received),
        events = r.events,
        endpoints = args.endpoints,
        ms = args.receiver_ms,
        deliveries = thousands(r.deliveries as f64),
        per_s = thousands(r.deliveries_per_s),
        goal = thousands(GOAL_DELIVERIES_PER_S),
        m2 = mark(r.deliveries_per_s >= GOAL_DELIVERIES_PER_S),
        idle = mb(r.idle_resident),
        tr = mb(r.throughput_resident),
        peak = mb(r.peak_resident),
        m4 = mark(mb(r.peak_resident) <= GOAL_RESIDENT_MB),
    );
    let phases: Vec<Value> = r
        .phases
        .iter()
        .map(|p| {
            json!({
                "faulty": p.faulty,
                "changes": p.changes,
                "refused": p.refused,
                "received": p.received,
                "p50_ms": p.ms(0.5),
                "p99_ms": p.ms(0.99),
                "max_ms": p.latency.max() as f64 / 1000.0,
                "dispatcher_cpu_s": p.dispatcher_cpu.as_secs_f64(),
                "faulty_requests": p.faulty_requests,
            })
        })
        .collect();
    let json = json!({
        "rate": args.rate,
        "phases": phases,
        "healthy_p50_ms": ms(&r.healthy, 0.5),
        "healthy_p99_ms": healthy_p99,
        "faulty_p50_ms": ms(&r.faulty, 0.5),
        "faulty_p99_ms": faulty_p99,
        "faulty_rise": rise,
        "events": r.events,
        "endpoints": args.endpoints,
        "deliveries": r.deliveries,
        "deliveries_per_s": r.deliveries_per_s,
        "dispatcher_resident_bytes": r.throughput_resident,
        "dispatcher_peak_resident_bytes": r.peak_resident,
        "dispatcher_idle_resident_bytes": r.idle_resident,
    });
    Section {
        name: "webhooks",
        markdown,
        json,
    }
}
