//! Leads end to end: their fields and defaults (stage `new`, source `api`),
//! and the events a stage change appends: LeadStageChanged exactly when an
//! existing lead moves to another stage, never on create, never for the
//! same stage. The lifecycle and isolation every resource shares are in
//! depth in `customers.rs`.

use jeanus_tests::writes::{event_count, stream_events, stream_types, writes_nothing, Tenant};
use jeanus_tests::{spawn_stack, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const PATH: &str = "/api/v1/leads";

fn at(id: Uuid) -> String {
    format!("{PATH}/{id}")
}

/// The seed's own example: a lead from Zapier.
#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn the_documented_example_creates_a_lead(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let created = acme
        .create(
            "leads",
            json!({
                "name": "Sarah Patel",
                "company": "Patel Holdings",
                "email": "sarah@patelholdings.com",
                "stage": "new",
                "source": "calendly",
                "estimated_value": 12000,
            }),
        )
        .await;
    let data = created.data();
    assert_eq!(data["name"], "Sarah Patel");
    assert_eq!(data["source"], "calendly");
    assert_eq!(data["estimated_value"], 12000);
    assert_eq!(data["probability"], Value::Null);
    assert_eq!(data["phone"], Value::Null);
    assert_eq!(data["notes"], Value::Null);
    let id = created.id();
    assert_eq!(acme.get(&at(id)).await.body, created.body);
    assert_eq!(stream_types(&pool, id).await, ["LeadCreated"]);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn stage_and_source_have_defaults_and_every_field_round_trips(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;

    let bare = acme.create("leads", json!({"name": "Bare"})).await;
    assert_eq!(bare.data()["stage"], "new");
    assert_eq!(bare.data()["source"], "api");
    let nulls = acme
        .create(
            "leads",
            json!({"name": "Nulls", "stage": null, "source": ""}),
        )
        .await;
    assert_eq!(
        (&nulls.data()["stage"], &nulls.data()["source"]),
        (&json!("new"), &json!("api"))
    );

    let full = json!({
        "name": "Full",
        "company": "Full Co",
        "email": "full@example.com",
        "phone": "(555) 010-0000",
        "stage": "meeting_booked",
        "estimated_value": 0,
        "probability": 100,
        "source": "webform",
        "notes": "Line one\nLine two",
    });
    let created = acme.create("leads", full.clone()).await;
    for (field, value) in full.as_object().expect("an object") {
        assert_eq!(&created.data()[field], value, "{field}");
    }
    assert_eq!(acme.get(&at(created.id())).await.body, created.body);

    for stage in [
        "new",
        "contacted",
        "qualified",
        "meeting_booked",
        "proposal",
        "won",
        "lost",
    ] {
        let lead = acme
            .create("leads", json!({"name": stage, "stage": stage}))
            .await;
        assert_eq!(lead.data()["stage"], stage);
        assert_eq!(
            stream_types(&pool, lead.id()).await,
            ["LeadCreated"],
            "creating a lead at any stage is LeadCreated alone"
        );
    }

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn every_field_is_validated_and_a_refusal_writes_nothing(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme.create("leads", json!({"name": "Target"})).await.id();

    let refusals: Vec<(Value, &str)> = vec![
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"company": "x".repeat(201)}), "company"),
        (json!({"email": "sarah@"}), "email"),
        (json!({"phone": "1".repeat(51)}), "phone"),
        (json!({"stage": "bogus"}), "stage"),
        (json!({"stage": "New"}), "stage"),
        (json!({"stage": 1}), "stage"),
        (json!({"estimated_value": -1}), "estimated_value"),
        (json!({"estimated_value": 120.5}), "estimated_value"),
        (json!({"estimated_value": "12000"}), "estimated_value"),
        (json!({"probability": 101}), "probability"),
        (json!({"probability": -1}), "probability"),
        (json!({"probability": 50.5}), "probability"),
        (json!({"probability": "50"}), "probability"),
        (json!({"source": "x".repeat(101)}), "source"),
        (json!({"source": true}), "source"),
        (json!({"notes": "x".repeat(10_001)}), "notes"),
        (json!({"value": 1}), "value"),
    ];
    writes_nothing(&pool, || async {
        for (body, field) in &refusals {
            let mut create = body.clone();
            create
                .as_object_mut()
                .expect("an object")
                .entry("name")
                .or_insert(json!("x"));
            acme.post(PATH, create).await.invalid(field);
            acme.patch(&at(id), body.clone()).await.invalid(field);
        }
        acme.post(PATH, json!({"company": "No Name"}))
            .await
            .missing("name");
        for field in ["name", "stage", "source"] {
            acme.patch(&at(id), json!({ field: null }))
                .await
                .invalid(field);
        }
        acme.patch(&at(id), json!({"source": " "}))
            .await
            .invalid("source");
    })
    .await;

    // Optional numbers clear with null.
    let set = acme
        .patch(&at(id), json!({"estimated_value": 5, "probability": 0}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        (&set.data()["estimated_value"], &set.data()["probability"]),
        (&json!(5), &json!(0))
    );
    let cleared = acme
        .patch(
            &at(id),
            json!({"estimated_value": null, "probability": null}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(cleared.data()["estimated_value"], Value::Null);
    assert_eq!(cleared.data()["probability"], Value::Null);

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn a_stage_change_appends_lead_stage_changed_exactly_when_the_stage_moves(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let id = acme.create("leads", json!({"name": "Mover"})).await.id();

    // Another stage: one LeadStageChanged, with the previous stage.
    let moved = acme
        .patch(&at(id), json!({"stage": "qualified"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(moved.data()["stage"], "qualified");
    assert_eq!(moved.etag(), "\"2\"");
    let events = stream_events(&pool, id).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].0, "LeadStageChanged");
    assert_eq!(
        events[1].1,
        json!({"previous_stage": "new", "stage": "qualified"})
    );

    // The same stage: nothing.
    let before = event_count(&pool).await;
    let same = acme
        .patch(&at(id), json!({"stage": "qualified"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(same.etag(), "\"2\"");
    assert_eq!(event_count(&pool).await, before);

    // The same stage with another field: a LeadUpdated alone, without stage.
    acme.patch(&at(id), json!({"stage": "qualified", "probability": 30}))
        .await
        .expect(StatusCode::OK);
    let events = stream_events(&pool, id).await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[2],
        (
            "LeadUpdated".to_owned(),
            json!({"patch": {"probability": 30}})
        )
    );

    // Another stage with other fields: LeadUpdated then LeadStageChanged,
    // in one append (consecutive positions).
    let both = acme
        .patch(&at(id), json!({"stage": "won", "notes": "Signed"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(both.etag(), "\"5\"");
    assert_eq!(
        (&both.data()["stage"], &both.data()["notes"]),
        (&json!("won"), &json!("Signed"))
    );
    let tail: Vec<(String, Value, i64)> = sqlx::query_as(
        "select event_type, data, position from events
          where stream_id = $1 and stream_version > 3 order by stream_version",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(tail.len(), 2);
    assert_eq!(
        (tail[0].0.as_str(), &tail[0].1),
        ("LeadUpdated", &json!({"patch": {"notes": "Signed"}}))
    );
    assert_eq!(
        (tail[1].0.as_str(), &tail[1].1),
        (
            "LeadStageChanged",
            &json!({"previous_stage": "qualified", "stage": "won"})
        )
    );
    assert_eq!(tail[1].2, tail[0].2 + 1);

    // Any stage may follow any other, back to new included.
    acme.patch(&at(id), json!({"stage": "new"}))
        .await
        .expect(StatusCode::OK);
    let got = acme.get(&at(id)).await;
    assert_eq!(got.data()["stage"], "new");
    assert_eq!(got.etag(), "\"6\"");
    assert_eq!(
        stream_types(&pool, id).await,
        [
            "LeadCreated",
            "LeadStageChanged",
            "LeadUpdated",
            "LeadUpdated",
            "LeadStageChanged",
            "LeadStageChanged"
        ]
    );

    stack.shutdown().await;
}

#[sqlx::test(migrator = "schema::MIGRATOR")]
async fn another_tenants_lead_is_not_found_and_untouched(pool: PgPool) {
    let env = TestEnv::new(pool.clone()).await;
    let stack = spawn_stack(&env).await;
    let acme = Tenant::new(&stack, "Acme").await;
    let globex = Tenant::new(&stack, "Globex").await;
    let created = acme.create("leads", json!({"name": "Acme's"})).await;
    let id = created.id();

    writes_nothing(&pool, || async {
        globex
            .get(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
        globex
            .patch(&at(id), json!({"stage": "won"}))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
        globex
            .delete(&at(id))
            .await
            .refused(StatusCode::NOT_FOUND, "not_found", None);
    })
    .await;
    assert_eq!(acme.get(&at(id)).await.body, created.body);

    acme.delete(&at(id)).await.expect(StatusCode::NO_CONTENT);
    assert_eq!(
        stream_types(&pool, id).await,
        ["LeadCreated", "LeadDeleted"]
    );
    writes_nothing(&pool, || async {
        acme.patch(&at(id), json!({"stage": "won"})).await.refused(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        );
    })
    .await;

    stack.shutdown().await;
}
