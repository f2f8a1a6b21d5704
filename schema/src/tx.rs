//! Beginning a transaction on a pool in a way that survives cancellation.
//!
//! sqlx 0.8.6 counts a transaction as begun only once `BEGIN` has been
//! answered. A future dropped while that round trip is in flight (an HTTP
//! client that hangs up, a timeout, an aborted task) leaves the session
//! inside a transaction that sqlx does not know of, and returns the
//! connection to the pool (launchbadge/sqlx#4393, fixed in 0.9). The next
//! borrower's statements then run in it: a write in autocommit mode, such as
//! the event store's `jeanus_append`, is answered as if committed and is
//! never committed. [`begin`] runs the `BEGIN` on a task of its own, which
//! finishes it whatever happens to the caller; a transaction nobody awaits
//! any more is then dropped whole, which rolls it back.

use sqlx::{PgPool, Postgres, Transaction};

/// `pool.begin()`, safe to cancel (see the module doc).
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = pool.clone();
    match tokio::spawn(async move { pool.begin().await }).await {
        Ok(begun) => begun,
        // The task panicked or the runtime is shutting down.
        Err(e) => Err(sqlx::Error::Io(std::io::Error::other(e))),
    }
}
