//! Orders end to end: a live customer of the tenant, items of live
//! products, the total derived from the items (and checked against one
//! given), the currency every amount needs, and OrderStatusChanged exactly
//! when the status moves. The lifecycle and isolation every resource shares
//! are in depth in `customers.rs`.

use jeanus_tests::writes::{event_count, stream_events, stream_types, writes_nothing, Tenant};
use jeanus_tests::{spawn_stack, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PATH: &str = "/api/v1/orders";

fn at(id: Uuid) -> String {
    format!("{PATH}/{id}")
}

/// A customer and two products of `tenant`.
async fn catalogue(tenant: &Tenant<'_>) -> (Uuid, Uuid, Uuid) {
    let customer = tenant
        .create("customers", json!({"name": "Buyer"}))
        .await
        .id();
    let tile = tenant
        .create(
            "products",
            json!({"name": "Tile", "price": 250, "currency": "USD"}),
        )
        .await
        .id();
    let nail = tenant
        .create("products", json!({"name": "Nail"}))
        .await
        .id();
    (customer, tile, nail)
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn an_order_is_created_with_a_derived_total_patched_and_deleted(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let (customer, tile, nail) = catalogue(&acme).await;

    let items = json!([
        {"product_id": tile, "quantity": 4, "unit_price": 250},
        {"product_id": nail, "quantity": 100, "unit_price": 3},
    ]);
    let created = acme
        .create(
            "orders",
            json!({"customer_id": customer, "currency": "USD", "items": items, "notes": "Back door"}),
        )
        .await;
    let id = created.id();
    let data = created.data();
    assert_eq!(created.header("location"), Some(at(id).as_str()));
    assert_eq!(data["customer_id"], customer.to_string());
    assert_eq!(data["status"], "open");
    assert_eq!(data["items"], items);
    assert_eq!(data["total"], 1300);
    assert_eq!(data["notes"], "Back door");
    assert_eq!(
        acme.get(&at(id)).await.expect(StatusCode::OK).body,
        created.body
    );
    let (kind, event) = stream_events(&pool, id).await.remove(0);
    assert_eq!(kind, "OrderCreated");
    assert_eq!(event["total"], 1300);

    // New items: a new total.
    let patched = acme
        .patch(
            &at(id),
            json!({"items": [{"product_id": nail, "quantity": 10, "unit_price": 5}]}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(patched.data()["total"], 50);
    let (_, update) = stream_events(&pool, id).await.pop().expect("an update");
    assert_eq!(update["patch"]["total"], 50);
    // A total that agrees is accepted (and changes nothing).
    let before = event_count(&pool).await;
    acme.patch(&at(id), json!({"total": 50}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(event_count(&pool).await, before);

    // Removing every item clears the total derived from them.
    let emptied = acme
        .patch(&at(id), json!({"items": []}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(emptied.data()["items"], json!([]));
    assert_eq!(emptied.data()["total"], Value::Null);
    // Without items, a total is the client's to set.
    let totalled = acme
        .patch(&at(id), json!({"total": 999}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(totalled.data()["total"], 999);
    assert_eq!(acme.get(&at(id)).await.body, totalled.body);

    acme.delete(&at(id)).await.expect(StatusCode::NO_CONTENT);
    assert_eq!(
        stream_types(&pool, id).await,
        [
            "OrderCreated",
            "OrderUpdated",
            "OrderUpdated",
            "OrderUpdated",
            "OrderDeleted"
        ]
    );
    acme.get(&at(id))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_bare_order_is_open_without_items_or_amounts(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let (customer, _, _) = catalogue(&acme).await;

    let bare = acme
        .create("orders", json!({"customer_id": customer}))
        .await;
    assert_eq!(bare.data()["status"], "open");
    assert_eq!(bare.data()["items"], json!([]));
    for field in ["currency", "total", "notes"] {
        assert_eq!(bare.data()[field], Value::Null, "{field}");
    }
    let with_total = acme
        .create(
            "orders",
            json!({"customer_id": customer, "total": 5000, "currency": "EUR", "status": "delivered"}),
        )
        .await;
    assert_eq!(with_total.data()["total"], 5000);
    assert_eq!(with_total.data()["status"], "delivered");
    assert_eq!(stream_types(&pool, with_total.id()).await, ["OrderCreated"]);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_customer_must_be_a_live_customer_of_the_tenant(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let (customer, tile, _) = catalogue(&acme).await;
    let theirs = globex
        .create("customers", json!({"name": "Theirs"}))
        .await
        .id();
    let gone = acme.create("customers", json!({"name": "Gone"})).await.id();
    acme.delete(&format!("/api/v1/customers/{gone}"))
        .await
        .expect(StatusCode::NO_CONTENT);
    let order = acme
        .create("orders", json!({"customer_id": customer}))
        .await
        .id();

    writes_nothing(&pool, || async {
        acme.post(PATH, json!({})).await.missing("customer_id");
        acme.post(PATH, json!({"notes": "x"}))
            .await
            .missing("customer_id");
        acme.post(PATH, json!({"customer_id": null}))
            .await
            .invalid("customer_id");
        acme.patch(&at(order), json!({"customer_id": null}))
            .await
            .invalid("customer_id");
        for bad in [
            json!("not-a-uuid"),
            json!(42),
            json!(Uuid::now_v7()),
            json!(theirs),
            json!(gone),
            json!(tile),
        ] {
            acme.post(PATH, json!({"customer_id": bad}))
                .await
                .invalid("customer_id");
            acme.patch(&at(order), json!({"customer_id": bad}))
                .await
                .invalid("customer_id");
        }
    })
    .await;

    // Another live customer of the tenant is fine.
    let other = acme
        .create("customers", json!({"name": "Other"}))
        .await
        .id();
    let moved = acme
        .patch(&at(order), json!({"customer_id": other}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(moved.data()["customer_id"], other.to_string());
    // An upper-case UUID is the same id.
    let upper = acme
        .create(
            "orders",
            json!({"customer_id": customer.to_string().to_uppercase()}),
        )
        .await;
    assert_eq!(upper.data()["customer_id"], customer.to_string());

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn items_totals_and_currency_are_validated(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let (customer, tile, nail) = catalogue(&acme).await;
    let theirs = globex
        .create("products", json!({"name": "Theirs"}))
        .await
        .id();
    let gone = acme.create("products", json!({"name": "Gone"})).await.id();
    acme.delete(&format!("/api/v1/products/{gone}"))
        .await
        .expect(StatusCode::NO_CONTENT);
    let order = acme
        .create(
            "orders",
            json!({"customer_id": customer, "currency": "USD", "total": 10}),
        )
        .await
        .id();
    let item = |product: Value, quantity: Value, unit_price: Value| json!({"product_id": product, "quantity": quantity, "unit_price": unit_price});
    let ok = item(json!(tile), json!(1), json!(250));

    let refusals: Vec<(Value, &str)> = vec![
        (json!({"items": {"product_id": tile}}), "items"),
        (json!({"items": [ok.clone(), 7]}), "items[1]"),
        (
            json!({"items": [item(json!("x"), json!(1), json!(1))]}),
            "items[0].product_id",
        ),
        (
            json!({"items": [item(json!(Uuid::now_v7()), json!(1), json!(1))]}),
            "items[0].product_id",
        ),
        (
            json!({"items": [ok.clone(), item(json!(theirs), json!(1), json!(1))]}),
            "items[1].product_id",
        ),
        (
            json!({"items": [item(json!(gone), json!(1), json!(1))]}),
            "items[0].product_id",
        ),
        (
            json!({"items": [item(json!(customer), json!(1), json!(1))]}),
            "items[0].product_id",
        ),
        (
            json!({"items": [item(json!(tile), json!(0), json!(1))]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [item(json!(tile), json!(1.5), json!(1))]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [item(json!(tile), json!("2"), json!(1))]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [item(json!(tile), json!(1), json!(-1))]}),
            "items[0].unit_price",
        ),
        (
            json!({"items": [item(json!(tile), json!(1), json!(2.5))]}),
            "items[0].unit_price",
        ),
        (
            json!({"items": [{"product_id": tile, "quantity": 1, "unit_price": 1, "sku": "x"}]}),
            "items[0].sku",
        ),
        (
            json!({"items": [item(json!(tile), json!(2), json!(i64::MAX))]}),
            "items",
        ),
        (
            json!({"items": [item(json!(tile), json!(1), json!(i64::MAX)), item(json!(nail), json!(1), json!(1))]}),
            "items",
        ),
        (json!({"items": [ok.clone()], "total": 1}), "total"),
        (json!({"total": -5}), "total"),
        (json!({"total": 10.5}), "total"),
        (json!({"currency": "dollars"}), "currency"),
        (json!({"status": "shipped"}), "status"),
        (json!({"status": "Open"}), "status"),
        (json!({"discount": 5}), "discount"),
    ];
    writes_nothing(&pool, || async {
        for (body, field) in &refusals {
            let mut create = body.clone();
            let fields = create.as_object_mut().expect("an object");
            fields.insert("customer_id".into(), json!(customer));
            fields.entry("currency").or_insert(json!("USD"));
            acme.post(PATH, create).await.invalid(field);
            acme.patch(&at(order), body.clone()).await.invalid(field);
        }
        for missing in [
            vec![json!({"product_id": tile, "unit_price": 1})],
            vec![json!({"quantity": 1, "unit_price": 1})],
            vec![json!({"product_id": tile, "quantity": 1})],
        ] {
            let field = ["product_id", "quantity", "unit_price"]
                .into_iter()
                .find(|f| missing[0].get(*f).is_none())
                .expect("one is missing");
            acme.post(
                PATH,
                json!({"customer_id": customer, "currency": "USD", "items": missing}),
            )
            .await
            .missing(&format!("items[0].{field}"));
        }
        // An amount needs a currency.
        acme.post(
            PATH,
            json!({"customer_id": customer, "items": [ok.clone()]}),
        )
        .await
        .missing("currency");
        acme.post(PATH, json!({"customer_id": customer, "total": 5}))
            .await
            .missing("currency");
        acme.patch(&at(order), json!({"currency": null}))
            .await
            .invalid("currency");
        acme.patch(&at(order), json!({"items": null}))
            .await
            .invalid("items");
        acme.patch(&at(order), json!({"status": null}))
            .await
            .invalid("status");
        let too_many: Vec<Value> = (0..501).map(|_| ok.clone()).collect();
        acme.post(
            PATH,
            json!({"customer_id": customer, "currency": "USD", "items": too_many}),
        )
        .await
        .invalid("items");
    })
    .await;

    // 500 items are fine; a product may repeat.
    let many: Vec<Value> = (0..500).map(|_| ok.clone()).collect();
    let big = acme
        .create(
            "orders",
            json!({"customer_id": customer, "currency": "USD", "items": many}),
        )
        .await;
    assert_eq!(big.data()["total"], 500 * 250);
    // A product deleted after it was put on an order does not block the order.
    let keep = acme
        .create(
            "orders",
            json!({"customer_id": customer, "currency": "USD", "items": [item(json!(nail), json!(1), json!(7))]}),
        )
        .await
        .id();
    acme.delete(&format!("/api/v1/products/{nail}"))
        .await
        .expect(StatusCode::NO_CONTENT);
    let requantified = acme
        .patch(
            &at(keep),
            json!({"items": [item(json!(nail), json!(3), json!(7)), ok.clone()]}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(requantified.data()["total"], 21 + 250);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_status_change_appends_order_status_changed_exactly_when_it_moves(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let (customer, _, _) = catalogue(&acme).await;
    let id = acme
        .create("orders", json!({"customer_id": customer, "status": "open"}))
        .await
        .id();
    assert_eq!(stream_types(&pool, id).await, ["OrderCreated"]);

    let delivered = acme
        .patch(&at(id), json!({"status": "delivered"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(delivered.data()["status"], "delivered");
    let events = stream_events(&pool, id).await;
    assert_eq!(
        events[1],
        (
            "OrderStatusChanged".to_owned(),
            json!({"previous_status": "open", "status": "delivered"})
        )
    );

    let before = event_count(&pool).await;
    acme.patch(&at(id), json!({"status": "delivered"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        event_count(&pool).await,
        before,
        "the same status appends nothing"
    );

    acme.patch(
        &at(id),
        json!({"status": "cancelled", "notes": "Refused at the door"}),
    )
    .await
    .expect(StatusCode::OK);
    let events = stream_events(&pool, id).await;
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[2],
        (
            "OrderUpdated".to_owned(),
            json!({"patch": {"notes": "Refused at the door"}})
        )
    );
    assert_eq!(
        events[3],
        (
            "OrderStatusChanged".to_owned(),
            json!({"previous_status": "delivered", "status": "cancelled"})
        )
    );
    let got = acme.get(&at(id)).await;
    assert_eq!(got.data()["status"], "cancelled");
    assert_eq!(got.etag(), "\"4\"");

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn another_tenants_order_is_not_found_and_untouched(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let (customer, _, _) = catalogue(&acme).await;
    let created = acme
        .create("orders", json!({"customer_id": customer}))
        .await;
    let id = created.id();

    writes_nothing(&pool, || async {
        globex
            .get(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
        globex
            .patch(&at(id), json!({"status": "cancelled"}))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
        globex
            .delete(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
    })
    .await;
    assert_eq!(acme.get(&at(id)).await.body, created.body);

    stack.shutdown().await;
}
