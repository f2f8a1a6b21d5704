//! Resources written straight through the event store, as the api would
//! append them, for tests that need data in bulk, at chosen times, or
//! without going through the write endpoints.

use chrono::{DateTime, Utc};
use schema::envelope::{Metadata, NewEvent};
use schema::events::{
    CustomerCreated, EventPayload, LeadCreated, LeadStage, OrderCreated, OrderStatus,
    ProductCreated,
};
use schema::store::{EventStore, ExpectedVersion, StreamRef};
use uuid::Uuid;

/// Appends `payload` as the first event of a new stream of its type for
/// `tenant_id`, at `at` (now when `None`); the new id and its position.
pub async fn create(
    store: &EventStore,
    tenant_id: Uuid,
    payload: EventPayload,
    at: Option<DateTime<Utc>>,
) -> (Uuid, i64) {
    let id = Uuid::now_v7();
    let mut event = NewEvent::new(&payload, Metadata::default());
    if let Some(at) = at {
        event.occurred_at = at;
    }
    let appended = store
        .append(
            StreamRef {
                tenant_id,
                stream_type: payload.stream_type(),
                stream_id: id,
            },
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .expect("append a created event");
    (id, *appended.positions.expect("appended").end())
}

/// Appends `payload` to an existing stream at `version`; the new version.
pub async fn append(
    store: &EventStore,
    tenant_id: Uuid,
    id: Uuid,
    version: i64,
    payload: EventPayload,
) -> i64 {
    store
        .append(
            StreamRef {
                tenant_id,
                stream_type: payload.stream_type(),
                stream_id: id,
            },
            ExpectedVersion::Exact(version),
            vec![NewEvent::new(&payload, Metadata::default())],
        )
        .await
        .expect("append an event")
        .version
}

pub fn customer(name: &str, email: Option<&str>) -> EventPayload {
    CustomerCreated {
        name: name.into(),
        email: email.map(Into::into),
        phone: None,
        company: None,
        notes: None,
    }
    .into()
}

pub fn product(name: &str, sku: Option<&str>) -> EventPayload {
    ProductCreated {
        name: name.into(),
        sku: sku.map(Into::into),
        description: None,
        price: Some(1999),
        currency: Some("USD".into()),
        active: true,
    }
    .into()
}

pub fn lead(name: &str, email: Option<&str>, stage: LeadStage) -> EventPayload {
    LeadCreated {
        name: name.into(),
        company: None,
        email: email.map(Into::into),
        phone: None,
        stage,
        estimated_value: None,
        probability: None,
        source: "api".into(),
        notes: None,
    }
    .into()
}

pub fn order(customer_id: Uuid, status: OrderStatus) -> EventPayload {
    OrderCreated {
        customer_id,
        status,
        currency: Some("USD".into()),
        items: Vec::new(),
        total: Some(0),
        notes: None,
    }
    .into()
}
