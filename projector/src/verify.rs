//! `jeanus-projector verify`: re-walks the event log's hash chain (every
//! tenant, or one) and names the first position where a stored event was
//! altered, removed or reordered; and the nightly job that does the same and
//! logs the result.
//!
//! The walk recomputes every hash from the stored columns
//! (`schema::chain`), never with the database's own function, one pass in
//! position order over pages that [`pages`] reads ahead on several
//! connections. Over every tenant it also holds the positions to be dense
//! (1, 2, 3, … up to `event_log_head`), so a removed row is named by its own
//! position; over one tenant, a removed row shows as the next event's hash.

mod pages;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use schema::chain::{self, Hash, GENESIS};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use pages::{Pages, Row, COLUMNS, PAGE_SIZE, READERS};

/// The schedule of the nightly verification when `JEANUS_VERIFY_SCHEDULE`
/// is unset: 03:00 UTC every day (sec min hour day-of-month month day-of-week).
pub const DEFAULT_SCHEDULE: &str = "0 0 3 * * *";

/// A position and the hash the chain had there: what `GET /api/v1/events/head`
/// gives, written `POSITION:HASH` (hash in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: i64,
    pub hash: Hash,
}

impl FromStr for Checkpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, hash) = s
            .split_once(':')
            .ok_or("expected POSITION:HASH, e.g. 1234:9f86d081…")?;
        let position = position
            .parse::<i64>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or("the position must be an integer above 0")?;
        let hash = chain::from_hex(hash).ok_or("the hash must be 64 hex digits")?;
        Ok(Self { position, hash })
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.position, chain::to_hex(&self.hash))
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// One tenant's chain only; every tenant's when `None`.
    pub tenant: Option<Uuid>,
    /// Start after this position, from this hash, once the stored chain is
    /// found to hold it there.
    pub checkpoint: Option<Checkpoint>,
}

/// Where the walk is, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub events: u64,
    pub position: i64,
    /// The last position the walk will reach (the head when it started).
    pub head: i64,
    pub elapsed: Duration,
}

/// An intact chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    /// Events whose hash was recomputed.
    pub events: u64,
    /// Tenants seen.
    pub tenants: usize,
    /// The last position verified (the checkpoint's if there was nothing after it).
    pub last_position: i64,
}

/// Why the chain does not hold at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The stored hash is not the one recomputed: the event was altered, or
    /// an earlier event of the tenant was removed, altered or moved.
    HashMismatch,
    /// No event has this position, although later ones exist (or the log
    /// head says it was written).
    Missing,
    /// The checkpoint's position holds no event.
    CheckpointMissing,
    /// The checkpoint's position holds another tenant's event.
    CheckpointOtherTenant,
    /// The stored hash at the checkpoint's position is not the checkpoint's.
    CheckpointMismatch,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HashMismatch => {
                "the stored hash is not the recomputed one: this event was altered, or an earlier \
                 event of its tenant was altered, removed or reordered"
            }
            Self::Missing => "no event has this position: it was removed",
            Self::CheckpointMissing => "the checkpoint's position holds no event",
            Self::CheckpointOtherTenant => "the checkpoint's position holds another tenant's event",
            Self::CheckpointMismatch => {
                "the stored hash differs from the checkpoint's: the chain up to here was rewritten"
            }
        })
    }
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub position: i64,
    /// The tenant of the event found there, if there is one.
    pub tenant_id: Option<Uuid>,
    pub fault: Fault,
    /// Events verified before it.
    pub events: u64,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the hash chain is broken at position {}", self.position)?;
        if let Some(tenant) = self.tenant_id {
            write!(f, " (tenant {tenant})")?;
        }
        write!(f, ": {}", self.fault)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Intact(Intact),
    Broken(Broken),
}

/// The walk's state: each tenant's last hash, and where it is.
struct Walk {
    tenant: Option<Uuid>,
    prev: HashMap<Uuid, Hash>,
    /// For a walk over every tenant, the position the next row must have.
    expected: Option<i64>,
    /// Whether a tenant first met on the walk starts from the genesis
    /// (from the log's start) or from its stored hash at the checkpoint.
    from_checkpoint: Option<i64>,
    events: u64,
    last_position: i64,
    buffer: Vec<u8>,
}

/// Verifies the chain. `progress` is called after each page. An error is a
/// failure to verify (the database), not a broken chain, which is
/// [`Outcome::Broken`].
pub async fn verify(
    pool: &PgPool,
    options: &Options,
    mut progress: impl FnMut(&Progress),
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let head: i64 = match options.tenant {
        None => schema::store::head(pool).await,
        Some(tenant) => {
            sqlx::query_scalar("select coalesce(max(position), 0) from events where tenant_id = $1")
                .bind(tenant)
                .fetch_one(pool)
                .await
        }
    }
    .context("failed to read the log's head")?;

    let mut walk = Walk {
        tenant: options.tenant,
        prev: HashMap::new(),
        expected: options.tenant.is_none().then_some(1),
        from_checkpoint: None,
        events: 0,
        last_position: 0,
        buffer: Vec::with_capacity(4096),
    };
    if let Some(checkpoint) = options.checkpoint {
        if let Some(broken) = walk.start_at(pool, checkpoint).await? {
            return Ok(Outcome::Broken(broken));
        }
    }

    let mut pages = Pages::new(pool, walk.tenant, walk.last_position, head);
    while let Some(page) = pages.next().await? {
        for row in &page {
            if let Some(broken) = walk.step(pool, &Row::decode(row)?).await? {
                return Ok(Outcome::Broken(broken));
            }
        }
        progress(&Progress {
            events: walk.events,
            position: walk.last_position,
            head,
            elapsed: started.elapsed(),
        });
    }

    // Rows removed from the end of the log leave the head above the last row.
    if let Some(expected) = walk.expected {
        if expected <= head {
            return Ok(Outcome::Broken(Broken {
                position: expected,
                tenant_id: None,
                fault: Fault::Missing,
                events: walk.events,
            }));
        }
    }
    Ok(Outcome::Intact(Intact {
        events: walk.events,
        tenants: walk.prev.len(),
        last_position: walk.last_position,
    }))
}

impl Walk {
    /// Checks the stored chain at the checkpoint and starts after it.
    async fn start_at(
        &mut self,
        pool: &PgPool,
        checkpoint: Checkpoint,
    ) -> anyhow::Result<Option<Broken>> {
        let found: Option<(Uuid, Vec<u8>)> =
            sqlx::query_as("select tenant_id, hash from events where position = $1")
                .bind(checkpoint.position)
                .fetch_optional(pool)
                .await
                .context("failed to read the checkpoint's event")?;
        let broken = |tenant_id, fault| {
            Some(Broken {
                position: checkpoint.position,
                tenant_id,
                fault,
                events: 0,
            })
        };
        let Some((tenant, hash)) = found else {
            return Ok(broken(self.tenant, Fault::CheckpointMissing));
        };
        if self.tenant.is_some_and(|t| t != tenant) {
            return Ok(broken(Some(tenant), Fault::CheckpointOtherTenant));
        }
        if hash != checkpoint.hash {
            return Ok(broken(Some(tenant), Fault::CheckpointMismatch));
        }
        self.prev.insert(tenant, checkpoint.hash);
        self.from_checkpoint = Some(checkpoint.position);
        self.last_position = checkpoint.position;
        self.expected = self.expected.map(|_| checkpoint.position + 1);
        Ok(None)
    }

    async fn step(&mut self, pool: &PgPool, row: &Row<'_>) -> anyhow::Result<Option<Broken>> {
        if let Some(expected) = self.expected {
            if row.event.position != expected {
                return Ok(Some(Broken {
                    position: expected,
                    tenant_id: None,
                    fault: Fault::Missing,
                    events: self.events,
                }));
            }
            self.expected = Some(expected + 1);
        }
        let prev = match self.prev.get(&row.tenant_id) {
            Some(prev) => *prev,
            None => self.first_prev(pool, row.tenant_id).await?,
        };
        chain::write_canonical(&row.event, &mut self.buffer);
        let hash = chain::next_hash(&prev, &self.buffer);
        if row.hash[..] != hash[..] {
            return Ok(Some(Broken {
                position: row.event.position,
                tenant_id: Some(row.tenant_id),
                fault: Fault::HashMismatch,
                events: self.events,
            }));
        }
        self.prev.insert(row.tenant_id, hash);
        self.events += 1;
        self.last_position = row.event.position;
        Ok(None)
    }

    /// The hash a tenant's chain continues from when the walk first meets
    /// it: the genesis from the log's start; after a checkpoint, the
    /// tenant's stored hash at it (only the checkpoint's own tenant is
    /// anchored by the checkpoint).
    async fn first_prev(&self, pool: &PgPool, tenant: Uuid) -> anyhow::Result<Hash> {
        let Some(position) = self.from_checkpoint else {
            return Ok(GENESIS);
        };
        let stored: Option<Vec<u8>> = sqlx::query_scalar(
            "select hash from events where tenant_id = $1 and position <= $2
              order by position desc limit 1",
        )
        .bind(tenant)
        .bind(position)
        .fetch_optional(pool)
        .await
        .context("failed to read a tenant's hash at the checkpoint")?;
        Ok(stored
            .and_then(|h| <Hash>::try_from(h.as_slice()).ok())
            .unwrap_or(GENESIS))
    }
}

/// `jeanus-projector verify`: runs [`verify`] with progress on stderr (a
/// line every few seconds, or one line redrawn on a terminal) and prints
/// the outcome with its rate: an intact chain on stdout, a broken one is
/// returned for the caller to report.
pub async fn command(database_url: &str, options: &Options) -> anyhow::Result<Outcome> {
    use std::io::{IsTerminal as _, Write as _};

    let pool = schema::connect::postgres(database_url, READERS as u32 + 1).await?;
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last_report = Instant::now();
    let outcome = verify(&pool, options, |p| {
        if last_report.elapsed() < Duration::from_secs(if terminal { 0 } else { 5 }) {
            return;
        }
        last_report = Instant::now();
        let line = format!(
            "verify: {} events, position {} of {}, {:.0} events/s",
            p.events,
            p.position,
            p.head,
            rate(p.events, p.elapsed)
        );
        let mut stderr = std::io::stderr().lock();
        let _ = if terminal {
            write!(stderr, "\r\x1b[2K{line}")
        } else {
            writeln!(stderr, "{line}")
        };
    })
    .await;
    if terminal {
        eprintln!();
    }
    pool.close().await;
    let outcome = outcome?;
    let elapsed = started.elapsed();
    match &outcome {
        Outcome::Intact(intact) => println!(
            "the hash chain is intact: {} events of {} tenant(s) up to position {} in {:.2} s ({:.0} events/s)",
            intact.events,
            intact.tenants,
            intact.last_position,
            elapsed.as_secs_f64(),
            rate(intact.events, elapsed)
        ),
        Outcome::Broken(broken) => eprintln!(
            "verify: {} events verified before the break in {:.2} s ({:.0} events/s)",
            broken.events,
            elapsed.as_secs_f64(),
            rate(broken.events, elapsed)
        ),
    }
    Ok(outcome)
}

/// Runs the verification on `schedule` until `shutdown`, logging each result.
pub async fn run_scheduled(pool: PgPool, schedule: cron::Schedule, shutdown: CancellationToken) {
    loop {
        let now = Utc::now();
        let Some(next) = schedule.after(&now).next() else {
            return;
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = Instant::now();
        let options = Options::default();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = verify(&pool, &options, |_| {}) => outcome,
        };
        log_outcome(&outcome, started.elapsed());
    }
}

/// Logs a scheduled verification's result: an intact chain at info, a
/// broken one at error.
pub fn log_outcome(outcome: &anyhow::Result<Outcome>, elapsed: Duration) {
    match outcome {
        Ok(Outcome::Intact(intact)) => tracing::info!(
            events = intact.events,
            tenants = intact.tenants,
            last_position = intact.last_position,
            duration_ms = elapsed.as_millis() as u64,
            events_per_s = rate(intact.events, elapsed) as u64,
            "scheduled verification: the event log's hash chain is intact"
        ),
        Ok(Outcome::Broken(broken)) => tracing::error!(
            position = broken.position,
            tenant_id = broken.tenant_id.map(|t| t.to_string()),
            fault = %broken.fault,
            "scheduled verification: the event log's hash chain is broken"
        ),
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "scheduled verification could not run; it runs again at the next scheduled time"
        ),
    }
}

/// Events per second.
pub fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn a_checkpoint_reads_position_colon_hash() {
        let hash = "ab".repeat(32);
        let c: Checkpoint = format!("42:{hash}").parse().expect("valid");
        assert_eq!(c.position, 42);
        assert_eq!(c.to_string(), format!("42:{hash}"));
        let bad = [
            "42".to_owned(),
            "x:ab".to_owned(),
            format!("0:{hash}"),
            format!("-1:{hash}"),
            format!("42:{}", &hash[1..]),
            format!("42:{}zz", &hash[2..]),
        ];
        for bad in bad {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_schedule_is_nightly() {
        let schedule = cron::Schedule::from_str(DEFAULT_SCHEDULE).expect("valid");
        let now = DateTime::parse_from_rfc3339("2026-11-22T05:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        let mut next = schedule.after(&now);
        let first = next.next().expect("a run");
        assert_eq!(first.to_rfc3339(), "2026-11-23T03:00:00+00:00");
        assert_eq!(
            next.next().expect("a run") - first,
            chrono::Duration::days(1)
        );
    }
}
