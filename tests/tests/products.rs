//! Products end to end: their fields (price in minor units, an ISO 4217
//! currency, `active` defaulting to true), the rules between them, and the
//! lifecycle and isolation every resource shares (see `customers.rs` for
//! those in depth).

use jeanus_tests::writes::{stream_events, stream_types, writes_nothing, Tenant};
use jeanus_tests::{spawn_stack, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PATH: &str = "/api/v1/products";

fn at(id: Uuid) -> String {
    format!("{PATH}/{id}")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_product_is_created_with_every_field_read_patched_and_deleted(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let full = json!({
        "name": "Roof tile",
        "sku": "RT-100",
        "description": "Clay.\nRed.",
        "price": 1999,
        "currency": "EUR",
        "active": false,
    });
    let created = acme.create("products", full.clone()).await;
    let id = created.id();
    assert_eq!(created.header("location"), Some(at(id).as_str()));
    assert_eq!(created.etag(), "\"1\"");
    for (field, value) in full.as_object().expect("an object") {
        assert_eq!(&created.data()[field], value, "{field}");
    }
    assert_eq!(stream_events(&pool, id).await[0].1, full);
    assert_eq!(
        acme.get(&at(id)).await.expect(StatusCode::OK).body,
        created.body
    );

    let patched = acme
        .patch(&at(id), json!({"price": 2499, "sku": null, "active": true}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(patched.etag(), "\"2\"");
    assert_eq!(patched.data()["price"], 2499);
    assert_eq!(patched.data()["sku"], Value::Null);
    assert_eq!(patched.data()["active"], true);
    assert_eq!(patched.data()["currency"], "EUR");
    assert_eq!(acme.get(&at(id)).await.body, patched.body);

    acme.delete(&at(id)).await.expect(StatusCode::NO_CONTENT);
    assert_eq!(
        stream_types(&pool, id).await,
        ["ProductCreated", "ProductUpdated", "ProductDeleted"]
    );
    acme.get(&at(id))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);
    acme.delete(&at(id))
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_bare_product_is_active_with_null_optionals(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    for body in [
        json!({"name": "Bare"}),
        json!({"name": "Nulls", "active": null}),
    ] {
        let bare = acme.create("products", body).await;
        assert_eq!(bare.data()["active"], true);
        for field in ["sku", "description", "price", "currency"] {
            assert_eq!(bare.data()[field], Value::Null, "{field}");
        }
    }
    // A free product is a price of 0.
    let free = acme
        .create(
            "products",
            json!({"name": "Free", "price": 0, "currency": "USD"}),
        )
        .await;
    assert_eq!(free.data()["price"], 0);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_field_is_validated_and_a_refusal_writes_nothing(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme
        .create(
            "products",
            json!({"name": "Target", "price": 100, "currency": "USD"}),
        )
        .await
        .id();

    let refusals: Vec<(Value, &str)> = vec![
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"sku": "x".repeat(101)}), "sku"),
        (json!({"sku": 12}), "sku"),
        (json!({"description": "x".repeat(10_001)}), "description"),
        (json!({"price": -1}), "price"),
        (json!({"price": 19.99}), "price"),
        (json!({"price": 20.0}), "price"),
        (json!({"price": "1999"}), "price"),
        (json!({"price": 18446744073709551615_u64}), "price"),
        (json!({"currency": "usd"}), "currency"),
        (json!({"currency": "US"}), "currency"),
        (json!({"currency": "USDX"}), "currency"),
        (json!({"currency": "ZZZ"}), "currency"),
        (json!({"currency": 840}), "currency"),
        (json!({"active": "yes"}), "active"),
        (json!({"active": 1}), "active"),
        (json!({"colour": "red"}), "colour"),
    ];
    writes_nothing(&pool, || async {
        for (body, field) in &refusals {
            let mut create = body.clone();
            let fields = create.as_object_mut().expect("an object");
            fields.entry("name").or_insert(json!("x"));
            if body.get("price").is_some() {
                fields.insert("currency".into(), json!("USD"));
            }
            acme.post(PATH, create).await.invalid(field);
            acme.patch(&at(id), body.clone()).await.invalid(field);
        }
        acme.post(PATH, json!({"sku": "RT-1"}))
            .await
            .missing("name");
        for field in ["name", "active"] {
            acme.patch(&at(id), json!({ field: null }))
                .await
                .invalid(field);
        }
        // A price needs its currency.
        acme.post(PATH, json!({"name": "x", "price": 100}))
            .await
            .missing("currency");
        acme.post(PATH, json!({"name": "x", "price": 100, "currency": null}))
            .await
            .missing("currency");
        acme.patch(&at(id), json!({"currency": null}))
            .await
            .invalid("currency");
    })
    .await;

    // A currency alone is fine; clearing the price frees the currency.
    acme.create("products", json!({"name": "x", "currency": "JPY"}))
        .await;
    let cleared = acme
        .patch(&at(id), json!({"price": null, "currency": null}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(cleared.data()["price"], Value::Null);
    assert_eq!(cleared.data()["currency"], Value::Null);
    let repriced = acme
        .patch(
            &at(id),
            json!({"price": 9_007_199_254_740_993_i64, "currency": "GBP"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        repriced.data()["price"],
        9_007_199_254_740_993_i64,
        "exact, beyond f64"
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn another_tenants_product_is_not_found_and_untouched(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let created = acme.create("products", json!({"name": "Acme's"})).await;
    let id = created.id();

    writes_nothing(&pool, || async {
        globex
            .get(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
        globex
            .patch(&at(id), json!({"name": "stolen"}))
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
