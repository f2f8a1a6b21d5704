//! The v1 resources' state as folded from their events — one fold, shared by
//! the api (to validate a command against a stream's current state) and the
//! projector (to build the read models), so that the two can never disagree
//! on what an event means.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::RecordedEvent;
use crate::events::{EventPayload, LeadStage, OrderItem, OrderStatus};

/// Bookkeeping every resource carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The stream version after the last applied event (the ETag).
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Meta {
    fn new(event: &RecordedEvent) -> Self {
        Self {
            id: event.stream_id,
            tenant_id: event.tenant_id,
            version: event.stream_version,
            created_at: event.occurred_at,
            updated_at: event.occurred_at,
            deleted_at: None,
        }
    }

    fn touch(&mut self, event: &RecordedEvent) {
        self.version = event.stream_version;
        self.updated_at = event.occurred_at;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    #[serde(flatten)]
    pub meta: Meta,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    #[serde(flatten)]
    pub meta: Meta,
    pub name: String,
    pub sku: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub currency: Option<String>,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    #[serde(flatten)]
    pub meta: Meta,
    pub name: String,
    pub company: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub stage: LeadStage,
    pub estimated_value: Option<i64>,
    pub probability: Option<i32>,
    pub source: String,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    #[serde(flatten)]
    pub meta: Meta,
    pub customer_id: Uuid,
    pub status: OrderStatus,
    pub currency: Option<String>,
    pub items: Vec<OrderItem>,
    pub total: Option<i64>,
    pub notes: Option<String>,
}

/// An event that cannot apply to the state it is folded onto: a bug or a
/// corrupted log, never a client error.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("event at position {position} ({event_type}) does not apply to {state}")]
    DoesNotApply {
        position: i64,
        event_type: String,
        state: &'static str,
    },
    #[error("the patch at position {position} is invalid: {source}")]
    Patch {
        position: i64,
        #[source]
        source: serde_json::Error,
    },
}

/// Fold one event onto a resource's state (`None` before its first event).
/// Events of other resources are refused; `Decoded::Unknown` types never get here.
pub trait Fold: Sized + Serialize + for<'de> Deserialize<'de> {
    const NAME: &'static str;

    fn meta(&self) -> &Meta;

    fn fold(
        state: Option<Self>,
        event: &RecordedEvent,
        payload: &EventPayload,
    ) -> Result<Self, FoldError>;

    /// Fold a whole stream, oldest first.
    fn from_events<'a>(
        events: impl IntoIterator<Item = (&'a RecordedEvent, &'a EventPayload)>,
    ) -> Result<Option<Self>, FoldError> {
        let mut state = None;
        for (event, payload) in events {
            state = Some(Self::fold(state, event, payload)?);
        }
        Ok(state)
    }
}

/// What one event does to a resource with a [`Lifecycle`].
pub enum Step<'a, T> {
    /// The stream's first event, and the state it starts.
    Created(T),
    /// A JSON merge patch of its fields (`*Updated`).
    Updated(&'a Map<String, Value>),
    /// An event of the resource's own that moves one field (a lead's
    /// stage, an order's status).
    Moved(Box<dyn FnOnce(&mut T) + 'a>),
    /// The soft delete (`*Deleted`).
    Deleted,
}

/// The life every v1 resource shares, folded once for all of them by the
/// [`Fold`] impl below: created once, then patched or moved any number of
/// times, then deleted; nothing applies before the create or after the
/// delete, and every event after the create moves the version and
/// `updated_at`. A resource says only which of its events is which step.
pub trait Lifecycle: Sized + Serialize + for<'de> Deserialize<'de> {
    const NAME: &'static str;

    fn meta(&self) -> &Meta;

    fn meta_mut(&mut self) -> &mut Meta;

    /// What `payload` does to this resource; `None` for another's event.
    fn step<'a>(event: &RecordedEvent, payload: &'a EventPayload) -> Option<Step<'a, Self>>;
}

impl<T: Lifecycle> Fold for T {
    const NAME: &'static str = <T as Lifecycle>::NAME;

    fn meta(&self) -> &Meta {
        Lifecycle::meta(self)
    }

    fn fold(
        state: Option<Self>,
        event: &RecordedEvent,
        payload: &EventPayload,
    ) -> Result<Self, FoldError> {
        match (T::step(event, payload), state) {
            (Some(Step::Created(created)), None) => Ok(created),
            (Some(step), Some(mut s)) if Lifecycle::meta(&s).deleted_at.is_none() => {
                match step {
                    Step::Created(_) => return Err(does_not_apply::<Self>(event)),
                    Step::Updated(patch) => s = merge(s, patch, event)?,
                    Step::Moved(apply) => apply(&mut s),
                    Step::Deleted => s.meta_mut().deleted_at = Some(event.occurred_at),
                }
                s.meta_mut().touch(event);
                Ok(s)
            }
            _ => Err(does_not_apply::<Self>(event)),
        }
    }
}

fn does_not_apply<T: Fold>(event: &RecordedEvent) -> FoldError {
    FoldError::DoesNotApply {
        position: event.position,
        event_type: event.event_type.clone(),
        state: T::NAME,
    }
}

/// Apply a JSON merge patch (RFC 7396) of top-level fields to `state`,
/// through its serialised form, so that every field follows the same rules:
/// a present value replaces, `null` clears. Bookkeeping fields are not
/// patchable and are restored afterwards.
fn merge<T: Fold>(
    state: T,
    patch: &Map<String, Value>,
    event: &RecordedEvent,
) -> Result<T, FoldError> {
    let mut value = serde_json::to_value(&state).map_err(|source| FoldError::Patch {
        position: event.position,
        source,
    })?;
    if let Value::Object(fields) = &mut value {
        for (k, v) in patch {
            if matches!(
                k.as_str(),
                "id" | "tenant_id" | "version" | "created_at" | "updated_at" | "deleted_at"
            ) {
                continue;
            }
            fields.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(value).map_err(|source| FoldError::Patch {
        position: event.position,
        source,
    })
}

/// The [`Lifecycle`] bookkeeping of a resource whose state has a `meta`.
macro_rules! meta {
    () => {
        fn meta(&self) -> &Meta {
            &self.meta
        }

        fn meta_mut(&mut self) -> &mut Meta {
            &mut self.meta
        }
    };
}

impl Lifecycle for Customer {
    const NAME: &'static str = "customer";
    meta!();

    fn step<'a>(event: &RecordedEvent, payload: &'a EventPayload) -> Option<Step<'a, Self>> {
        Some(match payload {
            EventPayload::CustomerCreated(c) => Step::Created(Self {
                meta: Meta::new(event),
                name: c.name.clone(),
                email: c.email.clone(),
                phone: c.phone.clone(),
                company: c.company.clone(),
                notes: c.notes.clone(),
            }),
            EventPayload::CustomerUpdated(u) => Step::Updated(&u.patch),
            EventPayload::CustomerDeleted(_) => Step::Deleted,
            _ => return None,
        })
    }
}

impl Lifecycle for Product {
    const NAME: &'static str = "product";
    meta!();

    fn step<'a>(event: &RecordedEvent, payload: &'a EventPayload) -> Option<Step<'a, Self>> {
        Some(match payload {
            EventPayload::ProductCreated(p) => Step::Created(Self {
                meta: Meta::new(event),
                name: p.name.clone(),
                sku: p.sku.clone(),
                description: p.description.clone(),
                price: p.price,
                currency: p.currency.clone(),
                active: p.active,
            }),
            EventPayload::ProductUpdated(u) => Step::Updated(&u.patch),
            EventPayload::ProductDeleted(_) => Step::Deleted,
            _ => return None,
        })
    }
}

impl Lifecycle for Lead {
    const NAME: &'static str = "lead";
    meta!();

    fn step<'a>(event: &RecordedEvent, payload: &'a EventPayload) -> Option<Step<'a, Self>> {
        Some(match payload {
            EventPayload::LeadCreated(l) => Step::Created(Self {
                meta: Meta::new(event),
                name: l.name.clone(),
                company: l.company.clone(),
                email: l.email.clone(),
                phone: l.phone.clone(),
                stage: l.stage,
                estimated_value: l.estimated_value,
                probability: l.probability,
                source: l.source.clone(),
                notes: l.notes.clone(),
            }),
            EventPayload::LeadUpdated(u) => Step::Updated(&u.patch),
            EventPayload::LeadStageChanged(c) => {
                let stage = c.stage;
                Step::Moved(Box::new(move |s: &mut Self| s.stage = stage))
            }
            EventPayload::LeadDeleted(_) => Step::Deleted,
            _ => return None,
        })
    }
}

impl Lifecycle for Order {
    const NAME: &'static str = "order";
    meta!();

    fn step<'a>(event: &RecordedEvent, payload: &'a EventPayload) -> Option<Step<'a, Self>> {
        Some(match payload {
            EventPayload::OrderCreated(o) => Step::Created(Self {
                meta: Meta::new(event),
                customer_id: o.customer_id,
                status: o.status,
                currency: o.currency.clone(),
                items: o.items.clone(),
                total: o.total,
                notes: o.notes.clone(),
            }),
            EventPayload::OrderUpdated(u) => Step::Updated(&u.patch),
            EventPayload::OrderStatusChanged(c) => {
                let status = c.status;
                Step::Moved(Box::new(move |s: &mut Self| s.status = status))
            }
            EventPayload::OrderDeleted(_) => Step::Deleted,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::events::{LeadCreated, LeadDeleted, LeadStageChanged, LeadUpdated};
    use serde_json::json;

    fn recorded(stream_id: Uuid, version: i64, payload: &EventPayload) -> RecordedEvent {
        RecordedEvent {
            position: version,
            id: Uuid::now_v7(),
            tenant_id: Uuid::nil(),
            stream_type: payload.stream_type().into(),
            stream_id,
            stream_version: version,
            event_type: payload.event_type().into(),
            schema_version: payload.schema_version(),
            occurred_at: Utc::now(),
            metadata: Metadata::default(),
            data: payload.to_data(),
        }
    }

    fn fold_all(payloads: &[EventPayload]) -> Result<Option<Lead>, FoldError> {
        let id = Uuid::now_v7();
        let events: Vec<RecordedEvent> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| recorded(id, i as i64 + 1, p))
            .collect();
        Lead::from_events(events.iter().zip(payloads))
    }

    fn created() -> EventPayload {
        LeadCreated {
            name: "Sarah Patel".into(),
            company: Some("Patel Holdings".into()),
            email: None,
            phone: None,
            stage: LeadStage::New,
            estimated_value: Some(1_200_000),
            probability: None,
            source: "calendly".into(),
            notes: Some("call back".into()),
        }
        .into()
    }

    #[test]
    fn a_merge_patch_replaces_present_fields_and_clears_nulls() {
        let patch = json!({"company": "Patel Ltd", "notes": null, "probability": 40});
        let lead = fold_all(&[
            created(),
            LeadUpdated {
                patch: patch.as_object().expect("object").clone(),
            }
            .into(),
        ])
        .expect("folds")
        .expect("exists");
        assert_eq!(lead.company.as_deref(), Some("Patel Ltd"));
        assert_eq!(lead.notes, None);
        assert_eq!(lead.probability, Some(40));
        assert_eq!(lead.estimated_value, Some(1_200_000), "absent fields stay");
        assert_eq!(lead.meta.version, 2);
    }

    #[test]
    fn a_stage_change_moves_the_stage_and_the_version() {
        let lead = fold_all(&[
            created(),
            LeadStageChanged {
                previous_stage: LeadStage::New,
                stage: LeadStage::Won,
            }
            .into(),
        ])
        .expect("folds")
        .expect("exists");
        assert_eq!((lead.stage, lead.meta.version), (LeadStage::Won, 2));
    }

    #[test]
    fn nothing_applies_after_a_delete_or_before_a_create() {
        let deleted = fold_all(&[created(), LeadDeleted {}.into()])
            .expect("folds")
            .expect("exists");
        assert!(deleted.meta.deleted_at.is_some());
        assert!(fold_all(&[created(), LeadDeleted {}.into(), LeadDeleted {}.into()]).is_err());
        assert!(fold_all(&[LeadDeleted {}.into()]).is_err());
        assert!(fold_all(&[created(), created()]).is_err());
    }

    #[test]
    fn bookkeeping_fields_cannot_be_patched() {
        let patch = json!({"id": Uuid::nil(), "version": 99, "deleted_at": "2020-01-01T00:00:00Z"});
        let lead = fold_all(&[
            created(),
            LeadUpdated {
                patch: patch.as_object().expect("object").clone(),
            }
            .into(),
        ])
        .expect("folds")
        .expect("exists");
        assert_ne!(lead.meta.id, Uuid::nil());
        assert_eq!(lead.meta.version, 2);
        assert_eq!(lead.meta.deleted_at, None);
    }
}
