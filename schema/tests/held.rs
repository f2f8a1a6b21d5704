//! `connect::Held`: a writer's one connection is kept only after a batch
//! that succeeded; one that failed, was killed, or was dropped mid-statement
//! is never handed out again.

use std::time::{Duration, Instant};

use schema::connect::Held;
use sqlx::PgPool;

fn held(pool: &PgPool) -> Held {
    Held::new((*pool.connect_options()).clone())
}

/// The backend serving the next checkout, kept for the one after.
async fn backend(held: &Held) -> i32 {
    let mut out = held.checkout().await.expect("a connection");
    let pid = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(out.conn())
        .await
        .expect("its backend");
    out.keep();
    pid
}

/// Whether backend `pid` is still connected.
async fn connected(pool: &PgPool, pid: i32) -> bool {
    sqlx::query_scalar("select exists (select from pg_stat_activity where pid = $1)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity")
}

/// Until `pid` has left (PostgreSQL notices a closed socket asynchronously).
async fn gone(pool: &PgPool, pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !connected(pool, pid).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[sqlx::test(migrations = false)]
async fn a_kept_connection_serves_the_next_batch(pool: PgPool) {
    let held = held(&pool);
    let first = backend(&held).await;
    assert_eq!(backend(&held).await, first, "the same backend, kept");
    assert!(connected(&pool, first).await);
}

#[sqlx::test(migrations = false)]
async fn a_failed_batch_gives_up_its_connection(pool: PgPool) {
    let held = held(&pool);
    let first = backend(&held).await;
    {
        let mut out = held.checkout().await.expect("a connection");
        let failed = sqlx::query("select 1 / 0").execute(out.conn()).await;
        assert!(failed.is_err(), "division by zero fails");
        // Not kept: dropped here.
    }
    assert!(gone(&pool, first).await, "the failed batch's backend left");
    let second = backend(&held).await;
    assert_ne!(second, first, "a new connection after a failure");
}

#[sqlx::test(migrations = false)]
async fn a_killed_connection_fails_one_batch_and_is_replaced(pool: PgPool) {
    let held = held(&pool);
    let first = backend(&held).await;
    let killed: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&pool)
        .await
        .expect("terminate");
    assert!(killed);
    assert!(gone(&pool, first).await);
    {
        let mut out = held.checkout().await.expect("the held connection");
        let lost = sqlx::query("select 1").execute(out.conn()).await;
        assert!(lost.is_err(), "the killed connection cannot serve");
    }
    let second = backend(&held).await;
    assert_ne!(second, first);
}

#[sqlx::test(migrations = false)]
async fn a_batch_dropped_mid_statement_leaves_its_connection_behind(pool: PgPool) {
    let held = held(&pool);
    let first = backend(&held).await;
    let batch = async {
        let mut out = held.checkout().await.expect("a connection");
        sqlx::query("select pg_sleep(30)")
            .execute(out.conn())
            .await
            .expect("a long statement");
        out.keep();
    };
    // Dropped while PostgreSQL runs the statement.
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let active: bool = sqlx::query_scalar(
                "select exists (select from pg_stat_activity \
                  where pid = $1 and query like '%pg_sleep%' and state = 'active')",
            )
            .bind(first)
            .fetch_one(&pool)
            .await
            .expect("pg_stat_activity");
            if active || Instant::now() > deadline {
                return active;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let active = tokio::select! {
        _ = batch => panic!("the 30 s statement finished"),
        active = watch => active,
    };
    assert!(
        active,
        "the statement was running when its batch was dropped"
    );

    let second = backend(&held).await;
    assert_ne!(second, first, "the interrupted connection is not reused");
    // The abandoned backend sleeps until it next writes to its socket.
    sqlx::query("select pg_terminate_backend($1)")
        .bind(first)
        .execute(&pool)
        .await
        .expect("end the abandoned statement");
}

#[sqlx::test(migrations = false)]
async fn close_ends_the_held_connection(pool: PgPool) {
    let held = held(&pool);
    let first = backend(&held).await;
    held.close().await;
    assert!(gone(&pool, first).await, "closed");
    assert_ne!(
        backend(&held).await,
        first,
        "a checkout after close connects anew"
    );
}
