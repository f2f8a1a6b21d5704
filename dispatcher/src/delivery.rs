//! The delivery workers: take due deliveries from PostgreSQL, send them,
//! signed, to their endpoints, and record every attempt and what comes next.
//!
//! **Sharing the work.** A worker claims due deliveries with `select … for
//! update skip locked` and, in the same statement, pushes their
//! `next_attempt_at` forward by a lease ([`LEASE`], longer than a request may
//! take): other dispatcher instances skip them, and if this one dies
//! mid-send they become due again when the lease runs out. Nothing is held
//! open while sending; the attempt and the delivery's new state are written
//! afterwards in one statement.
//!
//! **Isolation.** At most [`PER_ENDPOINT`] requests are in flight per
//! endpoint in this process, and [`MAX_IN_FLIGHT`] in all; an endpoint at its
//! cap is left out of the next claims, so a hanging endpoint ties up only its
//! own slots (each for at most the 15 s request timeout).
//!
//! **Waking up.** New deliveries wake the workers at once (in-process from
//! the intake, and through `LISTEN` on the intake's channel from other
//! instances); a short poll finds retries that come due.
//!
//! **SSRF.** Every host is resolved by [`GuardedResolver`], which refuses
//! non-global addresses (unless allowed) and hands the connector only the
//! addresses it vetted, so DNS cannot be swapped between check and connect;
//! an IP-literal URL is checked directly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use schema::envelope::{Metadata, NewEvent};
use schema::events::{stream_types, EventPayload, WebhookEndpointDisabled};
use schema::sealing::{self, SecretKey};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use serde::Deserialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::intake::DELIVERIES_CHANNEL;
use crate::retry::{self, RetrySchedule};
use crate::signing::{self, SigningKey};

/// Requests in flight per endpoint, per dispatcher process.
pub const PER_ENDPOINT: usize = 8;
/// Requests in flight in all, per dispatcher process.
pub const MAX_IN_FLIGHT: usize = 512;
/// How long a claimed delivery is reserved for the worker that took it.
pub const LEASE: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The most of a response body that is read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The most of a response body kept in the delivery log.
const EXCERPT_BYTES: usize = 1024;
/// Most deliveries claimed in one statement.
const MAX_CLAIM: i64 = 200;
/// After a request finishes, how long the workers wait for others to
/// finish before claiming again (unless new deliveries wake them).
const COMPLETIONS_PAUSE: Duration = Duration::from_millis(2);
/// Most attempts recorded in one statement.
const MAX_RECORDS: usize = 500;
/// How long shutdown waits for the requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often due retries are looked for when nothing wakes the workers.
const POLL: Duration = Duration::from_millis(200);

/// What the workers need, shared by every task.
pub struct Workers {
    pub pool: PgPool,
    pub store: EventStore,
    pub client: reqwest::Client,
    pub secret_key: SecretKey,
    pub schedule: RetrySchedule,
    pub allow_private: bool,
    slots: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

impl Workers {
    pub fn new(
        pool: PgPool,
        store: EventStore,
        secret_key: SecretKey,
        schedule: RetrySchedule,
        allow_private: bool,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: http_client(allow_private)?,
            pool,
            store,
            secret_key,
            schedule,
            allow_private,
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn endpoint_slot(&self, endpoint: Uuid) -> Option<OwnedSemaphorePermit> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let semaphore = slots
            .entry(endpoint)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_ENDPOINT)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }

    /// The endpoints with requests in flight here and how many more each
    /// may take now (0: leave it out of the next claim); forgets idle ones.
    fn slot_usage(&self) -> (Vec<Uuid>, Vec<i64>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, s| s.available_permits() < PER_ENDPOINT);
        slots
            .iter()
            .map(|(id, s)| (*id, s.available_permits() as i64))
            .unzip()
    }
}

/// The HTTP client every delivery uses: no redirects (a 3xx is a failure),
/// bounded connect and total time, and the guarded resolver.
pub fn http_client(allow_private: bool) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(PER_ENDPOINT)
        .user_agent(concat!("jeanus-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .build()
        .context("failed to build the webhook HTTP client")
}

/// Resolves with the system resolver and keeps only global addresses (all
/// of them when private targets are allowed); the connector dials exactly
/// what this returns.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

/// Every address of a host is non-global.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-global addresses")]
pub struct Blocked {
    host: String,
}

/// The host did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("{host} does not resolve: {reason}")]
pub struct DnsFailed {
    host: String,
    reason: String,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| DnsFailed {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            if found.is_empty() {
                return Err(DnsFailed {
                    host,
                    reason: "no addresses".into(),
                }
                .into());
            }
            let vetted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || schema::webhooks::is_global(a.ip()))
                .collect();
            if vetted.is_empty() {
                return Err(Blocked { host }.into());
            }
            let addrs: Addrs = Box::new(vetted.into_iter());
            Ok(addrs)
        })
    }
}

/// Run the workers until `shutdown`; then wait for the requests in flight.
pub async fn run(workers: Arc<Workers>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let (records, queue) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_batches(workers.pool.clone(), queue));
    tokio::spawn(forward_notifications(
        workers.pool.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    loop {
        while tasks.try_join_next().is_some() {}
        let free = in_flight.available_permits().min(MAX_CLAIM as usize);
        let mut claimed = 0;
        if free > 0 {
            match claim(&workers, free as i64).await {
                Ok(deliveries) => {
                    claimed = deliveries.len();
                    for delivery in deliveries {
                        start(&workers, &in_flight, &mut tasks, &records, delivery).await;
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "failed to claim deliveries"),
            }
        }
        if claimed > 0 && claimed == free {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            // A request finished, so a slot is free: claim again once a few
            // more have (or new deliveries arrive), not once per request.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                tokio::select! {
                    _ = tokio::time::sleep(COMPLETIONS_PAUSE) => {}
                    _ = wake.notified() => {}
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Let the requests in flight finish for a moment; the rest are dropped
    // and sent again when their lease runs out.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            in_flight = tasks.len(),
            "stopping with deliveries in flight; they are retried after their lease"
        );
        tasks.shutdown().await;
    }
    // The recorder writes what is queued, then ends with the last sender.
    drop(records);
    let _ = recorder.await;
}

async fn start(
    workers: &Arc<Workers>,
    in_flight: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    records: &mpsc::UnboundedSender<Record>,
    delivery: Claimed,
) {
    let Some(endpoint_slot) = workers.endpoint_slot(delivery.endpoint_id) else {
        // The endpoint is at its cap: hand the delivery back at once.
        if let Err(e) = release(&workers.pool, delivery.id).await {
            tracing::warn!(error = format!("{e:#}"), "failed to release a delivery");
        }
        return;
    };
    let Ok(permit) = in_flight.clone().acquire_owned().await else {
        return;
    };
    let workers = workers.clone();
    let records = records.clone();
    tasks.spawn(async move {
        let gone = attempt(&workers, delivery, endpoint_slot, &records).await;
        drop(permit);
        if let Some((tenant, endpoint)) = gone {
            if let Err(e) = disable_endpoint(&workers.store, tenant, endpoint, "the endpoint answered 410 Gone").await {
                tracing::warn!(endpoint.id = %endpoint, error = format!("{e:#}"), "failed to disable an endpoint after 410");
            }
        }
    });
}

/// LISTEN on the intake's channel (for deliveries created by another
/// instance) and wake the workers; reconnects after errors.
async fn forward_notifications(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let result = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(DELIVERIES_CHANNEL).await?;
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = result => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "delivery notifications lost; listening again");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A delivery taken by this worker, with what is needed to send it.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    pub attempts: i32,
    pub payload: serde_json::Value,
    pub url: String,
    pub secrets: serde_json::Value,
}

/// Claim up to `limit` due deliveries of enabled endpoints, no more per
/// endpoint than it has free slots here, leasing them.
async fn claim(workers: &Workers, limit: i64) -> anyhow::Result<Vec<Claimed>> {
    let (used, free) = workers.slot_usage();
    sqlx::query_as::<_, Claimed>(
        // Every lookup is an index probe whatever the statistics: a plan
        // cached while the table was empty (sqlx prepares statements, and
        // PostgreSQL switches to a generic plan) must not scan it per row.
        "with due as materialized (
             -- Each live endpoint's oldest due deliveries, no more than its
             -- free slots here, so that one endpoint's backlog never hides
             -- another's (index webhook_deliveries_due_by_endpoint).
             select d.id
               from webhook_endpoints e
              cross join lateral (
                  select x.id, x.next_attempt_at
                    from webhook_deliveries x
                   where x.endpoint_id = e.id
                     and x.status = 'pending' and x.next_attempt_at <= now()
                   order by x.next_attempt_at
                   limit coalesce(
                       (select u.free
                          from unnest($2::uuid[], $5::bigint[]) as u(endpoint_id, free)
                         where u.endpoint_id = e.id),
                       $4)
                     for update of x skip locked
              ) d
              where e.enabled and e.deleted_at is null
              order by d.next_attempt_at
              limit $1
         )
         update webhook_deliveries d
            set next_attempt_at = now() + make_interval(secs => $3)
           from webhook_endpoints e
          where d.id = any(array(select id from due)) and e.id = d.endpoint_id
         returning d.id, d.tenant_id, d.endpoint_id, d.event_id, d.attempts, d.payload,
                   e.url, e.secrets",
    )
    .bind(limit)
    .bind(&used)
    .bind(LEASE.as_secs_f64())
    .bind(PER_ENDPOINT as i64)
    .bind(&free)
    .fetch_all(&workers.pool)
    .await
    .context("failed to claim due deliveries")
}

/// Hand a claimed delivery back, due now.
async fn release(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "update webhook_deliveries set next_attempt_at = now() where id = $1 and status = 'pending'",
    )
    .bind(id)
    .execute(pool)
    .await
    .context("failed to release a delivery")?;
    Ok(())
}

/// One of an endpoint's secrets, as the read model keeps it.
#[derive(Debug, Deserialize)]
struct StoredSecret {
    sealed: String,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// The keys that sign now: every secret not yet expired, opened.
fn live_keys(
    workers: &Workers,
    secrets: &serde_json::Value,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<SigningKey>> {
    let stored: Vec<StoredSecret> =
        serde_json::from_value(secrets.clone()).context("the endpoint's secrets are malformed")?;
    let mut keys = Vec::new();
    for secret in stored
        .iter()
        .filter(|s| s.expires_at.is_none_or(|at| at > now))
    {
        let plain = sealing::open(&workers.secret_key, &secret.sealed)
            .context("an endpoint secret does not open under JEANUS_SECRET_KEY")?;
        keys.push(SigningKey::from_secret(&plain)?);
    }
    anyhow::ensure!(!keys.is_empty(), "the endpoint has no live secret");
    Ok(keys)
}

/// The outcome of one attempt, as the delivery log records it.
#[derive(Debug)]
pub struct AttemptOutcome {
    pub status_code: Option<u16>,
    pub error_class: Option<&'static str>,
    pub excerpt: Option<String>,
    pub retry_after: Option<String>,
    pub latency: Duration,
}

impl AttemptOutcome {
    fn delivered(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// Send one delivery and queue its record. Returns the endpoint to disable
/// when it answered 410 Gone.
#[tracing::instrument(skip_all, fields(delivery.id = %delivery.id, endpoint.id = %delivery.endpoint_id, attempt = delivery.attempts + 1))]
async fn attempt(
    workers: &Workers,
    delivery: Claimed,
    endpoint_slot: OwnedSemaphorePermit,
    records: &mpsc::UnboundedSender<Record>,
) -> Option<(Uuid, Uuid)> {
    let at = Utc::now();
    let outcome = match live_keys(workers, &delivery.secrets, at) {
        Ok(keys) => send(workers, &delivery, &keys, at).await,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot sign for the endpoint");
            AttemptOutcome {
                status_code: None,
                error_class: Some("http"),
                excerpt: Some("the endpoint's secret cannot be opened".into()),
                retry_after: None,
                latency: Duration::ZERO,
            }
        }
    };
    // The endpoint's slot is free once its answer is in: the delivery stays
    // leased until its record is written.
    drop(endpoint_slot);
    let attempts = u32::try_from(delivery.attempts).unwrap_or(0) + 1;
    let (status, next) = if outcome.delivered() {
        ("delivered", None)
    } else if outcome.status_code == Some(410) {
        ("failed", None)
    } else {
        let delay = workers
            .schedule
            .delay_after(attempts, &mut rand::thread_rng());
        match delay {
            Some(delay) => {
                let delay = retry::with_retry_after(
                    delay,
                    outcome.status_code,
                    outcome.retry_after.as_deref(),
                    at,
                );
                let next =
                    at + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
                ("pending", Some(next))
            }
            None => ("failed", None),
        }
    };
    tracing::debug!(
        status = outcome.status_code,
        error_class = outcome.error_class,
        latency_ms = outcome.latency.as_millis() as u64,
        outcome = status,
        "webhook attempt"
    );
    let gone =
        (outcome.status_code == Some(410)).then_some((delivery.tenant_id, delivery.endpoint_id));
    let _ = records.send(Record {
        delivery_id: delivery.id,
        endpoint_id: delivery.endpoint_id,
        tenant_id: delivery.tenant_id,
        at,
        outcome,
        status,
        next,
    });
    gone
}

async fn send(
    workers: &Workers,
    delivery: &Claimed,
    keys: &[SigningKey],
    at: DateTime<Utc>,
) -> AttemptOutcome {
    let started = Instant::now();
    let failed = |class: &'static str, message: String| AttemptOutcome {
        status_code: None,
        error_class: Some(class),
        excerpt: Some(message),
        retry_after: None,
        latency: started.elapsed(),
    };
    let url = match reqwest::Url::parse(&delivery.url) {
        Ok(url) => url,
        Err(e) => return failed("http", format!("invalid URL: {e}")),
    };
    if !workers.allow_private {
        let literal = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if literal.is_some_and(|ip| !schema::webhooks::is_global(ip)) {
            return failed("blocked", "the target address is not global".into());
        }
    }
    let body = match serde_json::to_vec(&delivery.payload) {
        Ok(body) => body,
        Err(e) => return failed("http", format!("the body cannot be serialised: {e}")),
    };
    let id = delivery.event_id.to_string();
    let timestamp = at.timestamp();
    let signature = signing::signature_header(keys, &id, timestamp, &body);
    let request = workers
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body);
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let class = classify(&e);
            return failed(class, describe(&e));
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (excerpt, read_error) = read_excerpt(response).await;
    let latency = started.elapsed();
    let error_class = if (200..300).contains(&status) {
        None
    } else {
        Some("http")
    };
    if let Some(e) = read_error {
        tracing::debug!(error = %e, "the response body was cut short");
    }
    AttemptOutcome {
        status_code: Some(status),
        error_class,
        excerpt,
        retry_after,
        latency,
    }
}

/// Read the body up to [`MAX_RESPONSE_BYTES`]; keep its beginning.
async fn read_excerpt(mut response: reqwest::Response) -> (Option<String>, Option<reqwest::Error>) {
    let mut read = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read.extend_from_slice(&chunk);
                if read.len() >= MAX_RESPONSE_BYTES {
                    read.truncate(MAX_RESPONSE_BYTES);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return (excerpt_of(&read), Some(e)),
        }
    }
    (excerpt_of(&read), None)
}

fn excerpt_of(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let cut = &bytes[..bytes.len().min(EXCERPT_BYTES)];
    Some(String::from_utf8_lossy(cut).into_owned())
}

/// The delivery log's class of a request that got no answer.
fn classify(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<Blocked>() {
            return "blocked";
        }
        if s.is::<DnsFailed>() {
            return "dns";
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "http"
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// One attempt's outcome and the delivery's next state, to be written.
pub struct Record {
    delivery_id: Uuid,
    endpoint_id: Uuid,
    tenant_id: Uuid,
    at: DateTime<Utc>,
    outcome: AttemptOutcome,
    status: &'static str,
    next: Option<DateTime<Utc>>,
}

/// Write the queued records, whatever has arrived in one statement (as the
/// event store groups appends), until every sender is gone.
async fn record_batches(pool: PgPool, mut queue: mpsc::UnboundedReceiver<Record>) {
    let mut batch = Vec::with_capacity(MAX_RECORDS);
    while queue.recv_many(&mut batch, MAX_RECORDS).await > 0 {
        if let Err(e) = record(&pool, &batch).await {
            tracing::warn!(
                error = format!("{e:#}"),
                attempts = batch.len(),
                "failed to record delivery attempts; they are sent again when their lease ends"
            );
        }
        batch.clear();
    }
}

/// Record the attempts and the deliveries' next states in one statement. A
/// delivery is only moved if it is still pending (not cancelled meanwhile).
async fn record(pool: &PgPool, batch: &[Record]) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let delivery: Vec<Uuid> = batch.iter().map(|r| r.delivery_id).collect();
    let endpoint: Vec<Uuid> = batch.iter().map(|r| r.endpoint_id).collect();
    let tenant: Vec<Uuid> = batch.iter().map(|r| r.tenant_id).collect();
    let at: Vec<DateTime<Utc>> = batch.iter().map(|r| r.at).collect();
    let code: Vec<Option<i32>> = batch
        .iter()
        .map(|r| r.outcome.status_code.map(i32::from))
        .collect();
    let latency: Vec<i32> = batch
        .iter()
        .map(|r| i32::try_from(r.outcome.latency.as_millis()).unwrap_or(i32::MAX))
        .collect();
    let class: Vec<Option<String>> = batch
        .iter()
        .map(|r| r.outcome.error_class.map(str::to_owned))
        .collect();
    let excerpt: Vec<Option<String>> = batch.iter().map(|r| r.outcome.excerpt.clone()).collect();
    let status: Vec<String> = batch.iter().map(|r| r.status.to_owned()).collect();
    let next: Vec<Option<DateTime<Utc>>> = batch.iter().map(|r| r.next).collect();
    sqlx::query(
        "with o as (
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                                  $5::timestamptz[], $6::int[], $7::int[], $8::text[],
                                  $9::text[], $10::text[], $11::timestamptz[])
                 as o(id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms,
                      error_class, excerpt, status, next_at)
         ), attempts as (
             insert into webhook_attempts
                 (id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms,
                  error_class, response_excerpt)
             select id, delivery_id, endpoint_id, tenant_id, at, status_code, latency_ms,
                    error_class, excerpt
               from o
         )
         update webhook_deliveries d
            set status = o.status,
                attempts = d.attempts + 1,
                last_attempt_at = o.at,
                next_attempt_at = coalesce(o.next_at, d.next_attempt_at)
           from o
          where d.id = any($2) and d.id = o.delivery_id and d.status = 'pending'",
    )
    .bind(&ids)
    .bind(&delivery)
    .bind(&endpoint)
    .bind(&tenant)
    .bind(&at)
    .bind(&code)
    .bind(&latency)
    .bind(&class)
    .bind(&excerpt)
    .bind(&status)
    .bind(&next)
    .execute(pool)
    .await
    .context("failed to record the attempts")?;
    Ok(())
}

/// Append `WebhookEndpointDisabled{reason}` to an endpoint's stream.
pub async fn disable_endpoint(
    store: &EventStore,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    reason: &str,
) -> anyhow::Result<()> {
    let payload = EventPayload::from(WebhookEndpointDisabled {
        reason: reason.to_owned(),
    });
    store
        .append(
            StreamRef {
                tenant_id,
                stream_type: stream_types::WEBHOOK_ENDPOINT,
                stream_id: endpoint_id,
            },
            ExpectedVersion::Any,
            vec![NewEvent::new(&payload, Metadata::default())],
        )
        .await
        .context("failed to append WebhookEndpointDisabled")?;
    tracing::warn!(endpoint.id = %endpoint_id, reason, "webhook endpoint disabled");
    Ok(())
}
