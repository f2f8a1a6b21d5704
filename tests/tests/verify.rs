//! `jeanus-projector verify` against a real log: an intact chain passes;
//! an altered payload, a removed row and two swapped rows each fail at
//! their position; a checkpoint must match the stored chain, and the walk
//! continues from it. Through the library function and through the binary
//! (its exit code and messages). Logs of several pages, which `verify`
//! reads at once on several connections, fail at the lowest bad position
//! whichever page it is in, at a page's edges too.

use std::process::{Command, Output};

use jeanus_tests::chain::{
    alter_payload, append_events, bulk_tenant, positions_of, remove, swap, write_chained_log,
    FILLER_TYPE,
};
use jeanus_tests::process::binary;
use jeanus_tests::TestEnv;
use projector::verify::{self, Broken, Checkpoint, Fault, Intact, Options, Outcome, PAGE_SIZE};
use schema::chain::to_hex;
use schema::store::EventStore;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Two tenants whose events interleave; (a, b).
async fn two_tenants(pool: &PgPool) -> (Uuid, Uuid) {
    let store = EventStore::spawn(pool.clone());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..4 {
        append_events(&store, a, 5, 2, 30).await;
        append_events(&store, b, 3, 3, 30).await;
    }
    (a, b)
}

async fn run(pool: &PgPool, options: Options) -> Outcome {
    let mut reports = 0;
    let outcome = verify::verify(pool, &options, |_| reports += 1)
        .await
        .expect("verified");
    if matches!(outcome, Outcome::Intact(_)) {
        assert!(reports > 0, "no progress was reported");
    }
    outcome
}

fn broken(outcome: Outcome) -> Broken {
    match outcome {
        Outcome::Broken(b) => b,
        Outcome::Intact(i) => panic!("the chain passed: {i:?}"),
    }
}

fn every_tenant() -> Options {
    Options::default()
}

fn tenant(id: Uuid) -> Options {
    Options {
        tenant: Some(id),
        checkpoint: None,
    }
}

async fn hash_at(pool: &PgPool, position: i64) -> [u8; 32] {
    let hash: Vec<u8> = sqlx::query_scalar("select hash from events where position = $1")
        .bind(position)
        .fetch_one(pool)
        .await
        .expect("a hash");
    hash.try_into().expect("32 bytes")
}

fn verify_binary(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(binary("jeanus-projector"))
        .arg("verify")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &env.database_url)
        .output()
        .expect("jeanus-projector runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_intact_chain_passes_for_every_tenant_and_for_one(pool: PgPool) {
    let (a, b) = two_tenants(&pool).await;
    let total = 4 * (5 + 3);
    assert_eq!(
        run(&pool, every_tenant()).await,
        Outcome::Intact(Intact {
            events: total,
            tenants: 2,
            last_position: total as i64,
        })
    );
    let Outcome::Intact(one) = run(&pool, tenant(b)).await else {
        panic!("tenant b's chain is broken");
    };
    assert_eq!((one.events, one.tenants), (12, 1));
    let Outcome::Intact(none) = run(&pool, tenant(Uuid::now_v7())).await else {
        panic!("an unknown tenant's empty chain is broken");
    };
    assert_eq!(none.events, 0);
    let _ = a;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_altered_payload_fails_at_its_position(pool: PgPool) {
    let (a, _) = two_tenants(&pool).await;
    let victim = positions_of(&pool, a).await[7];
    alter_payload(&pool, victim).await;
    for options in [every_tenant(), tenant(a)] {
        let b = broken(run(&pool, options).await);
        assert_eq!((b.position, b.tenant_id), (victim, Some(a)));
        assert_eq!(b.fault, Fault::HashMismatch);
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_removed_row_fails_at_its_position(pool: PgPool) {
    let (a, _) = two_tenants(&pool).await;
    let positions = positions_of(&pool, a).await;
    let victim = positions[4];
    remove(&pool, victim).await;
    let b = broken(run(&pool, every_tenant()).await);
    assert_eq!((b.position, b.fault), (victim, Fault::Missing));
    assert_eq!(b.events as i64, victim - 1);
    // Within one tenant, the gap shows at the tenant's next event.
    let b = broken(run(&pool, tenant(a)).await);
    assert_eq!((b.position, b.fault), (positions[5], Fault::HashMismatch));
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_row_removed_from_the_end_fails_at_its_position(pool: PgPool) {
    two_tenants(&pool).await;
    let head = schema::store::head(&pool).await.expect("head");
    remove(&pool, head).await;
    let b = broken(run(&pool, every_tenant()).await);
    assert_eq!((b.position, b.fault), (head, Fault::Missing));
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn two_swapped_rows_fail_at_the_first(pool: PgPool) {
    let (a, b) = two_tenants(&pool).await;
    // Within a tenant.
    let pa = positions_of(&pool, a).await;
    swap(&pool, pa[3], pa[6]).await;
    let found = broken(run(&pool, every_tenant()).await);
    assert_eq!((found.position, found.fault), (pa[3], Fault::HashMismatch));
    swap(&pool, pa[3], pa[6]).await;
    assert!(matches!(
        run(&pool, every_tenant()).await,
        Outcome::Intact(_)
    ));

    // Across tenants: each chain loses one event and gains another's.
    let pb = positions_of(&pool, b).await;
    let (first, second) = (pa[2].min(pb[1]), pa[2].max(pb[1]));
    swap(&pool, first, second).await;
    let found = broken(run(&pool, every_tenant()).await);
    assert_eq!((found.position, found.fault), (first, Fault::HashMismatch));
    // Within a's chain alone, its event at pa[2] is gone: the next one breaks.
    let found = broken(run(&pool, tenant(a)).await);
    assert_eq!((found.position, found.fault), (pa[3], Fault::HashMismatch));
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_checkpoint_must_match_and_the_walk_continues_from_it(pool: PgPool) {
    let (a, b) = two_tenants(&pool).await;
    let pa = positions_of(&pool, a).await;
    let at = pa[9];
    let checkpoint = Checkpoint {
        position: at,
        hash: hash_at(&pool, at).await,
    };
    let from = |tenant, checkpoint| Options {
        tenant,
        checkpoint: Some(checkpoint),
    };

    let Outcome::Intact(rest) = run(&pool, from(Some(a), checkpoint)).await else {
        panic!("from a good checkpoint");
    };
    assert_eq!(rest.events as usize, pa.len() - 10);
    let Outcome::Intact(all) = run(&pool, from(None, checkpoint)).await else {
        panic!("from a good checkpoint, every tenant");
    };
    assert_eq!(
        all.events as i64,
        schema::store::head(&pool).await.expect("head") - at
    );

    // A tampered event after the checkpoint is still found.
    alter_payload(&pool, pa[12]).await;
    let found = broken(run(&pool, from(Some(a), checkpoint)).await);
    assert_eq!(found.position, pa[12]);

    // A checkpoint the stored chain does not hold.
    let wrong = Checkpoint {
        hash: [7; 32],
        ..checkpoint
    };
    let found = broken(run(&pool, from(Some(a), wrong)).await);
    assert_eq!(
        (found.position, found.fault),
        (at, Fault::CheckpointMismatch)
    );
    let pb = positions_of(&pool, b).await;
    let theirs = Checkpoint {
        position: pb[0],
        hash: hash_at(&pool, pb[0]).await,
    };
    let found = broken(run(&pool, from(Some(a), theirs)).await);
    assert_eq!(found.fault, Fault::CheckpointOtherTenant);
    let beyond = Checkpoint {
        position: 10_000,
        ..checkpoint
    };
    let found = broken(run(&pool, from(None, beyond)).await);
    assert_eq!(found.fault, Fault::CheckpointMissing);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_binary_exits_non_zero_naming_the_first_bad_position(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let (a, _) = two_tenants(&pool).await;
    let pa = positions_of(&pool, a).await;

    let ok = verify_binary(&env, &[]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let stdout = text(&ok.stdout);
    assert!(stdout.contains("intact: 32 events"), "{stdout}");
    assert!(stdout.contains("events/s"), "the final rate: {stdout}");

    let checkpoint = format!("{}:{}", pa[3], to_hex(&hash_at(&pool, pa[3]).await));
    let ok = verify_binary(
        &env,
        &["--tenant", &a.to_string(), "--from-checkpoint", &checkpoint],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    alter_payload(&pool, pa[6]).await;
    let failed = verify_binary(&env, &[]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = text(&failed.stderr);
    assert!(
        stderr.contains(&format!("broken at position {} (tenant {a})", pa[6])),
        "{stderr}"
    );

    let wrong = format!("{}:{}", pa[3], "ab".repeat(32));
    let failed = verify_binary(&env, &["--from-checkpoint", &wrong]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stderr).contains(&format!("position {}", pa[3])));

    let refused = verify_binary(&env, &["--from-checkpoint", "12"]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("POSITION:HASH"));

    // A database that cannot be reached is not a broken chain.
    let unreachable = Command::new(binary("jeanus-projector"))
        .arg("verify")
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .output()
        .expect("runs");
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "{}",
        text(&unreachable.stderr)
    );
}

/// A log of `events` events of `tenants` tenants, written in bulk (the
/// tenant of position p is `bulk_tenant(p % tenants)`).
async fn bulk_log(pool: &PgPool, events: i64, tenants: i64) {
    write_chained_log(
        pool,
        events,
        tenants,
        FILLER_TYPE,
        1,
        &json!({}),
        &json!({"n": 1, "amount": 12.50, "text": "tab \t é"}),
    )
    .await
    .expect("a bulk log");
}

/// Asserts that a walk over every tenant breaks at `position` with `fault`,
/// having verified every event before it.
async fn assert_broken_at(pool: &PgPool, position: i64, fault: Fault) {
    let b = broken(run(pool, every_tenant()).await);
    assert_eq!((b.position, b.fault), (position, fault));
    assert_eq!(b.events as i64, position - 1);
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_altered_event_at_a_page_edge_fails_at_its_position_below_any_later_one(pool: PgPool) {
    let events = 2 * PAGE_SIZE + 500;
    bulk_log(&pool, events, 3).await;
    let Outcome::Intact(all) = run(&pool, every_tenant()).await else {
        panic!("the bulk log does not verify");
    };
    assert_eq!((all.events as i64, all.tenants), (events, 3));

    // From the last page down: each new fault is below the ones found
    // before, in pages read before or at once with theirs.
    for victim in [
        events,
        2 * PAGE_SIZE + 1,
        2 * PAGE_SIZE,
        PAGE_SIZE + 1,
        PAGE_SIZE,
    ] {
        alter_payload(&pool, victim).await;
        let b = broken(run(&pool, every_tenant()).await);
        assert_eq!(
            (b.position, b.tenant_id, b.fault),
            (victim, Some(bulk_tenant(victim % 3)), Fault::HashMismatch)
        );
        assert_eq!(b.events as i64, victim - 1);
    }
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn rows_removed_or_swapped_across_a_page_edge_fail_at_the_first(pool: PgPool) {
    let events = 2 * PAGE_SIZE + 500;
    bulk_log(&pool, events, 3).await;

    swap(&pool, PAGE_SIZE, PAGE_SIZE + 1).await;
    assert_broken_at(&pool, PAGE_SIZE, Fault::HashMismatch).await;
    swap(&pool, PAGE_SIZE, PAGE_SIZE + 1).await;
    assert!(matches!(
        run(&pool, every_tenant()).await,
        Outcome::Intact(_)
    ));

    remove(&pool, 2 * PAGE_SIZE + 1).await;
    assert_broken_at(&pool, 2 * PAGE_SIZE + 1, Fault::Missing).await;
    remove(&pool, PAGE_SIZE + 1).await;
    assert_broken_at(&pool, PAGE_SIZE + 1, Fault::Missing).await;
    remove(&pool, PAGE_SIZE).await;
    assert_broken_at(&pool, PAGE_SIZE, Fault::Missing).await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn one_tenants_walk_over_several_pages_fails_at_its_page_edges(pool: PgPool) {
    // Tenant 0 holds the even positions: one page of its own and 100 more.
    let events = 2 * (PAGE_SIZE + 100);
    bulk_log(&pool, events, 2).await;
    let tenant0 = bulk_tenant(0);
    let Outcome::Intact(mine) = run(&pool, tenant(tenant0)).await else {
        panic!("the tenant's chain does not verify");
    };
    assert_eq!(mine.events as i64, PAGE_SIZE + 100);
    assert_eq!(mine.last_position, events);

    // From a checkpoint inside its first page, across the edge.
    let at = 20;
    let checkpoint = Checkpoint {
        position: at,
        hash: hash_at(&pool, at).await,
    };
    let from = Options {
        tenant: Some(tenant0),
        checkpoint: Some(checkpoint),
    };
    let Outcome::Intact(rest) = run(&pool, from.clone()).await else {
        panic!("from a good checkpoint");
    };
    assert_eq!(rest.events as i64, PAGE_SIZE + 100 - at / 2);

    // Its first event of the second page, then its last of the first.
    for victim in [2 * (PAGE_SIZE + 1), 2 * PAGE_SIZE] {
        alter_payload(&pool, victim).await;
        for options in [tenant(tenant0), from.clone()] {
            let b = broken(run(&pool, options).await);
            assert_eq!((b.position, b.fault), (victim, Fault::HashMismatch));
        }
    }
    // The other tenant's chain is untouched.
    assert!(matches!(
        run(&pool, tenant(bulk_tenant(1))).await,
        Outcome::Intact(_)
    ));
}
