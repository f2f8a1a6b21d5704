//! The scratch database a scenario measures in: created fresh and migrated
//! on the `DATABASE_URL` server, dropped when the scenario ends.

use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// A database `jeanus_bench_<random>` that exists until [`Scratch::drop`].
pub struct Scratch {
    /// How to reach the server's original database, to drop ours from there.
    admin: PgConnectOptions,
    name: String,
    options: PgConnectOptions,
}

impl Scratch {
    /// Create the database and apply `schema::MIGRATOR` to it.
    pub async fn create(database_url: &str) -> anyhow::Result<Self> {
        let admin = connect_options(database_url)?;
        let name = format!(
            "jeanus_bench_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let mut conn = PgConnection::connect_with(&admin).await.with_context(|| {
            format!(
                "cannot connect to PostgreSQL at DATABASE_URL={}",
                schema::connect::redact_url(database_url, false)
            )
        })?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("failed to create the scratch database {name}"))?;
        let _ = conn.close().await;

        let scratch = Self {
            options: admin.clone().database(&name),
            admin,
            name,
        };
        let migrated = async {
            let mut conn = PgConnection::connect_with(&scratch.options).await?;
            schema::MIGRATOR.run(&mut conn).await?;
            let _ = conn.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = migrated {
            scratch.drop().await;
            return Err(e.context("failed to migrate the scratch database"));
        }
        Ok(scratch)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool of up to `max_connections` on the scratch database, every
    /// connection opened before it is returned (so that no measurement pays
    /// for connecting).
    pub async fn pool(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .with_context(|| format!("failed to connect to the scratch database {}", self.name))?;
        let mut held = Vec::with_capacity(max_connections as usize);
        for _ in 0..max_connections {
            held.push(
                pool.acquire()
                    .await
                    .context("failed to open a pool connection")?,
            );
        }
        drop(held);
        Ok(pool)
    }

    /// Drop the database, ending any session still on it. Failure is only
    /// reported: there is nothing better to do at the end of a run.
    pub async fn drop(self) {
        let dropped = async {
            let mut conn = PgConnection::connect_with(&self.admin).await?;
            sqlx::query(&format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            let _ = conn.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!(
                "jeanus-bench: could not drop the scratch database {}: {e:#}",
                self.name
            );
        }
    }
}

pub fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(database_url).map_err(|e| {
        anyhow::anyhow!(
            "DATABASE_URL is not a valid PostgreSQL URL (postgres://user@host:port/database): {e}"
        )
    })
}

/// A setting as `show` prints it.
pub async fn show(conn: &mut PgConnection, setting: &str) -> anyhow::Result<String> {
    sqlx::query_scalar::<_, String>(&format!("show {setting}"))
        .fetch_one(conn)
        .await
        .with_context(|| format!("failed to read the server setting {setting}"))
}
