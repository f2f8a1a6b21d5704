//! The `webhooks` scenario (issue 5): the api, the projector and the
//! dispatcher in this process, delivering to real HTTP receivers on
//! 127.0.0.1 (`jeanus_tests::receiver`):
//!
//! - end-to-end latency at `--rate` stage changes per second (open loop):
//!   from a `PATCH /api/v1/leads/{id}` being answered to its
//!   `lead.stage_changed` reaching the subscriber, p50/p99;
//! - sustained deliveries per second: leads with a ~1 KiB body created as
//!   fast as the api takes them, each delivered to `--endpoints` endpoints
//!   whose receivers take `--receiver-ms` to answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use api::config::Secret;
use hdrhistogram::Histogram;
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

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Stage changes per second during the latency measurement.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Endpoints (one receiver each) during the throughput measurement.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// How long each receiver takes to answer, in milliseconds.
    #[arg(long, default_value_t = 2)]
    receiver_ms: u64,
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
            endpoints: 100,
            receiver_ms: 2,
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        }
    }
}

struct Results {
    changes: u64,
    /// PATCHes the api refused (503 under overload): not counted.
    refused: u64,
    received: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The healthy receiver's p99 with a hanging and a failing one beside it.
    faulty_p99_ms: f64,
    events: usize,
    deliveries: u64,
    deliveries_per_s: f64,
}

pub async fn run(common: &Common, args: &Args) -> anyhow::Result<Section> {
    ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be above 0"
    );
    ensure!(args.endpoints > 0, "--endpoints must be above 0");
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
    Ok(section(&r, args))
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
    let dispatcher_config =
        dispatcher::config::Config::for_test(database_url, &args.nats_url, &prefix)?
            .with_secret_key(key);
    let stop = CancellationToken::new();
    let projector = tokio::spawn(projector::run(
        projector_config,
        stop.clone().cancelled_owned(),
    ));
    let dispatcher = tokio::spawn(dispatcher::run(
        dispatcher_config,
        stop.clone().cancelled_owned(),
    ));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let api = RunningApi::start(&api_config, &client).await?;

    let result = async {
        let caller = Caller::new(&client, &api.base).await?;
        let (changes, refused, received, latency) =
            latency_phase(&caller, args, window, false).await?;
        // Again with faulty receivers beside the healthy one (the first
        // phase's receiver is gone too: its endpoint now fails fast).
        let (_, _, _, faulty) = latency_phase(&caller, args, window, true).await?;
        let (events, deliveries, per_s) = throughput_phase(&caller, args, window).await?;
        anyhow::Ok(Results {
            changes,
            refused,
            received,
            p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: latency.max() as f64 / 1000.0,
            faulty_p99_ms: faulty.value_at_quantile(0.99) as f64 / 1000.0,
            events,
            deliveries,
            deliveries_per_s: per_s,
        })
    }
    .await;

    api.stop().await?;
    stop.cancel();
    let _ = projector.await;
    let _ = dispatcher.await;
    if let Ok(nats) = async_nats::connect(&args.nats_url).await {
        let _ = async_nats::jetstream::new(nats)
            .delete_stream(api_config.nats_prefix.stream_name())
            .await;
    }
    result
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

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<reqwest::Response> {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "{path} answered {}",
            response.status()
        );
        Ok(response)
    }

    async fn subscribe(&self, url: &str, event: &str) -> anyhow::Result<()> {
        self.send(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            json!({"url": url, "events": [event]}),
        )
        .await?;
        Ok(())
    }

    async fn create_lead(&self, name: &str, notes: &str) -> anyhow::Result<Uuid> {
        let body: Value = self
            .send(
                reqwest::Method::POST,
                "/api/v1/leads",
                json!({"name": name, "notes": notes}),
            )
            .await?
            .json()
            .await?;
        body["data"]["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .context("no lead id")
    }
}

/// Open loop at `--rate` stage changes per second through the window; the
/// latency of each from its PATCH's answer to its receipt by a healthy
/// subscriber (with a hanging and a failing one beside it when `faulty`).
async fn latency_phase(
    caller: &Caller,
    args: &Args,
    window: Window,
    faulty: bool,
) -> anyhow::Result<(u64, u64, u64, Histogram<u64>)> {
    let receiver = Receiver::start().await;
    caller
        .subscribe(&receiver.url, "lead.stage_changed")
        .await?;
    // With `faulty`, two more subscribers: one that never answers and one
    // that always fails (retried on the default schedule).
    let mut faults = Vec::new();
    if faulty {
        for behaviour in [Behaviour::Hang, Behaviour::Status(500)] {
            let fault = Receiver::start().await;
            fault.set(behaviour);
            caller.subscribe(&fault.url, "lead.stage_changed").await?;
            faults.push(fault);
        }
    }
    let mut leads = Vec::with_capacity(LEADS);
    for i in 0..LEADS {
        leads.push(caller.create_lead(&format!("Lead {i}"), "").await?);
    }
    eprintln!(
        "webhooks: {} stage changes/s for {:?}",
        args.rate, window.measure
    );

    // (lead, version) → when the PATCH was answered.
    let acknowledged: Arc<Mutex<HashMap<(Uuid, i64), Instant>>> = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut tick = 0usize;
    while started.elapsed() < window.measure {
        let lead = leads[tick % LEADS];
        let stage = if (tick / LEADS).is_multiple_of(2) {
            "contacted"
        } else {
            "qualified"
        };
        let caller = caller.clone();
        let acknowledged = acknowledged.clone();
        tasks.spawn(async move {
            let response = caller
                .send(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/leads/{lead}"),
                    json!({"stage": stage}),
                )
                .await?;
            let at = Instant::now();
            let version: i64 = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse().ok())
                .context("no ETag")?;
            acknowledged.lock().await.insert((lead, version), at);
            anyhow::Ok(true)
        });
        tick += 1;
        let next = started + interval * tick as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    let mut refused = 0u64;
    while let Some(joined) = tasks.join_next().await {
        if !joined?? {
            refused += 1;
        }
    }
    let changes = acknowledged.lock().await.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.requests().len() < changes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let acknowledged = acknowledged.lock().await;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut received = 0;
    for request in receiver.requests() {
        let body = request.json();
        let lead = body["data"]["lead"]["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok());
        let version = body["data"]["version"].as_i64();
        if let Some(at) = lead.zip(version).and_then(|k| acknowledged.get(&k)) {
            let micros = request.at.saturating_duration_since(*at).as_micros();
            latency.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
            received += 1;
        }
    }
    Ok((changes as u64, refused, received, latency))
}

/// Leads with ~1 KiB bodies, each delivered to every endpoint; deliveries/s
/// from the first create to the last receipt.
async fn throughput_phase(
    caller: &Caller,
    args: &Args,
    window: Window,
) -> anyhow::Result<(usize, u64, f64)> {
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
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    Ok((events, delivered, delivered as f64 / seconds))
}

fn section(r: &Results, args: &Args) -> Section {
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let markdown = format!(
        "## webhooks\n\n\
         End to end (PATCH answered → receiver got it) at {rate} stage changes/s: \
         {changes} changes answered 200 ({refused} refused by the api), {received} received; p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms \
         (goal p99 ≤ {GOAL_P99_MS} ms {m1}). The same with a hanging and a failing \
         receiver subscribed too: the healthy one's p99 {faulty:.1} ms ({rise:+.0} %; goal ≤ +10 % {m3}).\n\n\
         Sustained: {events} lead.created events × {endpoints} endpoints (receivers answer in {ms} ms, \
         ~1 KiB bodies): {deliveries} deliveries, {per_s} deliveries/s \
         (goal ≥ {goal} {m2}).\n",
        rate = args.rate,
        changes = r.changes,
        refused = r.refused,
        received = r.received,
        p50 = r.p50_ms,
        p99 = r.p99_ms,
        max = r.max_ms,
        m1 = mark(r.p99_ms <= GOAL_P99_MS && r.received == r.changes),
        faulty = r.faulty_p99_ms,
        rise = (r.faulty_p99_ms / r.p99_ms.max(1e-3) - 1.0) * 100.0,
        m3 = mark(r.faulty_p99_ms <= r.p99_ms * 1.1),
        events = r.events,
        endpoints = args.endpoints,
        ms = args.receiver_ms,
        deliveries = thousands(r.deliveries as f64),
        per_s = thousands(r.deliveries_per_s),
        goal = thousands(GOAL_DELIVERIES_PER_S),
        m2 = mark(r.deliveries_per_s >= GOAL_DELIVERIES_PER_S),
    );
    let json = json!({
        "rate": args.rate,
        "changes": r.changes,
        "refused": r.refused,
        "received": r.received,
        "p50_ms": r.p50_ms,
        "p99_ms": r.p99_ms,
        "max_ms": r.max_ms,
        "faulty_p99_ms": r.faulty_p99_ms,
        "events": r.events,
        "endpoints": args.endpoints,
        "deliveries": r.deliveries,
        "deliveries_per_s": r.deliveries_per_s,
    });
    Section {
        name: "webhooks",
        markdown,
        json,
    }
}
