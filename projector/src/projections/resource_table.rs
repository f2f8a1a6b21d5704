//! The batch step shared by the read models that hold one folded stream per
//! row (customers, products, leads, orders; webhook endpoints too): for the
//! events of one consumer batch, load the current rows of the streams they
//! touch in one query (only those that existed before the batch), fold the
//! events onto them in memory with the shared fold (`schema::resources`),
//! and write every touched row back with one multi-row upsert. At most two
//! statements per table per batch, whatever the batch's size; one when the
//! batch only creates.
//!
//! A row is the fold's state as serde writes it: the table's columns are
//! named like the state's fields, so rows are read with `to_jsonb(row)` and
//! written with `jsonb_to_recordset`, and no column is mapped by hand. Both
//! directions go through the same serde derive that the api's fold uses, so
//! a row always equals `Fold::from_events` of its stream.
//!
//! A rebuild's load writes the rows of streams that begin in a batch with
//! `COPY` instead ([`NewRows::Copy`], `copy`): same fold, same columns, only
//! the statement differs.

use std::collections::BTreeMap;

use anyhow::Context as _;
use schema::envelope::RecordedEvent;
use schema::events::EventPayload;
use schema::resources::Fold;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

mod copy;

/// A folded state with its read-model table. Implemented in each table's
/// module (`customers`, `products`, `leads`, `orders`, …).
pub trait ResourceTable: Fold + Send + Sync + Unpin + 'static {
    /// The read model's table (`schema/migrations/0005_resources.sql`).
    const TABLE: &'static str;
    /// The stream type whose events fold into this state.
    const STREAM_TYPE: &'static str;
    /// Every column of `TABLE` with its SQL type, as `jsonb_to_recordset`
    /// reads it; each is a field of the state's serialised form.
    const COLUMNS: &'static [(&'static str, &'static str)];
}

/// How a batch writes the rows of streams that begin in it (their first
/// event here is their first ever, so they have no row yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewRows {
    /// With the upsert, like the rows of older streams: the live path.
    Upsert,
    /// With `COPY`, the older streams' rows still with the upsert: for a
    /// table that nothing else writes to (the rebuild's fresh tables), where
    /// the new rows are most rows. A row that exists already fails the batch
    /// on the primary key, as it fails the upsert.
    Copy,
}

/// Applies this batch's events of `T`'s streams to `T`'s table, within the
/// consumer's transaction. Events of other streams are ignored.
///
/// Only the streams that existed before the batch are loaded (their first
/// event here is not their first ever): a stream that starts in this batch
/// has no row yet, and under load (and in a rebuild) most do, so the common
/// batch costs one statement, not two.
///
/// Fails, writing nothing, on what can only be a bug or a corrupted log: an
/// event the fold refuses (an update before the create, a second create),
/// a stream version not above the row's (an event applied twice), a tenant
/// that differs from the row's, or a row already at or past the version
/// being written (a new stream's events applied twice).
///
/// `table` is `T::TABLE`, or a table shaped like it: the rebuild fills a
/// fresh copy of the read model through this same step.
pub async fn apply_batch<T: ResourceTable>(
    conn: &mut PgConnection,
    table: &str,
    events: &[(RecordedEvent, EventPayload)],
    new_rows: NewRows,
) -> anyhow::Result<()> {
    let ours: Vec<&(RecordedEvent, EventPayload)> = events
        .iter()
        .filter(|(_, payload)| payload.stream_type() == T::STREAM_TYPE)
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    // Each touched stream, with the version of its first event here.
    let mut first: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (event, _) in &ours {
        first.entry(event.stream_id).or_insert(event.stream_version);
    }
    let existing: Vec<Uuid> = first
        .keys()
        .copied()
        .filter(|&id| loaded(&first, id))
        .collect();

    let mut states: BTreeMap<Uuid, Option<T>> = first.keys().map(|&id| (id, None)).collect();
    if !existing.is_empty() {
        for row in load::<T>(conn, table, &existing).await? {
            states.insert(row.meta().id, Some(row));
        }
    }
    for (event, payload) in ours {
        // Every id was inserted above.
        let slot = states.entry(event.stream_id).or_insert(None);
        *slot = Some(fold_one(slot.take(), event, payload)?);
    }
    let (mut rows, mut new) = (Vec::new(), Vec::new());
    for (id, state) in states {
        let Some(state) = state else { continue };
        if new_rows == NewRows::Copy && !loaded(&first, id) {
            new.push(state);
        } else {
            rows.push(state);
        }
    }
    copy::insert(conn, table, T::COLUMNS, &new).await?;
    upsert(conn, table, &rows).await
}

/// Whether the batch loaded `id`'s row: the stream existed before the batch.
fn loaded(first: &BTreeMap<Uuid, i64>, id: Uuid) -> bool {
    first.get(&id).is_some_and(|&version| version > 1)
}

/// One event onto one state, with the checks the fold does not make.
fn fold_one<T: ResourceTable>(
    state: Option<T>,
    event: &RecordedEvent,
    payload: &EventPayload,
) -> anyhow::Result<T> {
    // Versions rise, but may jump: an event of a type this build does not
    // know is skipped by the consumer and leaves a hole here. (A version
    // skipped for any other reason cannot happen: the consumer refuses gaps
    // in positions.)
    let at = state.as_ref().map_or(0, |s| s.meta().version);
    anyhow::ensure!(
        event.stream_version > at,
        "{} {} is at version {at} in the read model, but the event at position {} has stream version {}: an event applied twice",
        T::NAME,
        event.stream_id,
        event.position,
        event.stream_version
    );
    if let Some(s) = &state {
        anyhow::ensure!(
            s.meta().tenant_id == event.tenant_id,
            "the event at position {} is tenant {}'s, but {} {} belongs to tenant {}",
            event.position,
            event.tenant_id,
            T::NAME,
            event.stream_id,
            s.meta().tenant_id
        );
    }
    T::fold(state, event, payload).with_context(|| {
        format!(
            "failed to fold the event at position {} onto {} {}",
            event.position,
            T::NAME,
            event.stream_id
        )
    })
}

/// The current rows of `ids` (those that exist), read as states.
async fn load<T: ResourceTable>(
    conn: &mut PgConnection,
    table: &str,
    ids: &[Uuid],
) -> anyhow::Result<Vec<T>> {
    let sql = format!("select to_jsonb(t) from {table} t where id = any($1)");
    let rows: Vec<Json<T>> = sqlx::query_scalar(&sql)
        // Planned afresh with the ids at hand, never from a cached generic
        // plan: one chosen while the table was small (a fresh database, or
        // the start of a rebuild) would stay a sequential scan as the table
        // grows, until an analyze invalidated it, making each batch cost
        // O(table) (measured: a 100,000-lead rebuild fell to 4,000 events/s).
        .persistent(false)
        .bind(ids)
        .fetch_all(conn)
        .await
        .with_context(|| format!("failed to load rows of {table}"))?;
    Ok(rows.into_iter().map(|Json(row)| row).collect())
}

/// Inserts or replaces `rows` (distinct ids) in one statement. A row is
/// only ever replaced by a later version of itself: one already at or past
/// the version being written means events were applied twice, and fails
/// the batch.
async fn upsert<T: ResourceTable>(
    conn: &mut PgConnection,
    table: &str,
    rows: &[T],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let written = sqlx::query(&upsert_sql(table, T::COLUMNS))
        .bind(Json(rows))
        .execute(conn)
        .await
        .with_context(|| format!("failed to write {} rows of {table}", rows.len()))?
        .rows_affected();
    anyhow::ensure!(
        written == rows.len() as u64,
        "{} of {} rows of {table} were already at or past the version being written: events applied twice",
        rows.len() as u64 - written,
        rows.len(),
    );
    Ok(())
}

/// `insert … select … from jsonb_to_recordset($1) … on conflict (id) do
/// update set <every other column> where <the row is older>`. The same text
/// for every batch of a table, so the prepared statement is reused.
fn upsert_sql(table: &str, columns: &[(&str, &str)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let typed: Vec<String> = columns
        .iter()
        .map(|(name, ty)| format!("{name} {ty}"))
        .collect();
    let set: Vec<String> = names
        .iter()
        .filter(|name| **name != "id")
        .map(|name| format!("{name} = excluded.{name}"))
        .collect();
    format!(
        "insert into {table} ({names})
         select {names} from jsonb_to_recordset($1) as r({typed})
         on conflict (id) do update set {set}
         where {table}.version < excluded.version",
        names = names.join(", "),
        typed = typed.join(", "),
        set = set.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, SubsecRound, Utc};
    use schema::envelope::Metadata;
    use schema::events::{LeadCreated, LeadStage, OrderItem, OrderStatus};
    use schema::resources::{Customer, Lead, Meta, Order, Product};
    use schema::webhook_endpoints::{SealedSecret, WebhookEndpoint};
    use serde_json::Value;
    use sqlx::PgPool;

    use super::*;

    /// Text that COPY's format and PostgreSQL's array literal must escape.
    const AWKWARD: &str = "tab\there\nnew\nline\r\\N {a,\"b\"} \\ é ✓";

    fn meta(at: DateTime<Utc>, deleted: bool) -> Meta {
        Meta {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            version: 3,
            created_at: at,
            updated_at: at,
            deleted_at: deleted.then_some(at),
        }
    }

    /// `rows` written into two copies of `T::TABLE`, one with the upsert and
    /// one with COPY: both hold the same rows, and they read back as `rows`.
    async fn both_writers_agree<T: ResourceTable + PartialEq + std::fmt::Debug>(
        pool: &PgPool,
        mut rows: Vec<T>,
    ) {
        let mut conn = pool.acquire().await.expect("connection");
        let (upserted, copied) = (
            format!("{}_upserted", T::TABLE),
            format!("{}_copied", T::TABLE),
        );
        for table in [&upserted, &copied] {
            sqlx::query(&format!(
                "create table {table} (like {} including all)",
                T::TABLE
            ))
            .execute(&mut *conn)
            .await
            .expect("create a copy of the table");
        }
        upsert(&mut conn, &upserted, &rows).await.expect("upsert");
        copy::insert(&mut conn, &copied, T::COLUMNS, &rows)
            .await
            .expect("copy");
        let mut tables = Vec::new();
        for table in [&upserted, &copied] {
            let all: Vec<Value> =
                sqlx::query_scalar(&format!("select to_jsonb(t) from {table} t order by id"))
                    .fetch_all(&mut *conn)
                    .await
                    .expect("read the rows");
            tables.push(all);
        }
        assert_eq!(tables[0].len(), rows.len());
        assert_eq!(tables[0], tables[1], "{}: the same rows", T::TABLE);
        let ids: Vec<Uuid> = rows.iter().map(|r| r.meta().id).collect();
        let mut back = load::<T>(&mut conn, &copied, &ids).await.expect("load");
        back.sort_by_key(|r| r.meta().id);
        rows.sort_by_key(|r| r.meta().id);
        assert_eq!(back, rows, "{}: the copied rows read back whole", T::TABLE);
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn copied_rows_equal_upserted_rows_in_every_resource_table(pool: PgPool) {
        let at = Utc::now().trunc_subsecs(6);
        both_writers_agree(
            &pool,
            vec![
                Customer {
                    meta: meta(at, false),
                    name: AWKWARD.into(),
                    email: Some(String::new()),
                    phone: None,
                    company: Some("\\N".into()),
                    notes: Some("\"quoted\"".into()),
                },
                Customer {
                    meta: meta(at, true),
                    name: "Ada".into(),
                    email: None,
                    phone: Some("+1 555 0100".into()),
                    company: None,
                    notes: None,
                },
            ],
        )
        .await;
        both_writers_agree(
            &pool,
            vec![Product {
                meta: meta(at, false),
                name: AWKWARD.into(),
                sku: None,
                description: Some("line\nbreak".into()),
                price: Some(i64::MAX),
                currency: Some("EUR".into()),
                active: false,
            }],
        )
        .await;
        both_writers_agree(
            &pool,
            vec![Lead {
                meta: meta(at, false),
                name: AWKWARD.into(),
                company: None,
                email: Some("a@b.example".into()),
                phone: None,
                stage: LeadStage::MeetingBooked,
                estimated_value: Some(0),
                probability: Some(100),
                source: "calendly".into(),
                notes: None,
            }],
        )
        .await;
        both_writers_agree(
            &pool,
            vec![Order {
                meta: meta(at, true),
                customer_id: Uuid::now_v7(),
                status: OrderStatus::Cancelled,
                currency: None,
                items: vec![OrderItem {
                    product_id: Uuid::now_v7(),
                    quantity: 3,
                    unit_price: 1999,
                }],
                total: None,
                notes: Some(AWKWARD.into()),
            }],
        )
        .await;
        both_writers_agree(
            &pool,
            vec![WebhookEndpoint {
                meta: meta(at, false),
                url: "https://example.com/hooks?a=1&b=\\".into(),
                events: vec!["lead.created".into(), AWKWARD.into(), String::new()],
                description: None,
                enabled: true,
                disabled_reason: Some(AWKWARD.into()),
                secrets: vec![
                    SealedSecret {
                        sealed: AWKWARD.into(),
                        expires_at: Some(at),
                    },
                    SealedSecret {
                        sealed: "v1.abc".into(),
                        expires_at: None,
                    },
                ],
            }],
        )
        .await;
    }

    fn lead_created(
        tenant_id: Uuid,
        stream_id: Uuid,
        position: i64,
    ) -> (RecordedEvent, EventPayload) {
        let payload = EventPayload::from(LeadCreated {
            name: format!("Lead {position}"),
            company: None,
            email: None,
            phone: None,
            stage: LeadStage::New,
            estimated_value: None,
            probability: None,
            source: "api".into(),
            notes: None,
        });
        let event = RecordedEvent {
            position,
            id: Uuid::now_v7(),
            tenant_id,
            stream_type: Lead::STREAM_TYPE.to_owned(),
            stream_id,
            stream_version: 1,
            event_type: payload.event_type().to_owned(),
            schema_version: payload.schema_version(),
            occurred_at: Utc::now().trunc_subsecs(6),
            metadata: Metadata::default(),
            data: payload.to_data(),
        };
        (event, payload)
    }

    #[sqlx::test(migrator = "schema::MIGRATOR")]
    async fn a_create_copied_twice_fails_and_writes_nothing(pool: PgPool) {
        let mut conn = pool.acquire().await.expect("connection");
        let tenant = Uuid::now_v7();
        let first = vec![lead_created(tenant, Uuid::now_v7(), 1)];
        apply_batch::<Lead>(&mut conn, Lead::TABLE, &first, NewRows::Copy)
            .await
            .expect("the first application");
        // The same create again, beside a create that is new: the batch
        // fails whole, as it does through the upsert.
        let again = vec![first[0].clone(), lead_created(tenant, Uuid::now_v7(), 2)];
        let err = apply_batch::<Lead>(&mut conn, Lead::TABLE, &again, NewRows::Copy)
            .await
            .expect_err("applied twice");
        assert!(format!("{err:#}").contains("duplicate key"), "{err:#}");
        let rows: i64 = sqlx::query_scalar("select count(*) from leads")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(rows, 1);
        let err = apply_batch::<Lead>(&mut conn, Lead::TABLE, &first, NewRows::Upsert)
            .await
            .expect_err("applied twice, through the upsert too");
        assert!(
            format!("{err:#}").contains("events applied twice"),
            "{err:#}"
        );
    }

    #[test]
    fn the_upsert_names_every_column_and_never_updates_the_id() {
        let sql = upsert_sql(
            "t",
            &[("id", "uuid"), ("name", "text"), ("version", "bigint")],
        );
        assert!(sql.contains("insert into t (id, name, version)"), "{sql}");
        assert!(
            sql.contains("as r(id uuid, name text, version bigint)"),
            "{sql}"
        );
        assert!(
            sql.contains("do update set name = excluded.name, version = excluded.version\n"),
            "{sql}"
        );
        assert!(sql.ends_with("where t.version < excluded.version"), "{sql}");
    }
}
