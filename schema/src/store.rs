//! The event store: appends events to PostgreSQL with optimistic concurrency,
//! batching concurrent appends into group commits, and reads them back in
//! position order.
//!
//! Every append goes through `jeanus_append` (schema/migrations), one
//! statement that locks the log head, checks expected versions and event
//! ids, and writes every accepted event with a single multi-row insert. The
//! head lock makes positions dense and visible in order (see ARCHITECTURE.md,
//! "Positions"). Because all appends serialise on that lock anyway, each
//! process funnels its appends through one [`Batcher`]: one round trip and
//! one commit (one WAL flush) for many appends, instead of one each.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use chrono::SubsecRound as _;
use serde::Serialize;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::batch::Batcher;
use crate::chain::{self, Hash};
use crate::envelope::{NewEvent, RecordedEvent};

/// The channel on which `jeanus_append` notifies, at commit, the new head position.
pub const NOTIFY_CHANNEL: &str = "jeanus_events";
/// The channel on which the projector notifies, at each commit, the position
/// its read models have reached (`select jeanus_projected_position()`).
pub const PROJECTED_CHANNEL: &str = "jeanus_projected";

/// Most appends one batch carries; more wait for the next commit.
const MAX_BATCH_APPENDS: usize = 512;
/// Most events one batch carries (an append is never split).
const MAX_BATCH_EVENTS: usize = 4096;
/// Most tenants whose chain tips the writer remembers; past that it
/// forgets them all, and the database chains their next batch.
const MAX_CHAIN_TIPS: usize = 65_536;

/// The stream (aggregate) an append goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamRef {
    pub tenant_id: Uuid,
    pub stream_type: &'static str,
    pub stream_id: Uuid,
}

/// The version the caller believes the stream is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (number of events in it).
    Exact(i64),
}

impl ExpectedVersion {
    fn as_option(self) -> Option<i64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(v) => Some(v),
        }
    }
}

/// A successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: i64,
    /// The global positions written; `None` for a duplicate or an empty append.
    pub positions: Option<RangeInclusive<i64>>,
    /// Every event id was already stored: nothing was written.
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream_id} is at version {actual}, not the expected {expected:?}")]
    Conflict {
        stream_id: Uuid,
        expected: ExpectedVersion,
        actual: i64,
    },
    #[error("the event store could not append")]
    Database(#[source] Arc<sqlx::Error>),
    #[error("the event store's writer has stopped")]
    WriterStopped,
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(Arc::new(e))
    }
}

/// One append, as `jeanus_append` reads it.
#[derive(Debug, Serialize)]
struct AppendRequest {
    #[serde(flatten)]
    stream: StreamRef,
    expected: Option<i64>,
    events: Vec<NewEvent>,
    /// Each event's canonical bytes but its position and version, printed
    /// on the caller's task for the writer ([`AppendRequest::chained`]);
    /// `None` when a payload's `jsonb` text is not certain, when the writer
    /// did not know the tenant's tip as the append was submitted (it could
    /// not chain it), or for an append the database chains anyway
    /// ([`append_in`]).
    #[serde(skip)]
    unplaced: Option<Vec<chain::Unplaced>>,
}

impl AppendRequest {
    fn new(stream: StreamRef, expected: ExpectedVersion, mut events: Vec<NewEvent>) -> Self {
        // PostgreSQL keeps microseconds: the writer hashes what is stored.
        for event in &mut events {
            event.occurred_at = event.occurred_at.trunc_subsecs(6);
        }
        Self {
            stream,
            expected: expected.as_option(),
            events,
            unplaced: None,
        }
    }

    /// The request with its events' canonical pieces, for the writer to
    /// chain.
    fn chained(mut self) -> Self {
        self.unplaced = self
            .events
            .iter()
            .map(|event| chain::Unplaced::of(self.stream.stream_type, self.stream.stream_id, event))
            .collect();
        self
    }
}

#[derive(Debug, sqlx::FromRow)]
struct AppendRow {
    idx: i32,
    outcome: String,
    version: i64,
    first_position: Option<i64>,
    last_position: Option<i64>,
    /// The hash of the append's last event (when it wrote any).
    last_hash: Option<Vec<u8>>,
    /// The stored hashes are the ones this writer sent.
    writer_chained: Option<bool>,
}

struct Pending {
    request: AppendRequest,
    expected: ExpectedVersion,
}

/// A handle to this process's appender. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    writer: Batcher<Pending, Result<Appended, AppendError>>,
    tip: Arc<Mutex<ChainTip>>,
}

impl EventStore {
    /// Start the writer task on the current tokio runtime. It stops once every
    /// handle is dropped and the queue is drained.
    pub fn spawn(pool: PgPool) -> Self {
        // One batch in flight at a time: the tip is never contended.
        let tip = Arc::new(Mutex::new(ChainTip::default()));
        let writer = Batcher::spawn(
            MAX_BATCH_APPENDS,
            MAX_BATCH_EVENTS,
            |p: &Pending| p.request.events.len(),
            {
                let tip = tip.clone();
                move |batch| commit_batch(pool.clone(), tip.clone(), batch)
            },
        );
        Self { writer, tip }
    }

    /// How many of this writer's batches were stored with the hashes it
    /// computed itself; the database chained the others (the first one,
    /// and any after another writer appended).
    pub fn batches_chained_by_writer(&self) -> u64 {
        lock(&self.tip).chained_batches
    }

    /// The append as the writer gets it: with its events' canonical pieces
    /// when the writer knows where the tenant's chain stands, so that it
    /// can chain the batch; otherwise the database chains it, and printing
    /// them would be work for nothing (a tenant's first append here, one
    /// after another instance appended, a log without the chain).
    fn request(
        &self,
        stream: StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> AppendRequest {
        let request = AppendRequest::new(stream, expected, events);
        if lock(&self.tip).knows(stream.tenant_id) {
            request.chained()
        } else {
            request
        }
    }

    /// Append `events` to `stream` if it is at `expected`, atomically: either
    /// every event is written, in order, or none is. Appending events whose
    /// ids are all stored already is a no-op that succeeds (`duplicate`).
    pub async fn append(
        &self,
        stream: StreamRef,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, AppendError> {
        let pending = Pending {
            request: self.request(stream, expected, events),
            expected,
        };
        self.writer
            .submit(pending)
            .await
            .map_err(|_| AppendError::WriterStopped)?
    }
}

/// Append within the caller's own transaction (bypassing the group commit):
/// for writes that must commit together with other rows. The log head stays
/// locked until that transaction ends, so keep it short.
pub async fn append_in<'e>(
    executor: impl PgExecutor<'e>,
    stream: StreamRef,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<Appended, AppendError> {
    let request = AppendRequest::new(stream, expected, events);
    let rows = execute(executor, std::slice::from_ref(&request), None).await?;
    match rows.into_iter().next() {
        Some(row) => outcome(&request, expected, row),
        None => Err(AppendError::Database(Arc::new(sqlx::Error::RowNotFound))),
    }
}

/// One call of `jeanus_append`, with the writer's chain when it has one
/// (else the database chains the batch).
async fn execute<'e, T: Serialize + Sync>(
    executor: impl PgExecutor<'e>,
    batch: &[T],
    chained: Option<Prediction>,
) -> Result<Vec<AppendRow>, sqlx::Error> {
    let chained = chained.unwrap_or_default();
    sqlx::query_as::<_, AppendRow>(
        "select idx, outcome, version, first_position, last_position, last_hash, writer_chained
           from jeanus_append($1, $2, $3, $4, $5)",
    )
    .bind(sqlx::types::Json(batch))
    .bind(chained.head)
    .bind(chained.tenants)
    .bind(chained.seeds)
    .bind(chained.hashes)
    .fetch_all(executor)
    .await
}

fn outcome(
    request: &AppendRequest,
    expected: ExpectedVersion,
    row: AppendRow,
) -> Result<Appended, AppendError> {
    match row.outcome.as_str() {
        "appended" => Ok(Appended {
            version: row.version,
            positions: row
                .first_position
                .zip(row.last_position)
                .map(|(a, b)| a..=b),
            duplicate: false,
        }),
        "duplicate" => Ok(Appended {
            version: row.version,
            positions: None,
            duplicate: true,
        }),
        _ => Err(AppendError::Conflict {
            stream_id: request.stream.stream_id,
            expected,
            actual: row.version,
        }),
    }
}

/// Commit one batch and answer each caller. If the batch as a whole fails
/// for a reason other than the connection (one bad append, say), retry each
/// append alone so that one caller's failure is not everyone's.
async fn commit_batch(
    pool: PgPool,
    tip: Arc<Mutex<ChainTip>>,
    batch: Vec<Pending>,
) -> Vec<Result<Appended, AppendError>> {
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    let predicted = lock(&tip).predict(&requests);
    match execute(&pool, &requests, predicted).await {
        Ok(mut rows) if rows.len() == batch.len() => {
            rows.sort_by_key(|r| r.idx);
            lock(&tip).learn(&requests, &rows);
            batch
                .iter()
                .zip(rows)
                .map(|(p, row)| outcome(&p.request, p.expected, row))
                .collect()
        }
        Ok(rows) => {
            let e = Arc::new(sqlx::Error::Protocol(format!(
                "jeanus_append answered {} rows for {} appends",
                rows.len(),
                batch.len()
            )));
            batch
                .iter()
                .map(|_| Err(AppendError::Database(e.clone())))
                .collect()
        }
        Err(e) if batch.len() > 1 && !is_connection_error(&e) => {
            tracing::warn!(error = %e, appends = batch.len(), "batched append failed; retrying each append alone");
            let mut answers = Vec::with_capacity(batch.len());
            for p in batch {
                let answer = append_in(&pool, p.request.stream, p.expected, p.request.events).await;
                answers.push(answer);
            }
            answers
        }
        Err(e) => {
            let e = Arc::new(e);
            batch
                .iter()
                .map(|_| Err(AppendError::Database(e.clone())))
                .collect()
        }
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    )
}

/// Events after `after`, in position order, at most `limit`.
pub async fn read_after<'e>(
    executor: impl PgExecutor<'e>,
    after: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, RecordedEvent>(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, metadata, data
           from events
          where position > $1
          order by position
          limit $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Every event of one stream, oldest first; empty for a stream that does not
/// exist. What a command folds to learn a stream's current state and version
/// before it appends with `ExpectedVersion::Exact`.
pub async fn read_stream<'e>(
    executor: impl PgExecutor<'e>,
    stream_id: Uuid,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, RecordedEvent>(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, metadata, data
           from events
          where stream_id = $1
          order by stream_version",
    )
    .bind(stream_id)
    .fetch_all(executor)
    .await
}

/// Every event of each of `stream_ids`, by stream, each oldest first: several
/// [`read_stream`]s in one round trip.
pub async fn read_streams<'e>(
    executor: impl PgExecutor<'e>,
    stream_ids: &[Uuid],
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, RecordedEvent>(
        "select position, id, tenant_id, stream_type, stream_id, stream_version, event_type,
                schema_version, occurred_at, metadata, data
           from events
          where stream_id = any($1)
          order by stream_id, stream_version",
    )
    .bind(stream_ids)
    .fetch_all(executor)
    .await
}

/// The position of the last committed event (0 when the log is empty).
pub async fn head<'e>(executor: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select position from event_log_head where singleton")
        .fetch_one(executor)
        .await
}

fn lock(tip: &Mutex<ChainTip>) -> std::sync::MutexGuard<'_, ChainTip> {
    // The tip is plain data, whole after any panic: a poisoned lock is fine.
    tip.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the writer knows of the log's end after its last batch: the head
/// and, for each tenant it appended to, the hash that tenant's next event
/// chains from. Both hold as long as no other writer appends; when one
/// does, `jeanus_append` sees the head moved, computes the chain itself
/// (migration 0016), and the writer learns the new tip from its answer.
/// The tips are learnt only from an unbroken run of this writer's own
/// batches ([`ChainTip::learn`] forgets them all at a gap), so the head is
/// all the database checks them by (migration 0017).
#[derive(Debug, Default)]
struct ChainTip {
    head: Option<i64>,
    seeds: HashMap<Uuid, Hash>,
    /// Batches stored with the writer's hashes, for
    /// [`EventStore::batches_chained_by_writer`].
    chained_batches: u64,
}

/// A batch chained by the writer: the head it expects, the hash each tenant
/// chains from, and one hash per event in batch order, as if every append
/// were accepted.
#[derive(Debug, Default)]
struct Prediction {
    head: Option<i64>,
    tenants: Option<Vec<Uuid>>,
    seeds: Option<Vec<Vec<u8>>>,
    hashes: Option<Vec<Vec<u8>>>,
}

impl ChainTip {
    /// Whether the writer knows the tip `tenant` chains from.
    fn knows(&self, tenant: Uuid) -> bool {
        self.head.is_some() && self.seeds.contains_key(&tenant)
    }

    /// The batch's chain, if the writer can compute it: it knows the head
    /// and the tip of every tenant, every append says which version its
    /// stream is at, and every payload's `jsonb` text is certain.
    fn predict(&self, requests: &[&AppendRequest]) -> Option<Prediction> {
        let head = self.head?;
        let mut tips: HashMap<Uuid, Hash> = HashMap::new();
        let (mut tenants, mut seeds) = (Vec::new(), Vec::new());
        let mut hashes = Vec::with_capacity(requests.iter().map(|r| r.events.len()).sum());
        let mut position = head;
        for request in requests {
            let base = request.expected?;
            let unplaced = request.unplaced.as_ref()?;
            let tenant = request.stream.tenant_id;
            let mut prev = match tips.get(&tenant) {
                Some(hash) => *hash,
                None => {
                    let seed = *self.seeds.get(&tenant)?;
                    tenants.push(tenant);
                    seeds.push(seed.to_vec());
                    seed
                }
            };
            for (version, event) in (base + 1..).zip(unplaced) {
                position += 1;
                prev = event.link(&prev, position, version);
                hashes.push(prev.to_vec());
            }
            tips.insert(tenant, prev);
        }
        Some(Prediction {
            head: Some(head),
            tenants: Some(tenants),
            seeds: Some(seeds),
            hashes: Some(hashes),
        })
    }

    /// Learns the tip from a batch's answer (`rows` in batch order). When
    /// the batch did not start right after the head the writer knew,
    /// another writer appended in between and every tip it knew may be
    /// stale: it keeps only this batch's.
    fn learn(&mut self, requests: &[&AppendRequest], rows: &[AppendRow]) {
        let Some(first) = rows.iter().filter_map(|r| r.first_position).min() else {
            return; // nothing written, nothing learnt
        };
        if rows.iter().any(|r| r.writer_chained == Some(true)) {
            self.chained_batches += 1;
        }
        if self.head != Some(first - 1) || self.seeds.len() >= MAX_CHAIN_TIPS {
            self.seeds.clear();
        }
        for (request, row) in requests.iter().zip(rows) {
            if let (Some(_), Some(hash)) = (row.last_position, &row.last_hash) {
                match Hash::try_from(hash.as_slice()) {
                    Ok(hash) => {
                        self.seeds.insert(request.stream.tenant_id, hash);
                    }
                    Err(_) => {
                        // Not a SHA-256: let the database chain from here on.
                        self.head = None;
                        self.seeds.clear();
                        return;
                    }
                }
            }
        }
        self.head = rows.iter().filter_map(|r| r.last_position).max();
    }
}
