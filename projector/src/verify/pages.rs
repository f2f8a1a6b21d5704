//! How `verify` reads the log: ranges of positions of about [`PAGE_SIZE`]
//! events, [`READERS`] of them read at once on their own connections,
//! handed over whole and in position order.
//!
//! One connection reading keyset pages was the bound of the walk: the
//! server's work per row (`jsonb::text` of `metadata` and `data` above all)
//! is most of it, and one backend does it on one core. A page's range is
//! known before the previous page is read — by arithmetic over every tenant
//! (positions are dense), by one index-only probe for one tenant — so the
//! next pages are read while this one is hashed. The walk itself stays one
//! pass in position order, so what it reports is what a single reader
//! would: the lowest bad position.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::Context as _;
use schema::chain::CanonicalEvent;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Events per page (the last page of a walk may hold more: it reads to the
/// log's end).
pub const PAGE_SIZE: i64 = 20_000;

/// Pages read at once, each on a connection of its own, while the walk
/// hashes the page before them. Two keep both cores of a small machine
/// busy between the server and the hashing; a pool given to `verify` should
/// have one more connection than this (for the walk's own probes).
pub const READERS: usize = 2;

/// The columns a walk reads, in [`Row::decode`]'s order, `metadata` and
/// `data` as `jsonb::text`.
pub const COLUMNS: &str = "position, id, tenant_id, event_type, schema_version, stream_type, \
                       stream_id, stream_version, occurred_at, metadata::text as metadata, \
                       data::text as data, hash";

/// One stored event, borrowed from the row it was read in.
#[derive(Debug)]
pub struct Row<'a> {
    pub tenant_id: Uuid,
    /// What the hash covers.
    pub event: CanonicalEvent<'a>,
    pub hash: &'a [u8],
}

impl<'a> Row<'a> {
    /// Decodes a row of [`COLUMNS`] by index, borrowing its text: no
    /// allocation per row, no lookup of columns by name.
    pub fn decode(row: &'a PgRow) -> anyhow::Result<Self> {
        let decoded = (|| {
            let event = CanonicalEvent {
                position: row.try_get(0)?,
                id: row.try_get(1)?,
                event_type: row.try_get(3)?,
                schema_version: row.try_get(4)?,
                stream_type: row.try_get(5)?,
                stream_id: row.try_get(6)?,
                stream_version: row.try_get(7)?,
                occurred_at: row.try_get(8)?,
                metadata: row.try_get(9)?,
                data: row.try_get(10)?,
            };
            Ok::<_, sqlx::Error>(Self {
                tenant_id: row.try_get(2)?,
                event,
                hash: row.try_get(11)?,
            })
        })();
        decoded.context("failed to decode a stored event")
    }
}

/// The pages of one walk, in position order. Dropping it aborts the reads
/// in flight.
pub struct Pages {
    pool: PgPool,
    tenant: Option<Uuid>,
    /// The last position of every tenant's log when the walk started.
    head: i64,
    sql: Arc<str>,
    /// The position the next page to be read starts after; `None` once the
    /// last page (the one that reads to the log's end) is under way.
    next_after: Option<i64>,
    reading: VecDeque<JoinHandle<anyhow::Result<Vec<PgRow>>>>,
}

impl Pages {
    /// The pages after position `after`, of `tenant`'s events or of every
    /// tenant's; `head` is the last position written when the walk began.
    /// Reading starts on the first [`Pages::next`].
    pub fn new(pool: &PgPool, tenant: Option<Uuid>, after: i64, head: i64) -> Self {
        let filter = if tenant.is_some() {
            "tenant_id = $3 and "
        } else {
            ""
        };
        let sql = format!(
            "select {COLUMNS} from events where {filter}position > $1 and position <= $2 \
             order by position"
        );
        Self {
            pool: pool.clone(),
            tenant,
            head,
            sql: sql.into(),
            next_after: Some(after),
            reading: VecDeque::with_capacity(READERS),
        }
    }

    /// The next page's rows in position order (perhaps none, for the last
    /// page); `None` after the last page.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<PgRow>>> {
        while self.reading.len() < READERS {
            let Some(after) = self.next_after else { break };
            let upto = self.page_end(after).await?;
            self.next_after = upto;
            let (pool, sql, tenant) = (self.pool.clone(), self.sql.clone(), self.tenant);
            self.reading.push_back(tokio::spawn(async move {
                read(&pool, &sql, tenant, after, upto).await
            }));
        }
        let Some(reading) = self.reading.pop_front() else {
            return Ok(None);
        };
        let rows = reading.await.context("a page reader failed")??;
        Ok(Some(rows))
    }

    /// The last position of the page after `after`, or `None` if that page
    /// is the last one: it then reads to the end of the log, so that events
    /// appended since the walk began are verified too, as a keyset walk
    /// would.
    async fn page_end(&self, after: i64) -> anyhow::Result<Option<i64>> {
        let Some(tenant) = self.tenant else {
            // Positions are dense: a page of every tenant is PAGE_SIZE
            // positions (a missing one is the walk's to report).
            return Ok((after + PAGE_SIZE < self.head).then_some(after + PAGE_SIZE));
        };
        sqlx::query_scalar(
            "select position from events where tenant_id = $1 and position > $2
              order by position offset $3 limit 1",
        )
        .bind(tenant)
        .bind(after)
        .bind(PAGE_SIZE - 1)
        .fetch_optional(&self.pool)
        .await
        .context("failed to find where a page of the tenant's events ends")
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        for reading in &self.reading {
            reading.abort();
        }
    }
}

/// The events in positions `(after, upto]` (to the log's end without
/// `upto`), of `tenant` if given.
async fn read(
    pool: &PgPool,
    sql: &str,
    tenant: Option<Uuid>,
    after: i64,
    upto: Option<i64>,
) -> anyhow::Result<Vec<PgRow>> {
    let query = sqlx::query(sql).bind(after).bind(upto.unwrap_or(i64::MAX));
    match tenant {
        None => query.fetch_all(pool).await,
        Some(tenant) => query.bind(tenant).fetch_all(pool).await,
    }
    .context("failed to read the event log")
}
