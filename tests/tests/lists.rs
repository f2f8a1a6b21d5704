//! The list endpoints end to end, against real servers: `GET /api/v1/
//! customers`, `/products`, `/leads` and `/orders` — every parameter and
//! every refusal, `q` matched literally, order and pagination, soft
//! deletes, tenant isolation and scope. Data is appended straight through
//! the event store (`jeanus_tests::seed`); the lists' own read-your-writes
//! wait makes it visible to the very next list.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use jeanus_tests::pages::{field_names, ids, names};
use jeanus_tests::seed::{self, append, create};
use jeanus_tests::stack::{send, MintedKey};
use jeanus_tests::{spawn_stack, Stack, TestEnv};
use reqwest::{Method, StatusCode};
use schema::events::{
    CustomerDeleted, LeadDeleted, LeadStage, LeadStageChanged, OrderDeleted, OrderStatus,
    ProductDeleted,
};
use schema::store::EventStore;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const RESOURCES: [&str; 4] = ["customers", "products", "leads", "orders"];

/// `GET path` with `key`: 200 and its body.
async fn list(stack: &Stack, key: &MintedKey, path: &str) -> Value {
    let (status, body) = send(stack.with_key(Method::GET, path, &key.key)).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// `GET path` is 400 `invalid_param` and its message names `param`.
async fn invalid_param(stack: &Stack, key: &MintedKey, path: &str, param: &str) {
    let (status, body) = send(stack.with_key(Method::GET, path, &key.key)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "GET {path}: {body}");
    assert_eq!(body["error"]["code"], "invalid_param", "GET {path}: {body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains(&format!("\"{param}\"")),
        "GET {path}: the message names {param}: {message}"
    );
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_list_pages_newest_first_with_the_total_and_every_field(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());

    let mut created = Vec::new();
    for i in 0..7 {
        let name = format!("Customer {i}");
        created.push(
            create(&store, key.tenant_id, seed::customer(&name, None), None)
                .await
                .0,
        );
    }
    let newest_first: Vec<Uuid> = created.iter().rev().copied().collect();

    let all = list(&stack, &key, "/api/v1/customers").await;
    assert_eq!(ids(&all), newest_first);
    assert_eq!(
        all["pagination"],
        json!({"total": 7, "limit": 50, "offset": 0})
    );
    let first = &all["data"][0];
    let fields = field_names(first);
    assert_eq!(
        fields,
        BTreeSet::from([
            "id",
            "name",
            "email",
            "phone",
            "company",
            "notes",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(first["name"], "Customer 6");
    assert!(first["email"].is_null(), "an absent optional field is null");

    let mut paged = Vec::new();
    for offset in [0, 3, 6] {
        let page = list(
            &stack,
            &key,
            &format!("/api/v1/customers?limit=3&offset={offset}"),
        )
        .await;
        assert_eq!(
            page["pagination"],
            json!({"total": 7, "limit": 3, "offset": offset})
        );
        paged.extend(ids(&page));
    }
    assert_eq!(
        paged, newest_first,
        "pages of a fixed snapshot neither overlap nor skip"
    );

    let beyond = list(&stack, &key, "/api/v1/customers?offset=100").await;
    assert_eq!(beyond["data"], json!([]));
    assert_eq!(
        beyond["pagination"]["total"], 7,
        "the total is there on an empty page"
    );

    let max = list(&stack, &key, "/api/v1/customers?limit=200").await;
    assert_eq!(max["pagination"]["limit"], 200);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_malformed_out_of_range_or_unknown_parameter_is_invalid_param_naming_it(
    pool: PgPool,
) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;

    for resource in RESOURCES {
        let path = format!("/api/v1/{resource}");
        for (query, param) in [
            ("limit=0", "limit"),
            ("limit=201", "limit"),
            ("limit=abc", "limit"),
            ("limit=-5", "limit"),
            ("limit=1.5", "limit"),
            ("limit=", "limit"),
            ("offset=-1", "offset"),
            ("offset=abc", "offset"),
            ("limit=10&limit=20", "limit"),
            ("bogus=1", "bogus"),
            ("Limit=10", "Limit"),
        ] {
            invalid_param(&stack, &key, &format!("{path}?{query}"), param).await;
        }
    }
    for resource in ["customers", "products", "leads"] {
        let long = "x".repeat(201);
        invalid_param(&stack, &key, &format!("/api/v1/{resource}?q={long}"), "q").await;
    }
    // A parameter of another list is unknown here.
    invalid_param(&stack, &key, "/api/v1/customers?stage=won", "stage").await;
    invalid_param(&stack, &key, "/api/v1/orders?q=acme", "q").await;

    invalid_param(&stack, &key, "/api/v1/leads?stage=bogus", "stage").await;
    invalid_param(&stack, &key, "/api/v1/leads?stage=", "stage").await;
    invalid_param(&stack, &key, "/api/v1/leads?stage=Won", "stage").await;
    invalid_param(&stack, &key, "/api/v1/orders?status=bogus", "status").await;
    invalid_param(&stack, &key, "/api/v1/orders?status=closed", "status").await;
    invalid_param(
        &stack,
        &key,
        "/api/v1/orders?customer_id=xyz",
        "customer_id",
    )
    .await;
    for since in [
        "2024-13-01",
        "2024-02-30",
        "2024-1-1",
        "yesterday",
        "2024-01-01T00:00:00Z",
        "",
    ] {
        invalid_param(
            &stack,
            &key,
            &format!("/api/v1/orders?since={since}"),
            "since",
        )
        .await;
    }
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn q_is_a_case_insensitive_prefix_that_matches_like_metacharacters_literally(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());

    for (name, email) in [
        ("Acme Corp", Some("sales@acme.test")),
        ("acme labs", None),
        ("ACME", None),
        ("Bacme", Some("acme-ops@b.test")),
        ("50% off", None),
        ("50 percent", None),
        ("a_b", None),
        ("axb", None),
        ("O'Brien", Some("ob@o.test")),
        ("O Brien", None),
        (r"back\slash", None),
        ("backXslash", None),
        ("Zoë Ünïcödé", None),
    ] {
        create(&store, key.tenant_id, seed::customer(name, email), None).await;
    }
    let found = |q: &str| {
        let path = format!("/api/v1/customers?q={}", url_escape(q));
        let (stack, key) = (&stack, &key);
        async move { names(&list(stack, key, &path).await) }
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    assert_eq!(
        found("acme").await,
        set(&["Acme Corp", "acme labs", "ACME", "Bacme"]),
        "name or email, any case"
    );
    assert_eq!(found("ACME C").await, set(&["Acme Corp"]));
    assert_eq!(found("sales@").await, set(&["Acme Corp"]), "by email");
    assert_eq!(found("50%").await, set(&["50% off"]), "% is literal");
    assert_eq!(found("a_").await, set(&["a_b"]), "_ is literal");
    assert_eq!(found("O'").await, set(&["O'Brien"]), "' is literal");
    assert_eq!(
        found(r"back\").await,
        set(&[r"back\slash"]),
        r"\ is literal"
    );
    assert_eq!(
        found("zoË").await,
        set(&["Zoë Ünïcödé"]),
        "non-ASCII case folds"
    );
    assert_eq!(found("corp").await, set(&[]), "a prefix, not a substring");
    assert_eq!(found("%").await, set(&[]));
    assert_eq!(found("").await.len(), 13, "an empty q is no filter");
    let page = list(&stack, &key, "/api/v1/customers?q=acme&limit=2").await;
    assert_eq!(
        page["pagination"]["total"], 4,
        "the total counts every match"
    );
    assert_eq!(page["data"].as_array().expect("data").len(), 2);

    // Products: name or SKU.
    for (name, sku) in [
        ("Widget", Some("WID-1")),
        ("Gadget", Some("w_1")),
        ("wx", Some("SKU%")),
    ] {
        create(&store, key.tenant_id, seed::product(name, sku), None).await;
    }
    let products = |q: &str| {
        let path = format!("/api/v1/products?q={}", url_escape(q));
        let (stack, key) = (&stack, &key);
        async move { names(&list(stack, key, &path).await) }
    };
    assert_eq!(products("w").await, set(&["Widget", "Gadget", "wx"]));
    assert_eq!(products("wid-").await, set(&["Widget"]), "by SKU");
    assert_eq!(products("w_").await, set(&["Gadget"]));
    assert_eq!(products("sku%").await, set(&["wx"]));
    assert_eq!(products("sku_").await, set(&[]));
    stack.shutdown().await;
}

/// Percent-encodes everything but unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn leads_are_filtered_by_stage_and_q_together(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());

    let t = key.tenant_id;
    create(
        &store,
        t,
        seed::lead("Sarah Patel", Some("sarah@patel.test"), LeadStage::New),
        None,
    )
    .await;
    create(&store, t, seed::lead("Sam Won", None, LeadStage::Won), None).await;
    create(
        &store,
        t,
        seed::lead("Bob", Some("sa@bob.test"), LeadStage::Qualified),
        None,
    )
    .await;
    let (moved, _) = create(&store, t, seed::lead("Sally", None, LeadStage::New), None).await;
    append(
        &store,
        t,
        moved,
        1,
        LeadStageChanged {
            previous_stage: LeadStage::New,
            stage: LeadStage::MeetingBooked,
        }
        .into(),
    )
    .await;

    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let get = |query: &str| {
        let path = format!("/api/v1/leads?{query}");
        let (stack, key) = (&stack, &key);
        async move { list(stack, key, &path).await }
    };
    assert_eq!(
        names(&get("").await),
        set(&["Sarah Patel", "Sam Won", "Bob", "Sally"])
    );
    assert_eq!(names(&get("stage=new").await), set(&["Sarah Patel"]));
    assert_eq!(
        names(&get("stage=meeting_booked").await),
        set(&["Sally"]),
        "the stage as changed"
    );
    assert_eq!(names(&get("stage=won").await), set(&["Sam Won"]));
    assert_eq!(names(&get("stage=lost").await), set(&[]));
    assert_eq!(
        names(&get("q=sa").await),
        set(&["Sarah Patel", "Sam Won", "Bob", "Sally"])
    );
    let both = get("q=sa&stage=qualified").await;
    assert_eq!(names(&both), set(&["Bob"]), "q by email, with the stage");
    assert_eq!(both["pagination"]["total"], 1);
    let lead = &both["data"][0];
    let fields = field_names(lead);
    assert_eq!(
        fields,
        BTreeSet::from([
            "id",
            "name",
            "company",
            "email",
            "phone",
            "stage",
            "estimated_value",
            "probability",
            "source",
            "notes",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(lead["stage"], "qualified");
    assert_eq!(lead["source"], "api");
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn orders_are_filtered_by_status_customer_and_since_a_utc_date(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());
    let t = key.tenant_id;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let at = |s: &str| Some(s.parse::<DateTime<Utc>>().expect("a time"));

    let (before, _) = create(
        &store,
        t,
        seed::order(alice, OrderStatus::Open),
        at("2024-02-29T23:59:59.999999Z"),
    )
    .await;
    let (midnight, _) = create(
        &store,
        t,
        seed::order(bob, OrderStatus::Delivered),
        at("2024-03-01T00:00:00Z"),
    )
    .await;
    let (later, _) = create(
        &store,
        t,
        seed::order(alice, OrderStatus::Cancelled),
        at("2024-03-02T12:00:00Z"),
    )
    .await;
    let (open_bob, _) = create(
        &store,
        t,
        seed::order(bob, OrderStatus::Open),
        at("2024-03-03T00:00:00Z"),
    )
    .await;

    let get = |query: String| {
        let path = format!("/api/v1/orders?{query}");
        let (stack, key) = (&stack, &key);
        async move { ids(&list(stack, key, &path).await) }
    };
    assert_eq!(
        get(String::new()).await,
        vec![open_bob, later, midnight, before]
    );
    assert_eq!(
        get("since=2024-03-01".into()).await,
        vec![open_bob, later, midnight],
        "on or after 00:00 UTC"
    );
    assert_eq!(get("since=2024-02-29".into()).await.len(), 4);
    assert_eq!(get("since=2024-03-04".into()).await, Vec::<Uuid>::new());
    assert_eq!(get("status=open".into()).await, vec![open_bob, before]);
    assert_eq!(get("status=delivered".into()).await, vec![midnight]);
    assert_eq!(
        get(format!("customer_id={alice}")).await,
        vec![later, before]
    );
    assert_eq!(
        get(format!("customer_id={bob}&status=open&since=2024-03-01")).await,
        vec![open_bob]
    );
    assert_eq!(
        get(format!("customer_id={}", Uuid::now_v7())).await,
        Vec::<Uuid>::new()
    );

    let page = list(&stack, &key, "/api/v1/orders?status=open&limit=1").await;
    assert_eq!(
        page["pagination"],
        json!({"total": 2, "limit": 1, "offset": 0})
    );
    let order = &page["data"][0];
    let fields = field_names(order);
    assert_eq!(
        fields,
        BTreeSet::from([
            "id",
            "customer_id",
            "status",
            "currency",
            "items",
            "total",
            "notes",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(order["created_at"], "2024-03-03T00:00:00Z");
    assert_eq!(order["items"], json!([]));
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn deleted_rows_never_appear_nor_count(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());
    let t = key.tenant_id;

    let (kept_c, _) = create(&store, t, seed::customer("Kept", None), None).await;
    let (gone_c, _) = create(&store, t, seed::customer("Gone", None), None).await;
    append(&store, t, gone_c, 1, CustomerDeleted {}.into()).await;
    let (kept_p, _) = create(&store, t, seed::product("Kept", None), None).await;
    let (gone_p, _) = create(&store, t, seed::product("Gone", None), None).await;
    append(&store, t, gone_p, 1, ProductDeleted {}.into()).await;
    let (kept_l, _) = create(&store, t, seed::lead("Kept", None, LeadStage::Won), None).await;
    let (gone_l, _) = create(&store, t, seed::lead("Gone", None, LeadStage::Won), None).await;
    append(&store, t, gone_l, 1, LeadDeleted {}.into()).await;
    let (kept_o, _) = create(&store, t, seed::order(kept_c, OrderStatus::Open), None).await;
    let (gone_o, _) = create(&store, t, seed::order(kept_c, OrderStatus::Open), None).await;
    append(&store, t, gone_o, 1, OrderDeleted {}.into()).await;

    for (path, kept) in [
        ("/api/v1/customers?q=", kept_c),
        ("/api/v1/customers?q=gone", kept_c),
        ("/api/v1/products", kept_p),
        ("/api/v1/leads?stage=won", kept_l),
        ("/api/v1/orders?status=open", kept_o),
    ] {
        let page = list(&stack, &key, path).await;
        if path.ends_with("gone") {
            assert_eq!(ids(&page), Vec::<Uuid>::new(), "{path}");
            assert_eq!(page["pagination"]["total"], 0, "{path}");
        } else {
            assert_eq!(ids(&page), vec![kept], "{path}");
            assert_eq!(page["pagination"]["total"], 1, "{path}");
        }
    }
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_tenant_lists_only_its_own_rows(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = stack.busy_tenant("Acme").await;
    let globex = stack.busy_tenant("Globex").await;
    let store = EventStore::spawn(pool.clone());

    let mut mine = BTreeSet::new();
    for (key, name) in [(&acme, "Acme"), (&globex, "Globex")] {
        let t = key.tenant_id;
        let (customer, _) = create(
            &store,
            t,
            seed::customer(&format!("{name} customer"), None),
            None,
        )
        .await;
        let (product, _) = create(
            &store,
            t,
            seed::product(&format!("{name} product"), None),
            None,
        )
        .await;
        let (lead, _) = create(
            &store,
            t,
            seed::lead(&format!("{name} lead"), None, LeadStage::New),
            None,
        )
        .await;
        let (order, _) = create(&store, t, seed::order(customer, OrderStatus::Open), None).await;
        if name == "Acme" {
            mine = BTreeSet::from([customer, product, lead, order]);
        }
    }
    let mut seen = BTreeSet::new();
    for resource in RESOURCES {
        let page = list(&stack, &acme, &format!("/api/v1/{resource}")).await;
        assert_eq!(page["pagination"]["total"], 1, "{resource}");
        seen.extend(ids(&page));
    }
    assert_eq!(seen, mine);
    // Another tenant's customer id filters to nothing, not to its orders.
    let globex_customer = ids(&list(&stack, &globex, "/api/v1/customers").await)[0];
    let foreign = list(
        &stack,
        &acme,
        &format!("/api/v1/orders?customer_id={globex_customer}"),
    )
    .await;
    assert_eq!(foreign["pagination"]["total"], 0);
    let q = list(&stack, &acme, "/api/v1/leads?q=globex").await;
    assert_eq!(q["pagination"]["total"], 0);
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_read_key_lists_and_a_request_without_a_key_is_refused(pool: PgPool) {
    let env = TestEnv::new(pool).await;
    let stack = spawn_stack(&env).await;
    let read = stack.tenant_with_key("Acme", &["read"]).await;
    for resource in RESOURCES {
        let path = format!("/api/v1/{resource}");
        let body = list(&stack, &read, &path).await;
        assert_eq!(body["pagination"]["total"], 0);
        let (status, body) = send(stack.request(Method::GET, &path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "missing_auth");
    }
    stack.shutdown().await;
}

/// Offset pages taken while rows are added: each new row pushes the older
/// ones down a place, so a later page repeats rows of the page before it.
/// What a client can rely on: the order stays newest first, no row that
/// existed when it started paging is missed, and duplicates are exactly the
/// rows added meanwhile (deduplicate by id).
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn offset_pages_taken_while_rows_are_added_repeat_rows_but_never_miss_one(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());
    let t = key.tenant_id;

    let mut snapshot = BTreeSet::new();
    for i in 0..120 {
        snapshot.insert(
            create(
                &store,
                t,
                seed::lead(&format!("Lead {i}"), None, LeadStage::New),
                None,
            )
            .await
            .0,
        );
    }
    let mut pages = Vec::new();
    let mut added = 0;
    for offset in (0..).step_by(50) {
        let page = list(
            &stack,
            &key,
            &format!("/api/v1/leads?limit=50&offset={offset}"),
        )
        .await;
        let page_ids = ids(&page);
        pages.extend(page_ids.clone());
        if page_ids.len() < 50 {
            break;
        }
        // Three new leads between pages.
        for j in 0..3 {
            create(
                &store,
                t,
                seed::lead(&format!("New {offset}/{j}"), None, LeadStage::New),
                None,
            )
            .await;
            added += 1;
        }
    }
    let seen: BTreeSet<Uuid> = pages.iter().copied().collect();
    assert!(
        snapshot.is_subset(&seen),
        "no row of the starting snapshot is missed"
    );
    assert_eq!(
        pages.len() - seen.len(),
        added,
        "each added row repeats one row"
    );
    assert!(
        seen.iter().all(|id| snapshot.contains(id)),
        "rows added meanwhile land before page 1"
    );

    // On a fixed snapshot, every page follows the last without overlap.
    let total = list(&stack, &key, "/api/v1/leads?limit=1").await["pagination"]["total"]
        .as_i64()
        .expect("total");
    let mut fixed = Vec::new();
    for offset in (0..total).step_by(7) {
        fixed.extend(ids(&list(
            &stack,
            &key,
            &format!("/api/v1/leads?limit=7&offset={offset}"),
        )
        .await));
    }
    assert_eq!(fixed.len() as i64, total);
    assert_eq!(fixed.iter().collect::<BTreeSet<_>>().len() as i64, total);
    let newest_first = {
        let mut rows: Vec<(DateTime<Utc>, Uuid)> = sqlx::query_as(
            "select created_at, id from leads where tenant_id = $1 and deleted_at is null",
        )
        .bind(t)
        .fetch_all(&pool)
        .await
        .expect("rows");
        rows.sort_by(|a, b| b.cmp(a));
        rows.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    };
    assert_eq!(fixed, newest_first, "(created_at desc, id desc)");
    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn rows_created_in_the_same_microsecond_are_ordered_by_id(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let key = stack.busy_tenant("Acme").await;
    let store = EventStore::spawn(pool.clone());
    let at = Some(Utc::now() - Duration::days(1));
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            create(
                &store,
                key.tenant_id,
                seed::customer(&format!("Twin {i}"), None),
                at,
            )
            .await
            .0,
        );
    }
    created.sort();
    created.reverse();
    let mut paged = Vec::new();
    for offset in 0..5 {
        paged.extend(ids(&list(
            &stack,
            &key,
            &format!("/api/v1/customers?limit=1&offset={offset}"),
        )
        .await));
    }
    assert_eq!(
        paged, created,
        "ties on created_at break by id, descending, stably"
    );
    stack.shutdown().await;
}
