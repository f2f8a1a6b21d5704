//! The delivery workers: take due deliveries from PostgreSQL, send them,
//! signed, to their endpoints, and record every attempt and what comes next.
//!
//! **Sharing the work.** A worker claims due deliveries ([`claim`]) with
//! `select … for update skip locked` and, in the same statement, pushes
//! their `next_attempt_at` forward by a lease ([`LEASE`], longer than a
//! request may take): other dispatcher instances skip them, and if this one
//! dies mid-send they become due again when the lease runs out. Nothing is
//! held open while sending; the attempt and the delivery's new state are
//! written afterwards in one batched statement ([`record`]).
//!
//! **Isolation.** At most [`PER_ENDPOINT`] requests are in flight per
//! endpoint in this process, and [`MAX_IN_FLIGHT`] in all; an endpoint at its
//! cap is left out of the next claims, so a hanging endpoint ties up only its
//! own slots (each for at most the 15 s request timeout). An endpoint that
//! keeps failing has its circuit opened ([`breaker`]): it gets one probe per
//! back-off instead of a request per event, so a dead, hanging or refusing
//! endpoint costs the others nearly nothing.
//!
//! **Waking up.** New deliveries wake the workers at once (in-process from
//! the intake, and through `LISTEN` on the intake's channel from other
//! instances); a short poll finds retries that come due.
//!
//! **SSRF.** See [`client`]: the resolver vets every address it hands the
//! connector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schema::sealing::SecretKey;
use schema::store::EventStore;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::intake::DELIVERIES_CHANNEL;
use crate::retry::RetrySchedule;

mod attempt;
pub mod breaker;
mod claim;
pub mod client;
mod record;
mod send;

pub use claim::Claimed;
pub use client::{http_client, GuardedResolver};
pub use record::disable_endpoint;
pub use send::AttemptOutcome;

use breaker::{Allowance, Breakers};
use claim::Room;
use record::Record;

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
/// Most deliveries claimed in one statement.
const MAX_CLAIM: i64 = 200;
/// After a request finishes, how long the workers wait for others to
/// finish before claiming again (unless new deliveries wake them).
const COMPLETIONS_PAUSE: Duration = Duration::from_millis(2);
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
    /// Each endpoint's requests in flight here (a semaphore of
    /// [`PER_ENDPOINT`] permits); only endpoints with some are kept.
    slots: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    breakers: Breakers,
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
            breakers: Breakers::new(schedule.scheduled(1).unwrap_or(breaker::MAX_OPEN)),
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

    /// How many more requests the endpoints with requests in flight or a
    /// circuit not closed may take now; forgets idle slots.
    fn room(&self) -> Room {
        let mut room: HashMap<Uuid, i64> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.retain(|_, s| s.available_permits() < PER_ENDPOINT);
            slots
                .iter()
                .map(|(id, s)| (*id, s.available_permits() as i64))
                .collect()
        };
        for (endpoint, allowance) in self.breakers.allowances(Instant::now()) {
            let free = room.entry(endpoint).or_insert(PER_ENDPOINT as i64);
            *free = match allowance {
                Allowance::Any => *free,
                // One probe, and only when nothing else is in flight.
                Allowance::Probe => i64::from(*free == PER_ENDPOINT as i64),
                Allowance::None => 0,
            };
        }
        let (endpoints, free) = room.into_iter().unzip();
        Room { endpoints, free }
    }
}

/// Run the workers until `shutdown`; then wait for the requests in flight.
pub async fn run(workers: Arc<Workers>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let (records, queue) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record::record_batches(workers.pool.clone(), queue));
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
            match claim::claim(&workers.pool, free as i64, &workers.room()).await {
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
        if let Err(e) = claim::release(&workers.pool, delivery.id).await {
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
        let gone = attempt::attempt(&workers, delivery, endpoint_slot, &records).await;
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
