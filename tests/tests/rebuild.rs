//! `jeanus-projector rebuild` against real PostgreSQL and NATS: rebuilt
//! tables equal the live ones row for row (every projection, after a mix of
//! histories across tenants); a rebuild while the api writes and reads
//! loses nothing and the projector carries on after the swap; a replay of
//! 100,000 events gives the same list answers as live; one projection
//! rebuilt leaves the others untouched; an unknown name, a second rebuild,
//! an unreadable event and a crashed rebuild's leftovers are handled.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use jeanus_tests::histories::{self, Plan};
use jeanus_tests::process::binary;
use jeanus_tests::read_models::{
    assert_read_models_match_log, checkpoint, table_indexes, table_oid, table_rows,
    wait_until_projected,
};
use jeanus_tests::writes::{answer, Tenant};
use jeanus_tests::{seed, spawn_stack, Stack, TestEnv};
use projector::projections::Projection;
use projector::rebuild::{rebuild, Options};
use reqwest::{Method, StatusCode};
use schema::envelope::{Metadata, NewEvent};
use schema::events::LeadStage;
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

const PROJECTED_WITHIN: Duration = Duration::from_secs(120);

/// A webhook target on this machine that nothing listens on: deliveries to
/// it fail, which is all these tests need of them.
const DEAD_TARGET: &str = "http://127.0.0.1:9/hooks";

/// Every table's rows, in `Projection::ALL` order.
async fn snapshot(pool: &PgPool) -> Vec<Vec<Value>> {
    let mut tables = Vec::new();
    for p in Projection::ALL {
        tables.push(table_rows(pool, p.table()).await);
    }
    tables
}

/// Three tenants with keys (one revoked), webhook subscriptions (created,
/// patched, rotated, deleted) and random resource histories; returns the
/// tenants.
async fn seed_everything<'a>(stack: &'a Stack, env: &TestEnv, seed: u64) -> Vec<Tenant<'a>> {
    let mut tenants = Vec::new();
    for name in ["Acme", "Globex", "Initech"] {
        tenants.push(Tenant::new(stack, name).await);
    }
    let revoked = &tenants[1].read;
    stack
        .send_ok(
            stack.admin(
                Method::DELETE,
                &format!(
                    "/admin/v1/tenants/{}/keys/{}",
                    revoked.tenant_id, revoked.id
                ),
            ),
            StatusCode::NO_CONTENT,
        )
        .await;
    for tenant in &tenants[..2] {
        let mut ids = Vec::new();
        for events in [
            json!(["lead.created"]),
            json!(["order.created", "lead.stage_changed"]),
            json!(["customer.updated"]),
        ] {
            let created = tenant
                .post(
                    "/api/v1/webhooks",
                    json!({"url": DEAD_TARGET, "events": events}),
                )
                .await
                .expect(StatusCode::CREATED);
            ids.push(created.id());
        }
        tenant
            .patch(
                &format!("/api/v1/webhooks/{}", ids[0]),
                json!({"description": "paused", "enabled": false}),
            )
            .await
            .expect(StatusCode::OK);
        tenant
            .post(
                &format!("/api/v1/webhooks/{}/rotate-secret", ids[1]),
                json!({}),
            )
            .await
            .expect(StatusCode::OK);
        tenant
            .delete(&format!("/api/v1/webhooks/{}", ids[2]))
            .await
            .expect(StatusCode::NO_CONTENT);
    }
    let store = EventStore::spawn(env.pool.clone());
    let ids: Vec<Uuid> = tenants.iter().map(|t| t.id).collect();
    histories::append_random(
        &store,
        &ids,
        Plan {
            streams_per_writer: 40,
            appends_per_writer: 250,
            writers: 4,
            seed,
        },
    )
    .await;
    tenants
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_rebuilt_table_equals_the_live_one_row_for_row(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    seed_everything(&stack, &env, seed).await;
    let head = wait_until_projected(&pool, PROJECTED_WITHIN).await;

    let live = snapshot(&pool).await;
    for (p, rows) in Projection::ALL.iter().zip(&live) {
        assert!(!rows.is_empty(), "{} has rows to rebuild", p.name());
    }
    let mut oids = Vec::new();
    let mut indexes = Vec::new();
    for p in Projection::ALL {
        oids.push(table_oid(&pool, p.table()).await);
        indexes.push(table_indexes(&pool, p.table()).await);
    }

    // Small pages: streams span pages, so the fresh tables are read back
    // and updated as the live ones are.
    let report = rebuild(
        &pool,
        Projection::ALL,
        &Options {
            page_size: 97,
            ..Options::default()
        },
    )
    .await
    .expect("the rebuild succeeds");
    println!("{report}");
    assert_eq!(report.swapped_at, head);

    assert_eq!(
        snapshot(&pool).await,
        live,
        "the rebuilt rows equal the live ones"
    );
    for (i, p) in Projection::ALL.iter().enumerate() {
        assert_ne!(
            table_oid(&pool, p.table()).await,
            oids[i],
            "{} was swapped",
            p.name()
        );
        assert_eq!(
            table_indexes(&pool, p.table()).await,
            indexes[i],
            "{} has the live table's indexes, names and all",
            p.name()
        );
        assert_eq!(checkpoint(&pool, p.name()).await, head);
    }
    let leftovers: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename like '%_rebuild'")
            .fetch_one(&pool)
            .await
            .expect("count tables");
    assert_eq!(leftovers, 0);
    assert_read_models_match_log(&pool).await;
    stack.shutdown().await;
}

/// POSTs leads and moves some of them to another stage until `stop`;
/// the ids acknowledged.
async fn keep_writing(tenant: &Tenant<'_>, stop: &AtomicBool, after_stop: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut extra = 0;
    while extra < after_stop {
        if stop.load(Ordering::Relaxed) {
            extra += 1;
        }
        let n = ids.len();
        let created = tenant
            .create(
                "leads",
                json!({"name": format!("Writer {n}"), "stage": "new", "source": "api"}),
            )
            .await;
        ids.push(created.id());
        if n % 3 == 0 {
            tenant
                .patch(
                    &format!("/api/v1/leads/{}", ids[n / 2]),
                    json!({"stage": "contacted", "notes": format!("touched {n}")}),
                )
                .await
                .expect(StatusCode::OK);
        }
    }
    ids
}

/// Lists leads until `stop`; the number of lists answered 200. Panics on
/// any other answer.
async fn keep_reading(tenant: &Tenant<'_>, stop: &AtomicBool, reads: &AtomicUsize) {
    while !stop.load(Ordering::Relaxed) {
        let list = answer(tenant.stack.with_key(
            Method::GET,
            "/api/v1/leads?limit=5",
            &tenant.read.key,
        ))
        .await;
        assert_eq!(
            list.status,
            StatusCode::OK,
            "a read during the rebuild: {}",
            list.body
        );
        reads.fetch_add(1, Ordering::Relaxed);
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_rebuild_while_the_api_writes_and_reads_loses_nothing_and_the_projector_carries_on(
    pool: PgPool,
) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let tenants = seed_everything(&stack, &env, seed).await;
    wait_until_projected(&pool, PROJECTED_WITHIN).await;
    let leads_table = table_oid(&pool, "leads").await;

    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let rebuilt = async {
        let report = rebuild(
            &pool,
            Projection::ALL,
            &Options {
                page_size: 50,
                ..Options::default()
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        report
    };
    // The writer goes on for 30 more leads after the swap: the projector
    // must apply them to the swapped-in tables.
    let (report, written, ()) = tokio::join!(
        rebuilt,
        keep_writing(&tenants[0], &stop, 30),
        keep_reading(&tenants[2], &stop, &reads),
    );
    let report = report.expect("the rebuild succeeds");
    println!(
        "{report}; {} leads written, {} lists read meanwhile",
        written.len(),
        reads.load(Ordering::Relaxed)
    );
    assert!(written.len() > 30, "writes ran during the rebuild");
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "reads ran during the rebuild"
    );
    assert_ne!(
        table_oid(&pool, "leads").await,
        leads_table,
        "leads was swapped"
    );

    let head = wait_until_projected(&pool, PROJECTED_WITHIN).await;
    assert!(
        head > report.swapped_at,
        "events were appended after the swap"
    );
    assert_read_models_match_log(&pool).await;
    for id in &written {
        tenants[0]
            .get(&format!("/api/v1/leads/{id}"))
            .await
            .expect(StatusCode::OK);
    }
    // And one more, read back at once (the projector is live on the new table).
    let id = tenants[0]
        .create(
            "leads",
            json!({"name": "After", "stage": "won", "source": "api"}),
        )
        .await
        .id();
    let got = tenants[0]
        .get(&format!("/api/v1/leads/{id}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(got.data()["stage"], "won");
    stack.shutdown().await;
}

/// Every page of `path` (a list endpoint), as answered.
async fn all_pages(tenant: &Tenant<'_>, path: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut offset = 0;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let page = tenant
            .get(&format!("{path}{separator}limit=200&offset={offset}"))
            .await
            .expect(StatusCode::OK);
        let n = page.body["data"].as_array().map_or(0, Vec::len);
        pages.push(page.body);
        if n < 200 {
            return pages;
        }
        offset += 200;
    }
}

async fn every_list(tenants: &[Tenant<'_>]) -> Vec<Vec<Value>> {
    let mut lists = Vec::new();
    for tenant in tenants {
        for path in [
            "/api/v1/customers",
            "/api/v1/products",
            "/api/v1/leads",
            "/api/v1/leads?stage=won",
            "/api/v1/leads?q=a",
            "/api/v1/orders",
            "/api/v1/orders?status=open",
            "/api/v1/webhooks",
        ] {
            lists.push(all_pages(tenant, path).await);
        }
    }
    lists
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_replay_of_100000_events_gives_the_same_lists_as_live(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let tenants = seed_everything(&stack, &env, seed).await;
    let store = EventStore::spawn(pool.clone());
    let ids: Vec<Uuid> = tenants.iter().map(|t| t.id).collect();
    let started = std::time::Instant::now();
    histories::append_random(
        &store,
        &ids,
        Plan {
            streams_per_writer: 400,
            appends_per_writer: 3_000,
            writers: 32,
            seed: seed.wrapping_add(1),
        },
    )
    .await;
    println!("appended in {:?}", started.elapsed());
    let head = wait_until_projected(&pool, Duration::from_secs(300)).await;
    println!("projected live in {:?}", started.elapsed());
    assert!(head >= 100_000, "the log holds {head} events");

    let live = every_list(&tenants).await;
    let rows: usize = live
        .iter()
        .flatten()
        .map(|p| p["data"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(rows > 5_000, "the lists hold {rows} rows");

    let report = rebuild(&pool, Projection::ALL, &Options::default())
        .await
        .expect("the rebuild succeeds");
    println!("{report}");
    assert_eq!(report.swapped_at, head);
    assert!(report.events >= 100_000);

    let rebuilt = every_list(&tenants).await;
    assert_eq!(rebuilt.len(), live.len());
    for (after, before) in rebuilt.iter().zip(&live) {
        assert_eq!(after, before, "a list differs after the rebuild");
    }
    stack.shutdown().await;
}

/// `jeanus-projector rebuild …args` against the test's database.
async fn rebuild_process(env: &TestEnv, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("jeanus-projector"))
        .arg("rebuild")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("jeanus-projector runs")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn rebuilding_one_projection_leaves_the_others_untouched(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    seed_everything(&stack, &env, 7).await;
    let head = wait_until_projected(&pool, PROJECTED_WITHIN).await;
    let before = snapshot(&pool).await;
    let mut oids = Vec::new();
    let mut checkpoints = Vec::new();
    for p in Projection::ALL {
        oids.push(table_oid(&pool, p.table()).await);
        checkpoints.push(checkpoint(&pool, p.name()).await);
    }

    let output = rebuild_process(&env, &["--projection", "leads"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rebuilt leads from"), "{stdout}");
    assert!(stdout.contains("events/s"), "the rate is printed: {stdout}");
    assert!(
        stdout.contains(&format!("swapped in at position {head}")),
        "{stdout}"
    );

    assert_eq!(snapshot(&pool).await, before);
    for (i, p) in Projection::ALL.iter().enumerate() {
        let oid = table_oid(&pool, p.table()).await;
        if *p == Projection::Leads {
            assert_ne!(oid, oids[i], "leads was swapped");
        } else {
            assert_eq!(oid, oids[i], "{} was left alone", p.name());
            assert_eq!(checkpoint(&pool, p.name()).await, checkpoints[i]);
        }
    }
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_unknown_projection_is_refused_naming_the_known_ones(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let output = rebuild_process(&env, &["--projection", "lead"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("unknown projection \"lead\""), "{stderr}");
    assert!(
        stderr.contains("tenants, api_keys, customers, products, leads, orders, webhook_endpoints"),
        "{stderr}"
    );
    let tables: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename like '%_rebuild'")
            .fetch_one(&pool)
            .await
            .expect("count tables");
    assert_eq!(tables, 0, "nothing was created");
}

async fn append_lead(store: &EventStore, tenant_id: Uuid, data: Value) -> i64 {
    let id = Uuid::now_v7();
    let mut event = NewEvent::new(&seed::lead("x", None, LeadStage::New), Metadata::default());
    event.data = data;
    let appended = store
        .append(
            StreamRef {
                tenant_id,
                stream_type: schema::events::stream_types::LEAD,
                stream_id: id,
            },
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .expect("append");
    *appended.positions.expect("appended").end()
}

/// Without a projector running: histories appended, rebuilt from nothing.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_rebuild_with_no_projector_sets_the_checkpoint_a_projector_then_carries_on_from(
    pool: PgPool,
) {
    let store = EventStore::spawn(pool.clone());
    let tenants = [Uuid::now_v7(), Uuid::now_v7()];
    histories::append_random(
        &store,
        &tenants,
        Plan {
            streams_per_writer: 30,
            appends_per_writer: 200,
            writers: 3,
            seed: 11,
        },
    )
    .await;
    let head = schema::store::head(&pool).await.expect("head");
    // A crashed rebuild's leftover: dropped and replaced.
    sqlx::query("create table leads_rebuild (junk int)")
        .execute(&pool)
        .await
        .expect("a leftover");
    let report = rebuild(&pool, Projection::ALL, &Options::default())
        .await
        .expect("the rebuild succeeds");
    assert_eq!(report.swapped_at, head);
    let [customers, products, leads, orders] = assert_read_models_match_log(&pool).await;
    assert!(customers + products + leads + orders > 0);
    for p in Projection::ALL {
        assert_eq!(checkpoint(&pool, p.name()).await, head);
    }

    // A projector started now applies what comes next, and only that.
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let tenant = Tenant::new(&stack, "Later").await;
    tenant
        .create(
            "leads",
            json!({"name": "Next", "stage": "new", "source": "api"}),
        )
        .await;
    wait_until_projected(&pool, PROJECTED_WITHIN).await;
    assert_read_models_match_log(&pool).await;
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_unreadable_event_stops_the_rebuild_leaving_the_live_tables_alone(pool: PgPool) {
    let store = EventStore::spawn(pool.clone());
    let tenant = Uuid::now_v7();
    append_lead(
        &store,
        tenant,
        json!({"name": "Fine", "stage": "new", "source": "api"}),
    )
    .await;
    let bad = append_lead(&store, tenant, json!({"nom": "no name", "stage": "new"})).await;
    let oid = table_oid(&pool, "leads").await;

    let err = rebuild(&pool, &[Projection::Leads], &Options::default())
        .await
        .expect_err("the event at `bad` cannot be read");
    let message = format!("{err:#}");
    assert!(message.contains(&format!("position {bad}")), "{message}");
    assert_eq!(table_oid(&pool, "leads").await, oid);
    assert_eq!(checkpoint(&pool, "leads").await, 0);
    let leftovers: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename like '%_rebuild'")
            .fetch_one(&pool)
            .await
            .expect("count tables");
    assert_eq!(leftovers, 0, "the fresh table was dropped");
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_second_rebuild_at_the_same_time_is_refused(pool: PgPool) {
    let mut other = PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("connect");
    let held: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext('jeanus.rebuild'))")
        .fetch_one(&mut other)
        .await
        .expect("lock");
    assert!(held);
    let oid = table_oid(&pool, "leads").await;
    let err = rebuild(&pool, Projection::ALL, &Options::default())
        .await
        .expect_err("one at a time");
    assert!(
        err.to_string().contains("another rebuild is running"),
        "{err:#}"
    );
    assert_eq!(table_oid(&pool, "leads").await, oid);
    other.close().await.expect("close");
}

#[tokio::test]
async fn the_rebuild_command_needs_a_database() {
    let output = tokio::process::Command::new(binary("jeanus-projector"))
        .args(["rebuild"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("jeanus-projector runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL is not set"), "{stderr}");
}
