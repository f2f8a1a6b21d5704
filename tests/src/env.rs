//! A test's own world: a fresh, migrated PostgreSQL database (from
//! `#[sqlx::test]`) and a NATS prefix no other test uses, whose JetStream
//! stream is deleted when the test ends, pass or fail.

use async_nats::jetstream;
use schema::nats::Names;
use sqlx::PgPool;
use uuid::Uuid;

pub struct TestEnv {
    pub pool: PgPool,
    /// A URL for this test's database, for services started as processes.
    pub database_url: String,
    pub nats_url: String,
    /// The rate limiter's store (`REDIS_URL`); keys under the test's prefix.
    pub redis_url: String,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub names: Names,
}

impl TestEnv {
    /// Wrap the pool `#[sqlx::test(migrator = "schema::MIGRATOR")]` gives.
    pub async fn new(pool: PgPool) -> Self {
        let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set by scripts/test");
        let database = pool
            .connect_options()
            .get_database()
            .expect("sqlx::test names its database")
            .to_owned();
        let database_url = database_url_for(&base, &database);
        let nats_url =
            std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let nats = async_nats::connect(&nats_url)
            .await
            .expect("NATS is reachable at NATS_URL");
        let js = jetstream::new(nats.clone());
        let redis_url = api::config::redis_url_from_env();
        let prefix = format!("t{}", Uuid::now_v7().simple());
        let names = Names::new(&prefix).expect("a valid prefix");
        Self {
            pool,
            database_url,
            nats_url,
            redis_url,
            nats,
            js,
            names,
        }
    }

    pub fn prefix(&self) -> &str {
        self.names.prefix()
    }
}

/// `base` with its database name replaced.
fn database_url_for(base: &str, database: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}/{database}")
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Delete the stream on a thread of its own: Drop cannot await, and
        // it must run even when the test panicked.
        let url = self.nats_url.clone();
        let stream = self.names.stream_name();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(&url).await {
                    let _ = jetstream::new(client).delete_stream(&stream).await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_keeping_host_and_user() {
        assert_eq!(
            database_url_for("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            database_url_for("postgres://u:p@h:1/db?sslmode=disable", "t2"),
            "postgres://u:p@h:1/t2"
        );
    }
}
