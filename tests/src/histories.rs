//! Random histories of the four resources (creates, merge-patch updates,
//! stage and status changes, deletes; texts with quotes, `%`, `_`, `\` and
//! non-ASCII), appended through the event store by concurrent writers, each
//! stream with optimistic concurrency as the api appends. For the tests that
//! compare the read models with a fresh fold of the log.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use schema::envelope::{Metadata, NewEvent};
use schema::events::{
    stream_types, CustomerCreated, CustomerDeleted, CustomerUpdated, EventPayload, LeadCreated,
    LeadDeleted, LeadStage, LeadStageChanged, LeadUpdated, OrderCreated, OrderDeleted, OrderItem,
    OrderStatus, OrderStatusChanged, OrderUpdated, ProductCreated, ProductDeleted, ProductUpdated,
};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use serde_json::{json, Map, Value};
use uuid::Uuid;

const STAGES: [LeadStage; 7] = [
    LeadStage::New,
    LeadStage::Contacted,
    LeadStage::Qualified,
    LeadStage::MeetingBooked,
    LeadStage::Proposal,
    LeadStage::Won,
    LeadStage::Lost,
];
const STATUSES: [OrderStatus; 3] = [
    OrderStatus::Open,
    OrderStatus::Delivered,
    OrderStatus::Cancelled,
];
const WORDS: [&str; 12] = [
    "Acme",
    "O'Brien",
    "50% off",
    "under_score",
    r"back\slash",
    "Ünïcödé",
    "Zoë",
    "🎉 party",
    "\"quoted\"",
    "Patel Holdings",
    "a",
    "",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Customer,
    Product,
    Lead,
    Order,
}

/// One stream as its writer knows it.
struct Stream {
    kind: Kind,
    id: Uuid,
    tenant_id: Uuid,
    version: i64,
    stage: LeadStage,
    status: OrderStatus,
}

/// How many of what to write.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Streams per writer.
    pub streams_per_writer: usize,
    /// Appends per writer (each one or two events).
    pub appends_per_writer: usize,
    pub writers: usize,
    pub seed: u64,
}

/// Appends random histories for `tenants` by `plan.writers` concurrent
/// writers; the number of events appended.
pub async fn append_random(store: &EventStore, tenants: &[Uuid], plan: Plan) -> usize {
    let mut tasks = Vec::new();
    for w in 0..plan.writers {
        let store = store.clone();
        let tenants = tenants.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(w as u64));
            write(&store, &tenants, &mut rng, plan).await
        }));
    }
    let mut events = 0;
    for task in tasks {
        events += task.await.expect("a history writer");
    }
    events
}

async fn write(store: &EventStore, tenants: &[Uuid], rng: &mut StdRng, plan: Plan) -> usize {
    let mut streams: Vec<Stream> = Vec::new();
    let mut events = 0;
    for _ in 0..plan.appends_per_writer {
        let live: Vec<usize> = (0..streams.len())
            .filter(|&i| streams[i].version > 0)
            .collect();
        let create =
            streams.len() < plan.streams_per_writer && (live.is_empty() || rng.gen_bool(0.3));
        let (index, payloads) = if create {
            let kind = *[Kind::Customer, Kind::Product, Kind::Lead, Kind::Order]
                .choose(rng)
                .expect("kinds");
            let tenant_id = *tenants.choose(rng).expect("a tenant");
            let (payload, stage, status) = created(kind, rng);
            streams.push(Stream {
                kind,
                id: Uuid::now_v7(),
                tenant_id,
                version: 0,
                stage,
                status,
            });
            (streams.len() - 1, vec![payload])
        } else {
            let Some(&index) = live.choose(rng) else {
                break;
            };
            (index, next(&mut streams[index], rng))
        };
        let stream = &mut streams[index];
        let target = StreamRef {
            tenant_id: stream.tenant_id,
            stream_type: stream_type(stream.kind),
            stream_id: stream.id,
        };
        let batch: Vec<NewEvent> = payloads
            .iter()
            .map(|p| NewEvent::new(p, Metadata::default()))
            .collect();
        let appended = store
            .append(target, ExpectedVersion::Exact(stream.version), batch)
            .await
            .expect("a history append");
        events += payloads.len();
        stream.version = appended.version;
        if payloads.iter().any(|p| p.event_type().ends_with("Deleted")) {
            // Nothing applies to a deleted stream: retire it.
            stream.version = -1;
        }
    }
    events
}

fn stream_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Customer => stream_types::CUSTOMER,
        Kind::Product => stream_types::PRODUCT,
        Kind::Lead => stream_types::LEAD,
        Kind::Order => stream_types::ORDER,
    }
}

fn text(rng: &mut StdRng) -> String {
    let n = rng.gen_range(1..=3);
    (0..n)
        .map(|_| *WORDS.choose(rng).expect("words"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn name(rng: &mut StdRng) -> String {
    let mut name = text(rng);
    if name.trim().is_empty() {
        name = "Nameless".into();
    }
    name
}

fn maybe_text(rng: &mut StdRng) -> Option<String> {
    rng.gen_bool(0.6).then(|| text(rng))
}

fn money(rng: &mut StdRng) -> i64 {
    match rng.gen_range(0..4) {
        0 => 0,
        1 => i64::MAX,
        _ => rng.gen_range(1..10_000_000),
    }
}

fn items(rng: &mut StdRng) -> Vec<OrderItem> {
    (0..rng.gen_range(0..4))
        .map(|_| OrderItem {
            product_id: Uuid::now_v7(),
            quantity: rng.gen_range(1..100),
            unit_price: rng.gen_range(0..100_000),
        })
        .collect()
}

/// A stream's first event, with its initial stage and status.
fn created(kind: Kind, rng: &mut StdRng) -> (EventPayload, LeadStage, OrderStatus) {
    let stage = *STAGES.choose(rng).expect("stages");
    let status = *STATUSES.choose(rng).expect("statuses");
    let payload = match kind {
        Kind::Customer => CustomerCreated {
            name: name(rng),
            email: maybe_text(rng),
            phone: maybe_text(rng),
            company: maybe_text(rng),
            notes: maybe_text(rng),
        }
        .into(),
        Kind::Product => ProductCreated {
            name: name(rng),
            sku: maybe_text(rng),
            description: maybe_text(rng),
            price: rng.gen_bool(0.7).then(|| money(rng)),
            currency: rng.gen_bool(0.7).then(|| "EUR".to_owned()),
            active: rng.gen_bool(0.8),
        }
        .into(),
        Kind::Lead => LeadCreated {
            name: name(rng),
            company: maybe_text(rng),
            email: maybe_text(rng),
            phone: maybe_text(rng),
            stage,
            estimated_value: rng.gen_bool(0.5).then(|| money(rng)),
            probability: rng.gen_bool(0.5).then(|| rng.gen_range(0..=100)),
            source: if rng.gen_bool(0.5) {
                "api".into()
            } else {
                text(rng)
            },
            notes: maybe_text(rng),
        }
        .into(),
        Kind::Order => {
            let items = items(rng);
            let total = items.iter().map(|i| i.quantity * i.unit_price).sum();
            OrderCreated {
                customer_id: Uuid::now_v7(),
                status,
                currency: Some("USD".into()),
                total: (!items.is_empty()).then_some(total),
                items,
                notes: maybe_text(rng),
            }
            .into()
        }
    };
    (payload, stage, status)
}

/// A merge patch of some of `fields` (the optional ones may be cleared).
fn patch(
    rng: &mut StdRng,
    fields: &[(&str, bool)],
    value: impl Fn(&str, &mut StdRng) -> Value,
) -> Map<String, Value> {
    let mut patch = Map::new();
    while patch.is_empty() {
        for (field, optional) in fields {
            if rng.gen_bool(0.35) {
                let v = if *optional && rng.gen_bool(0.25) {
                    Value::Null
                } else {
                    value(field, rng)
                };
                patch.insert((*field).to_owned(), v);
            }
        }
    }
    patch
}

/// The events of one next append to a live stream.
fn next(stream: &mut Stream, rng: &mut StdRng) -> Vec<EventPayload> {
    if rng.gen_bool(0.08) {
        return vec![match stream.kind {
            Kind::Customer => CustomerDeleted {}.into(),
            Kind::Product => ProductDeleted {}.into(),
            Kind::Lead => LeadDeleted {}.into(),
            Kind::Order => OrderDeleted {}.into(),
        }];
    }
    match stream.kind {
        Kind::Customer => vec![CustomerUpdated {
            patch: patch(
                rng,
                &[
                    ("name", false),
                    ("email", true),
                    ("phone", true),
                    ("company", true),
                    ("notes", true),
                ],
                |_, rng| json!(name(rng)),
            ),
        }
        .into()],
        Kind::Product => vec![ProductUpdated {
            patch: patch(
                rng,
                &[
                    ("name", false),
                    ("sku", true),
                    ("description", true),
                    ("price", true),
                    ("currency", true),
                    ("active", false),
                ],
                |field, rng| match field {
                    "price" => json!(money(rng)),
                    "currency" => json!("GBP"),
                    "active" => json!(rng.gen_bool(0.5)),
                    _ => json!(name(rng)),
                },
            ),
        }
        .into()],
        Kind::Lead => {
            let mut events = Vec::new();
            if rng.gen_bool(0.6) {
                events.push(
                    LeadUpdated {
                        patch: patch(
                            rng,
                            &[
                                ("name", false),
                                ("company", true),
                                ("email", true),
                                ("phone", true),
                                ("estimated_value", true),
                                ("probability", true),
                                ("source", false),
                                ("notes", true),
                            ],
                            |field, rng| match field {
                                "estimated_value" => json!(money(rng)),
                                "probability" => json!(rng.gen_range(0..=100)),
                                _ => json!(name(rng)),
                            },
                        ),
                    }
                    .into(),
                );
            }
            if events.is_empty() || rng.gen_bool(0.5) {
                let stage = **STAGES
                    .iter()
                    .filter(|s| **s != stream.stage)
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .expect("another stage");
                events.push(
                    LeadStageChanged {
                        previous_stage: stream.stage,
                        stage,
                    }
                    .into(),
                );
                stream.stage = stage;
            }
            events
        }
        Kind::Order => {
            let mut events = Vec::new();
            if rng.gen_bool(0.6) {
                events.push(
                    OrderUpdated {
                        patch: patch(
                            rng,
                            &[
                                ("currency", true),
                                ("items", false),
                                ("total", true),
                                ("notes", true),
                            ],
                            |field, rng| match field {
                                "currency" => json!("CHF"),
                                "items" => json!(items(rng)),
                                "total" => json!(money(rng)),
                                _ => json!(name(rng)),
                            },
                        ),
                    }
                    .into(),
                );
            }
            if events.is_empty() || rng.gen_bool(0.5) {
                let status = **STATUSES
                    .iter()
                    .filter(|s| **s != stream.status)
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .expect("another status");
                events.push(
                    OrderStatusChanged {
                        previous_status: stream.status,
                        status,
                    }
                    .into(),
                );
                stream.status = status;
            }
            events
        }
    }
}
