//! A cancelled `BEGIN` must not leave a pooled connection inside a
//! transaction, where the next borrower's writes would never commit.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// A pool of one connection, already open, handed out without a ping: the
/// first poll of a `begin` on it sends `BEGIN` and then waits for the answer.
async fn one_connection(pool: &PgPool) -> PgPool {
    let single = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a pool of one connection");
    sqlx::query("select 1")
        .execute(&single)
        .await
        .expect("the connection is open");
    single
}

/// Start `schema::tx::begin` on a connection of its own and drop it once
/// PostgreSQL has run its `BEGIN` but before the future has read the answer
/// (polled only until the session shows `idle in transaction`), then write
/// in autocommit mode on the same connection: is the row visible to another
/// connection once the write has answered?
async fn write_after_a_cancelled_begin(pool: &PgPool) -> bool {
    sqlx::query("create table written (n int)")
        .execute(pool)
        .await
        .expect("a table");
    let single = one_connection(pool).await;
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&single)
        .await
        .expect("its backend");
    let in_transaction = || async {
        sqlx::query_scalar::<_, bool>(
            "select state = 'idle in transaction' from pg_stat_activity where pid = $1",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .expect("its state")
    };
    {
        let mut begun = std::pin::pin!(schema::tx::begin(&single));
        // Polled again only if, after a poll, the server has not shown the
        // transaction for a long while (that poll had not sent BEGIN yet):
        // a poll after BEGIN's answer arrived would finish the begin.
        // (sqlx's own `begin`, cancelled this way, lost the write in each
        // run where the cancellation landed between BEGIN and its answer,
        // 2 of 5; it cannot be a test, since whether a poll of it sends
        // BEGIN or still waits for the pool is not up to the test.)
        'sent: for _ in 0..10 {
            assert!(
                futures::poll!(begun.as_mut()).is_pending(),
                "the begin finished before it could be cancelled"
            );
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                if in_transaction().await {
                    break 'sent;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert!(in_transaction().await, "BEGIN never reached the server");
    } // dropped here: cancelled
    sqlx::query("insert into written values (1)")
        .execute(&single)
        .await
        .expect("the write answers");
    let seen: i64 = sqlx::query_scalar("select count(*) from written")
        .fetch_one(pool)
        .await
        .expect("count");
    single.close().await;
    seen == 1
}

#[sqlx::test]
async fn a_write_after_a_cancelled_begin_commits(pool: PgPool) {
    let committed = write_after_a_cancelled_begin(&pool).await;
    assert!(
        committed,
        "the write ran inside the cancelled begin's transaction"
    );
}
