//! The rebuild's fresh tables: `<table>_rebuild`, shaped like the live read
//! model (its columns, defaults and checks), loaded with only its primary
//! key, given the live table's other indexes and constraints once loaded,
//! then swapped in for the live table by renames.

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::{PgConnection, PgPool};

use crate::projections::Projection;

/// PostgreSQL's longest identifier, in bytes; a longer one is silently cut.
const MAX_IDENTIFIER: usize = 63;

/// Index builds (and then `analyze`s) run at once.
const PARALLEL_BUILDS: usize = 2;
/// `maintenance_work_mem` of an index build: enough to sort the largest
/// table's index in memory (the default, 64MB, spills to disk past about a
/// million rows).
const BUILD_MEMORY: &str = "256MB";

/// The suffix of a fresh table and of its indexes until the swap.
const SUFFIX: &str = "_rebuild";

/// A fresh table being built for one projection.
#[derive(Debug)]
pub(super) struct Fresh {
    pub(super) projection: Projection,
    /// `<table>_rebuild`.
    pub(super) table: String,
    /// What the table gets once loaded: the live table's indexes and
    /// constraints but its primary key, renamed (`create index …`, `alter
    /// table … add constraint …`). Building them once over the loaded rows
    /// is cheaper than maintaining them row by row.
    deferred: Vec<String>,
    /// Each index of the fresh table with the live index's name, which it
    /// takes at the swap (with its constraint, if it has one).
    renames: Vec<(String, String)>,
}

/// One index of the live table, as the catalogue describes it.
#[derive(sqlx::FromRow)]
struct LiveIndex {
    name: String,
    /// `CREATE [UNIQUE] INDEX name ON schema.table USING …`
    definition: String,
    /// The constraint the index backs (primary key, unique), if any.
    constraint: Option<String>,
    /// `PRIMARY KEY (id)`, `UNIQUE (key_hash)`, …
    constraint_definition: Option<String>,
    primary: bool,
}

/// Drops what a crashed rebuild left behind and creates the projection's
/// empty fresh table with the live table's columns and primary key.
pub(super) async fn create(
    conn: &mut PgConnection,
    projection: Projection,
) -> anyhow::Result<Fresh> {
    let live = projection.table();
    let table = suffixed(live)?;
    drop_if_exists(conn, &table).await?;
    execute(
        conn,
        &format!("create table {table} (like {live} including all excluding indexes)"),
    )
    .await?;

    let indexes: Vec<LiveIndex> = sqlx::query_as(
        "select i.relname as name,
                pg_get_indexdef(x.indexrelid) as definition,
                c.conname as constraint,
                pg_get_constraintdef(c.oid) as constraint_definition,
                x.indisprimary as primary
           from pg_index x
           join pg_class i on i.oid = x.indexrelid
           left join pg_constraint c on c.conindid = x.indexrelid and c.conrelid = x.indrelid
          where x.indrelid = $1::regclass
          order by i.relname",
    )
    .bind(live)
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("failed to read the indexes of {live}"))?;

    let mut fresh = Fresh {
        projection,
        table,
        deferred: Vec::new(),
        renames: Vec::new(),
    };
    let mut has_primary_key = false;
    for index in indexes {
        let name = suffixed(&index.name)?;
        let statement = match (&index.constraint, &index.constraint_definition) {
            (Some(_), Some(definition)) => format!(
                "alter table {} add constraint {name} {definition}",
                fresh.table
            ),
            _ => rename_index_definition(&index.definition, &name, &fresh.table)?,
        };
        if index.primary {
            // Loaded with it: the projections load and upsert rows by id.
            execute(conn, &statement).await?;
            has_primary_key = true;
        } else {
            fresh.deferred.push(statement);
        }
        fresh.renames.push((name, index.name));
    }
    anyhow::ensure!(
        has_primary_key,
        "{live} has no primary key: the projections write its rows by id"
    );
    Ok(fresh)
}

/// Builds every fresh table's deferred indexes and constraints, then
/// gathers each table's statistics (so that the planner knows it from its
/// first query after the swap). One index build uses one core of the
/// server (the rows are sorted by one process; a parallel build rarely pays
/// off at these sizes), so they run [`PARALLEL_BUILDS`] at a time, each on
/// a connection of its own, the largest tables' first.
pub(super) async fn finish(pool: &PgPool, fresh: &[Fresh]) -> anyhow::Result<()> {
    let mut by_size = Vec::new();
    for table in fresh {
        let bytes: i64 = sqlx::query_scalar("select pg_relation_size($1::regclass)")
            .bind(&table.table)
            .fetch_one(pool)
            .await
            .with_context(|| format!("failed to read the size of {}", table.table))?;
        by_size.push((bytes, table));
    }
    by_size.sort_by_key(|&(bytes, _)| std::cmp::Reverse(bytes));
    let builds = by_size
        .iter()
        .flat_map(|(_, table)| table.deferred.iter().cloned());
    run_at_once(pool, builds).await?;
    let analyses = by_size
        .iter()
        .map(|(_, table)| format!("analyze {}", table.table));
    run_at_once(pool, analyses).await
}

/// Runs `statements` [`PARALLEL_BUILDS`] at a time, each in a transaction
/// of its own on its own connection, with [`BUILD_MEMORY`] to sort in.
async fn run_at_once(
    pool: &PgPool,
    statements: impl Iterator<Item = String>,
) -> anyhow::Result<()> {
    futures::stream::iter(statements)
        .map(|statement| async move {
            let mut tx = schema::tx::begin(pool)
                .await
                .context("failed to connect to build the indexes")?;
            execute(
                &mut tx,
                &format!("set local maintenance_work_mem = '{BUILD_MEMORY}'"),
            )
            .await?;
            execute(&mut tx, &statement).await?;
            tx.commit()
                .await
                .with_context(|| format!("failed to commit `{statement}`"))
        })
        .buffer_unordered(PARALLEL_BUILDS)
        .try_collect()
        .await
}

/// Within the swap's transaction: the live table is dropped and the fresh
/// one takes its name, and each of its indexes the live index's name.
/// Anything that depends on the live table (a view, a foreign key) makes the
/// drop fail, and so the whole swap, rather than vanish with it.
pub(super) async fn swap(conn: &mut PgConnection, fresh: &Fresh) -> anyhow::Result<()> {
    let live = fresh.projection.table();
    execute(conn, &format!("drop table {live}")).await?;
    execute(
        conn,
        &format!("alter table {} rename to {live}", fresh.table),
    )
    .await?;
    for (from, to) in &fresh.renames {
        // Renaming an index that backs a constraint renames the constraint.
        execute(conn, &format!("alter index {from} rename to {to}")).await?;
    }
    Ok(())
}

pub(super) async fn drop_if_exists(conn: &mut PgConnection, table: &str) -> anyhow::Result<()> {
    execute(conn, &format!("drop table if exists {table}")).await
}

async fn execute(conn: &mut PgConnection, statement: &str) -> anyhow::Result<()> {
    sqlx::query(statement)
        .execute(conn)
        .await
        .with_context(|| format!("failed to run `{statement}`"))?;
    Ok(())
}

/// `name_rebuild`, refusing a name PostgreSQL would cut short.
fn suffixed(name: &str) -> anyhow::Result<String> {
    let suffixed = format!("{name}{SUFFIX}");
    anyhow::ensure!(
        suffixed.len() <= MAX_IDENTIFIER,
        "{suffixed} is longer than PostgreSQL's {MAX_IDENTIFIER}-byte names: give {name} a shorter name"
    );
    Ok(suffixed)
}

/// `CREATE INDEX leads_list ON public.leads USING btree (…) WHERE …` as the
/// same index named `name` on `table`: everything from ` USING ` on is kept.
fn rename_index_definition(definition: &str, name: &str, table: &str) -> anyhow::Result<String> {
    let (head, method) = definition
        .split_once(" USING ")
        .with_context(|| format!("cannot read the index definition `{definition}`"))?;
    let unique = if head.starts_with("CREATE UNIQUE INDEX ") {
        "unique "
    } else {
        anyhow::ensure!(
            head.starts_with("CREATE INDEX "),
            "cannot read the index definition `{definition}`"
        );
        ""
    };
    Ok(format!(
        "create {unique}index {name} on {table} using {method}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_definition_is_moved_to_the_fresh_table_whole() {
        assert_eq!(
            rename_index_definition(
                "CREATE INDEX leads_list ON public.leads USING btree (tenant_id, created_at DESC, id DESC) WHERE (deleted_at IS NULL)",
                "leads_list_rebuild",
                "leads_rebuild",
            )
            .expect("readable"),
            "create index leads_list_rebuild on leads_rebuild using btree (tenant_id, created_at DESC, id DESC) WHERE (deleted_at IS NULL)"
        );
        assert_eq!(
            rename_index_definition(
                "CREATE UNIQUE INDEX x ON public.t USING gin (events)",
                "x_rebuild",
                "t_rebuild"
            )
            .expect("readable"),
            "create unique index x_rebuild on t_rebuild using gin (events)"
        );
        assert!(rename_index_definition("something else", "a", "b").is_err());
    }

    #[test]
    fn a_name_too_long_once_suffixed_is_refused() {
        assert_eq!(suffixed("leads_list").expect("short"), "leads_list_rebuild");
        assert!(suffixed(&"x".repeat(56)).is_err());
        assert!(suffixed(&"x".repeat(55)).is_ok());
    }
}
