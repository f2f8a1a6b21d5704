//! Customers end to end, against real servers: create, get, merge-patch and
//! delete, every field's rules, the body errors, ETag and If-Match (with
//! racing writers), scopes, tenant isolation, and the events each request
//! appends (none for a refused one). What is said here of customers holds
//! for every resource (`crate::resources` is shared); the other resources'
//! files test their own fields and rules.

use std::time::Duration;

use jeanus_tests::writes::{
    answer, event_count, stream_events, stream_types, writes_nothing, Tenant,
};
use jeanus_tests::{spawn_stack, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PATH: &str = "/api/v1/customers";

fn at(id: Uuid) -> String {
    format!("{PATH}/{id}")
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_customer_is_created_read_patched_and_deleted(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let full = json!({
        "name": "Patel Holdings",
        "email": "sarah@patelholdings.com",
        "phone": "+44 20 7946 0958",
        "company": "Patel Holdings Ltd",
        "notes": "Met at the fair.\nCall in May.",
    });
    let created = acme.create("customers", full.clone()).await;
    let id = created.id();
    assert_eq!(created.header("location"), Some(at(id).as_str()));
    assert_eq!(created.etag(), "\"1\"");
    let data = created.data();
    for (field, value) in full.as_object().expect("an object") {
        assert_eq!(&data[field], value, "{field}");
    }
    assert_eq!(data["created_at"], data["updated_at"]);
    let keys: Vec<&String> = data.as_object().expect("an object").keys().collect();
    assert_eq!(
        keys,
        [
            "company",
            "created_at",
            "email",
            "id",
            "name",
            "notes",
            "phone",
            "updated_at"
        ]
    );

    // The event, with who appended it.
    let events: Vec<(String, Value, Value)> =
        sqlx::query_as("select event_type, data, metadata from events where stream_id = $1")
            .bind(id)
            .fetch_all(&pool)
            .await
            .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "CustomerCreated");
    assert_eq!(events[0].1, full);
    assert_eq!(events[0].2["key_id"], acme.write.id.to_string());

    // Read back at once (read your writes), by either key.
    let got = acme.get(&at(id)).await.expect(StatusCode::OK);
    assert_eq!(got.body, created.body);
    assert_eq!(got.etag(), "\"1\"");
    let by_reader = answer(stack.with_key(Method::GET, &at(id), &acme.read.key)).await;
    assert_eq!(by_reader.expect(StatusCode::OK).body, created.body);

    // A merge patch: absent unchanged, null cleared, a value replaced.
    let patched = acme
        .patch(&at(id), json!({"email": null, "company": "Patel Group"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(patched.etag(), "\"2\"");
    assert_eq!(patched.data()["email"], Value::Null);
    assert_eq!(patched.data()["company"], "Patel Group");
    assert_eq!(patched.data()["name"], "Patel Holdings");
    assert_eq!(patched.data()["notes"], full["notes"]);
    assert_eq!(patched.data()["created_at"], data["created_at"]);
    assert_ne!(patched.data()["updated_at"], data["updated_at"]);
    let got = acme.get(&at(id)).await.expect(StatusCode::OK);
    assert_eq!(got.body, patched.body);
    assert_eq!(got.etag(), "\"2\"");
    let (kind, patch) = stream_events(&pool, id).await.pop().expect("an update");
    assert_eq!(kind, "CustomerUpdated");
    assert_eq!(
        patch,
        json!({"patch": {"email": null, "company": "Patel Group"}}),
        "the patch carries the changed fields only"
    );

    // Deleted: 204, then not found by every method; deleting again is 404.
    acme.delete(&at(id)).await.expect(StatusCode::NO_CONTENT);
    assert_eq!(
        stream_types(&pool, id).await,
        ["CustomerCreated", "CustomerUpdated", "CustomerDeleted"]
    );
    writes_nothing(&pool, || async {
        acme.get(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
        acme.patch(&at(id), json!({"name": "x"})).await.refused(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        );
        acme.delete(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
    })
    .await;
    let list = acme.get(PATH).await.expect(StatusCode::OK);
    assert_eq!(
        list.body["pagination"]["total"], 0,
        "a deleted customer leaves the list"
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn optional_fields_default_to_null_and_blank_strings_count_as_null(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let bare = acme.create("customers", json!({"name": "Bare"})).await;
    for field in ["email", "phone", "company", "notes"] {
        assert_eq!(bare.data()[field], Value::Null, "{field}");
    }
    let blank = acme
        .create(
            "customers",
            json!({"name": "Blank", "email": "", "phone": "  ", "company": "", "notes": null}),
        )
        .await;
    for field in ["email", "phone", "company", "notes"] {
        assert_eq!(blank.data()[field], Value::Null, "{field}");
    }
    // A blank string clears in a PATCH as null does.
    let id = acme
        .create("customers", json!({"name": "Full", "company": "Acme"}))
        .await
        .id();
    let cleared = acme
        .patch(&at(id), json!({"company": ""}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(cleared.data()["company"], Value::Null);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_field_is_validated_and_a_refusal_writes_nothing(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme
        .create("customers", json!({"name": "Target"}))
        .await
        .id();

    let long = |n: usize| "x".repeat(n);
    let phone_51 = format!("+{}", "1".repeat(50));
    let refusals: Vec<(Value, &str)> = vec![
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": long(201)}), "name"),
        (json!({"name": 42}), "name"),
        (json!({"name": "a\u{7}b"}), "name"),
        (json!({"name": "a\nb"}), "name"),
        (json!({"name": "x", "email": "not-an-email"}), "email"),
        (json!({"name": "x", "email": "a@b"}), "email"),
        (json!({"name": "x", "email": "a b@c.com"}), "email"),
        (
            json!({"name": "x", "email": format!("{}@example.com", long(250))}),
            "email",
        ),
        (json!({"name": "x", "email": 7}), "email"),
        (json!({"name": "x", "phone": phone_51}), "phone"),
        (json!({"name": "x", "phone": "call me"}), "phone"),
        (json!({"name": "x", "phone": 4420794609_i64}), "phone"),
        (json!({"name": "x", "company": long(201)}), "company"),
        (json!({"name": "x", "company": ["Acme"]}), "company"),
        (json!({"name": "x", "notes": long(10_001)}), "notes"),
        (json!({"name": "x", "notes": {"text": "hi"}}), "notes"),
        (json!({"name": "x", "nmae": "typo"}), "nmae"),
        (json!({"name": "x", "id": Uuid::now_v7()}), "id"),
        (
            json!({"name": "x", "created_at": "2024-01-01T00:00:00Z"}),
            "created_at",
        ),
        (
            json!({"name": "x", "updated_at": "2024-01-01T00:00:00Z"}),
            "updated_at",
        ),
    ];
    writes_nothing(&pool, || async {
        for (body, field) in &refusals {
            let created = acme.post(PATH, body.clone()).await;
            assert_eq!(created.status, StatusCode::BAD_REQUEST, "POST {body}");
            created.invalid(field);
            // The same values are refused by a PATCH.
            let mut patch = body.clone();
            if patch["name"] == "x" {
                patch.as_object_mut().expect("an object").remove("name");
            }
            acme.patch(&at(id), patch).await.invalid(field);
        }
        acme.post(PATH, json!({})).await.missing("name");
        acme.post(PATH, json!({"email": "a@b.co"}))
            .await
            .missing("name");
        acme.post(PATH, json!({"name": null})).await.invalid("name");
        acme.patch(&at(id), json!({"name": null}))
            .await
            .invalid("name");
    })
    .await;

    // The limits themselves are accepted.
    let edge = acme
        .create(
            "customers",
            json!({
                "name": "é".repeat(200),
                "phone": "1".repeat(50),
                "company": long(200),
                "notes": format!("{}\n\t", long(9_998)),
                "email": "first.last+tag@sub.example.co.uk",
            }),
        )
        .await;
    assert_eq!(edge.data()["name"], "é".repeat(200));

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn bodies_that_are_not_a_json_object_are_refused(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme
        .create("customers", json!({"name": "Target"}))
        .await
        .id();

    writes_nothing(&pool, || async {
        for path in [PATH.to_owned(), at(id)] {
            let method = if path == PATH {
                Method::POST
            } else {
                Method::PATCH
            };
            let send = |content_type: Option<&'static str>, body: Vec<u8>| {
                let mut request = acme.request(method.clone(), &path).body(body);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                answer(request)
            };
            let json = Some("application/json");
            send(json, br#"{"name": "x""#.to_vec()).await.refused(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                None,
            );
            send(json, br#"{"name": "x"} trailing"#.to_vec())
                .await
                .refused(StatusCode::BAD_REQUEST, "invalid_json", None);
            send(json, br#"["name"]"#.to_vec()).await.invalid("body");
            send(json, br#""Sarah""#.to_vec()).await.invalid("body");
            send(None, br#"{"name": "x"}"#.to_vec()).await.refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            );
            send(Some("text/plain"), br#"{"name": "x"}"#.to_vec())
                .await
                .refused(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    None,
                );
            let huge = format!(r#"{{"name": "x", "notes": "{}"}}"#, "x".repeat(1024 * 1024));
            send(json, huge.into_bytes()).await.refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                None,
            );
        }
    })
    .await;

    // A merge-patch content type is JSON too.
    let patched = answer(
        acme.request(Method::PATCH, &at(id))
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"company": "Acme"}"#),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(patched.data()["company"], "Acme");

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_patch_that_changes_nothing_appends_nothing(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let created = acme
        .create("customers", json!({"name": "Same", "email": "a@b.co"}))
        .await;
    let id = created.id();

    writes_nothing(&pool, || async {
        for body in [
            json!({}),
            json!({"name": "Same"}),
            json!({"email": "a@b.co", "phone": null}),
        ] {
            let same = acme.patch(&at(id), body).await.expect(StatusCode::OK);
            assert_eq!(same.body, created.body);
            assert_eq!(same.etag(), "\"1\"");
        }
    })
    .await;

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn if_match_makes_a_write_conditional_on_the_etag(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme.create("customers", json!({"name": "V1"})).await.id();
    let conditional = |method: Method, tag: &str| {
        acme.request(method, &at(id))
            .header("if-match", tag.to_owned())
    };

    let v2 = answer(conditional(Method::PATCH, "\"1\"").json(&json!({"name": "V2"})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(v2.etag(), "\"2\"");

    writes_nothing(&pool, || async {
        // Stale, weak, or of another version: 412.
        for tag in ["\"1\"", "W/\"2\"", "\"3\"", "\"1\", \"3\""] {
            answer(conditional(Method::PATCH, tag).json(&json!({"name": "lost"})))
                .await
                .refused(StatusCode::PRECONDITION_FAILED, "precondition_failed", None);
            answer(conditional(Method::DELETE, tag)).await.refused(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                None,
            );
        }
        // Malformed: 400 naming the header.
        for tag in ["2", "\"2"] {
            answer(conditional(Method::PATCH, tag).json(&json!({"name": "x"})))
                .await
                .invalid("If-Match");
        }
        // An unknown resource is 404 whatever the condition.
        answer(
            acme.request(Method::PATCH, &at(Uuid::now_v7()))
                .header("if-match", "\"1\"")
                .json(&json!({"name": "x"})),
        )
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);
    })
    .await;
    assert_eq!(acme.get(&at(id)).await.data()["name"], "V2");

    // A list naming the current version, and `*`, match.
    let v3 = answer(conditional(Method::PATCH, "\"1\", \"2\"").json(&json!({"name": "V3"})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(v3.etag(), "\"3\"");
    let v4 = answer(conditional(Method::PATCH, "*").json(&json!({"name": "V4"})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(v4.etag(), "\"4\"");
    answer(conditional(Method::DELETE, "\"4\""))
        .await
        .expect(StatusCode::NO_CONTENT);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn of_racing_patches_with_the_same_if_match_exactly_one_wins(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    for round in 0..5 {
        let id = acme.create("customers", json!({"name": "Race"})).await.id();
        let before = event_count(&pool).await;
        let racers: Vec<_> = (0..4)
            .map(|i| {
                answer(
                    acme.request(Method::PATCH, &at(id))
                        .header("if-match", "\"1\"")
                        .json(&json!({"notes": format!("writer {i}")})),
                )
            })
            .collect();
        let answers = futures::future::join_all(racers).await;
        let won: Vec<_> = answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .collect();
        let lost = answers
            .iter()
            .filter(|a| a.status == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((won.len(), lost), (1, 3), "round {round}: {answers:?}");
        assert_eq!(event_count(&pool).await, before + 1);
        let got = acme.get(&at(id)).await;
        assert_eq!(got.data()["notes"], won[0].data()["notes"]);
        assert_eq!(got.etag(), "\"2\"");
    }

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn racing_patches_without_if_match_are_retried_and_all_apply(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme.create("customers", json!({"name": "Busy"})).await.id();

    let fields = ["email", "phone", "company", "notes"];
    let values = [
        json!("busy@example.com"),
        json!("555 0100"),
        json!("Busy Co"),
        json!("n"),
    ];
    let path = at(id);
    let racers: Vec<_> = fields
        .iter()
        .zip(&values)
        .map(|(field, value)| acme.patch(&path, json!({ *field: value })))
        .collect();
    for patched in futures::future::join_all(racers).await {
        patched.expect(StatusCode::OK);
    }
    let got = acme.get(&at(id)).await;
    for (field, value) in fields.iter().zip(&values) {
        assert_eq!(&got.data()[*field], value, "{field}");
    }
    assert_eq!(got.etag(), "\"5\"");
    assert_eq!(stream_types(&pool, id).await.len(), 5);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn another_tenants_customer_is_not_found_and_untouched(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let created = acme.create("customers", json!({"name": "Acme's"})).await;
    let id = created.id();
    let product = acme
        .create("products", json!({"name": "Not a customer"}))
        .await
        .id();

    writes_nothing(&pool, || async {
        let missing = [
            at(id),             // another tenant's
            at(Uuid::now_v7()), // unknown
            at(product),        // another kind of resource
            format!("{PATH}/not-a-uuid"),
        ];
        for path in &missing {
            let (by, patch) = if path.ends_with(&product.to_string()) {
                (&acme, json!({"name": "x"}))
            } else {
                (&globex, json!({"name": "stolen"}))
            };
            by.get(path)
                .await
                .refused(StatusCode::NOT_FOUND, "not_found", None);
            by.patch(path, patch)
                .await
                .refused(StatusCode::NOT_FOUND, "not_found", None);
            by.delete(path)
                .await
                .refused(StatusCode::NOT_FOUND, "not_found", None);
        }
        // With an ETag that would match, too.
        answer(
            globex
                .request(Method::DELETE, &at(id))
                .header("if-match", "\"1\""),
        )
        .await
        .refused(StatusCode::NOT_FOUND, "not_found", None);
    })
    .await;
    assert_eq!(acme.get(&at(id)).await.body, created.body);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn writes_need_the_write_scope_and_reads_the_read_scope(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme
        .create("customers", json!({"name": "Scoped"}))
        .await
        .id();
    let read = &acme.read.key;

    writes_nothing(&pool, || async {
        let post = stack
            .with_key(Method::POST, PATH, read)
            .json(&json!({"name": "x"}));
        let patch = stack
            .with_key(Method::PATCH, &at(id), read)
            .json(&json!({"name": "x"}));
        let delete = stack.with_key(Method::DELETE, &at(id), read);
        for request in [post, patch, delete] {
            answer(request)
                .await
                .refused(StatusCode::FORBIDDEN, "missing_scope", None);
        }
        // The scope is checked before the body is.
        answer(stack.with_key(Method::POST, PATH, read).json(&json!({})))
            .await
            .refused(StatusCode::FORBIDDEN, "missing_scope", None);
        answer(
            stack
                .request(Method::POST, PATH)
                .json(&json!({"name": "x"})),
        )
        .await
        .refused(StatusCode::UNAUTHORIZED, "missing_auth", None);
    })
    .await;
    answer(stack.with_key(Method::GET, &at(id), read))
        .await
        .expect(StatusCode::OK);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_write_is_visible_to_the_next_read_on_another_instance(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let mut stack = spawn_stack(&env).await;
    let other = stack.spawn_api().await;
    let acme = Tenant::new(&stack, "Acme").await;

    for i in 0..10 {
        let created = acme
            .create("customers", json!({"name": format!("Visible {i}")}))
            .await;
        let url = format!("{other}{}", at(created.id()));
        let got = answer(
            stack
                .client
                .get(&url)
                .bearer_auth(&acme.read.key)
                .timeout(Duration::from_secs(10)),
        )
        .await
        .expect(StatusCode::OK);
        assert_eq!(got.body, created.body);
    }

    stack.shutdown().await;
}
