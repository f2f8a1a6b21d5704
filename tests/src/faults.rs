//! Faults injected into a test's database: a table the services need,
//! renamed away (so that every statement on it fails) and back.

use sqlx::PgPool;

/// `table`, renamed to `<table>_away` until [`TableAway::restore`].
#[must_use = "restore the table, or the rest of the test runs without it"]
pub struct TableAway {
    pool: PgPool,
    table: String,
}

impl TableAway {
    pub async fn take(pool: &PgPool, table: &str) -> Self {
        rename(pool, table, &format!("{table}_away")).await;
        Self {
            pool: pool.clone(),
            table: table.to_owned(),
        }
    }

    pub async fn restore(self) {
        rename(&self.pool, &format!("{}_away", self.table), &self.table).await;
    }
}

async fn rename(pool: &PgPool, from: &str, to: &str) {
    // Identifiers of our own tests, never input.
    sqlx::query(&format!("alter table {from} rename to {to}"))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("rename {from} to {to}: {e}"));
}
