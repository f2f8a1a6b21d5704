//! The projector killed mid-stream and restarted, end to end: random
//! histories of the four resources are appended by concurrent writers while
//! the projector is aborted part way through its backlog (no graceful
//! shutdown: its transaction in flight is rolled back with its connection),
//! then started again; afterwards every read-model row equals a fresh fold
//! of its stream from the event log, and the lists show exactly the rows
//! that are not deleted.

use std::time::Duration;

use jeanus_tests::histories::{self, Plan};
use jeanus_tests::read_models::assert_read_models_match_log;
use jeanus_tests::stack::send;
use jeanus_tests::{eventually, spawn_stack, TestEnv};
use reqwest::Method;
use schema::store::{self, EventStore};
use serde_json::json;
use sqlx::PgPool;

const WITHIN: Duration = Duration::from_secs(60);

async fn projected(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select jeanus_projected_position()")
        .fetch_one(pool)
        .await
        .expect("the projected position")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn after_a_projector_killed_mid_stream_restarts_every_row_equals_a_fresh_fold(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let mut stack = spawn_stack(&env).await;
    let tenant = stack.create_tenant("Acme").await;
    let key = stack
        .mint_key_with(
            tenant,
            json!({"label": "t", "scopes": ["read"], "rate_limit_per_minute": 10000}),
        )
        .await;
    let other = stack.create_tenant("Globex").await;
    let store = EventStore::spawn(pool.clone());
    let seed: u64 = rand::random();
    println!("seed {seed}");

    // A backlog built while the projector is down.
    stack.kill_projector().await;
    let plan = Plan {
        streams_per_writer: 80,
        appends_per_writer: 500,
        writers: 8,
        seed,
    };
    histories::append_random(&store, &[tenant, other], plan).await;
    let backlog = store::head(&pool).await.expect("head");

    // Killed part way through the backlog, more than once, while writers
    // keep appending.
    let writers = {
        let store = store.clone();
        tokio::spawn(async move {
            let plan = Plan {
                seed: seed.wrapping_add(1000),
                ..plan
            };
            histories::append_random(&store, &[tenant, other], plan).await
        })
    };
    let mut at_kill = projected(&pool).await;
    for round in 0..3 {
        stack.restart_projector();
        let before = at_kill;
        eventually("the projector to make progress", WITHIN, || async {
            (projected(&pool).await > before).then_some(())
        })
        .await;
        stack.kill_projector().await;
        at_kill = projected(&pool).await;
        println!("round {round}: killed at position {at_kill} (backlog {backlog})");
    }
    assert!(
        at_kill < store::head(&pool).await.expect("head"),
        "the projector was killed before the end of the log"
    );

    stack.restart_projector();
    writers.await.expect("the writers");
    let head = store::head(&pool).await.expect("head");
    eventually("the read models to reach the head", WITHIN, || async {
        (projected(&pool).await >= head).then_some(())
    })
    .await;

    let rows = assert_read_models_match_log(&pool).await;
    println!("rows compared (customers, products, leads, orders): {rows:?}");
    assert!(rows.iter().all(|&n| n > 0));

    // The lists agree: every live row of the tenant, no deleted one.
    for table in ["customers", "products", "leads", "orders"] {
        let live: i64 = sqlx::query_scalar(&format!(
            "select count(*) from {table} where tenant_id = $1 and deleted_at is null"
        ))
        .bind(tenant)
        .fetch_one(&pool)
        .await
        .expect("count");
        let (_, page) =
            send(stack.with_key(Method::GET, &format!("/api/v1/{table}?limit=1"), &key.key)).await;
        assert_eq!(page["pagination"]["total"], live, "{table}");
    }
    stack.shutdown().await;
}
