//! The event types: every change in Jeanus is one of these, appended to the
//! log with a `type` (the Rust type's name) and a `schema_version`.
//!
//! Compatibility rules, so that auditors can replay years of history:
//! - A type, once shipped, keeps its name. A change to its data that old
//!   readers cannot ignore bumps `SCHEMA_VERSION` and adds a step to its
//!   `upcast`, which turns stored data of an older version into today's shape
//!   when it is read. Stored events are never rewritten.
//! - Adding an optional field is not a new version: it defaults when absent.
//! - Consumers skip a type they do not know (see `Decoded::Unknown`).
//!
//! Money is an integer count of the currency's minor unit (cents for USD),
//! as Stripe does: exact, and never a float.

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::{decode_as, DecodeError, Decoded, StoredData};

/// The kinds of stream (aggregate) an event belongs to. Used in NATS subjects.
pub mod stream_types {
    pub const TENANT: &str = "tenant";
    pub const API_KEY: &str = "api_key";
    pub const CUSTOMER: &str = "customer";
    pub const PRODUCT: &str = "product";
    pub const LEAD: &str = "lead";
    pub const ORDER: &str = "order";
    pub const WEBHOOK_ENDPOINT: &str = "webhook_endpoint";
}

/// One event type's data, and how to read older versions of it.
pub trait EventData: Serialize + DeserializeOwned {
    /// The `type` stored with the event; never changes once shipped.
    const EVENT_TYPE: &'static str;
    /// The kind of stream the event belongs to.
    const STREAM_TYPE: &'static str;
    /// The version this build writes.
    const SCHEMA_VERSION: i32 = 1;

    /// Turn data stored at `from_version` (< `SCHEMA_VERSION`) into the current shape.
    fn upcast(from_version: i32, data: Value) -> Result<Value, String> {
        let _ = data;
        Err(format!("no upcaster from version {from_version}"))
    }
}

/// Declares the payload enum over every event type, with the dispatch that
/// ties a stored `type` string to its Rust type.
macro_rules! event_payloads {
    ($($name:ident),* $(,)?) => {
        /// Every event type this build knows.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventPayload {
            $($name($name),)*
        }

        impl EventPayload {
            pub fn event_type(&self) -> &'static str {
                match self { $(Self::$name(_) => <$name as EventData>::EVENT_TYPE,)* }
            }

            pub fn stream_type(&self) -> &'static str {
                match self { $(Self::$name(_) => <$name as EventData>::STREAM_TYPE,)* }
            }

            pub fn schema_version(&self) -> i32 {
                match self { $(Self::$name(_) => <$name as EventData>::SCHEMA_VERSION,)* }
            }

            /// The payload as stored in the `data` column.
            pub fn to_data(&self) -> Value {
                let data = match self { $(Self::$name(d) => serde_json::to_value(d),)* };
                // Serialising these plain structs cannot fail: no maps with non-string keys.
                data.unwrap_or(Value::Null)
            }

            /// Read stored data of `event_type` at `version`, upcasting it.
            pub fn decode<'a>(
                event_type: &str,
                version: i32,
                data: impl Into<StoredData<'a>>,
            ) -> Result<Decoded, DecodeError> {
                $(
                    if event_type == <$name as EventData>::EVENT_TYPE {
                        return decode_as::<$name>(version, data).map(|d| Decoded::Known(Self::$name(d)));
                    }
                )*
                Ok(Decoded::Unknown)
            }
        }

        $(
            impl From<$name> for EventPayload {
                fn from(d: $name) -> Self { Self::$name(d) }
            }
        )*
    };
}

/// Implements `EventData` at schema version 1 for types that have never changed.
macro_rules! version_one {
    ($($name:ident => $stream:expr),* $(,)?) => {
        $(
            impl EventData for $name {
                const EVENT_TYPE: &'static str = stringify!($name);
                const STREAM_TYPE: &'static str = $stream;
            }
        )*
    };
}

event_payloads!(
    TenantCreated,
    KeyMinted,
    KeyRevoked,
    CustomerCreated,
    CustomerUpdated,
    CustomerDeleted,
    ProductCreated,
    ProductUpdated,
    ProductDeleted,
    LeadCreated,
    LeadUpdated,
    LeadStageChanged,
    LeadDeleted,
    OrderCreated,
    OrderUpdated,
    OrderStatusChanged,
    OrderDeleted,
    WebhookEndpointCreated,
    WebhookEndpointUpdated,
    WebhookSecretRotated,
    WebhookEndpointDisabled,
    WebhookEndpointDeleted,
    WebhookTestRequested,
);

version_one!(
    TenantCreated => stream_types::TENANT,
    KeyRevoked => stream_types::API_KEY,
    CustomerCreated => stream_types::CUSTOMER,
    CustomerUpdated => stream_types::CUSTOMER,
    CustomerDeleted => stream_types::CUSTOMER,
    ProductCreated => stream_types::PRODUCT,
    ProductUpdated => stream_types::PRODUCT,
    ProductDeleted => stream_types::PRODUCT,
    LeadCreated => stream_types::LEAD,
    LeadUpdated => stream_types::LEAD,
    LeadStageChanged => stream_types::LEAD,
    LeadDeleted => stream_types::LEAD,
    OrderCreated => stream_types::ORDER,
    OrderUpdated => stream_types::ORDER,
    OrderStatusChanged => stream_types::ORDER,
    OrderDeleted => stream_types::ORDER,
    WebhookEndpointCreated => stream_types::WEBHOOK_ENDPOINT,
    WebhookEndpointUpdated => stream_types::WEBHOOK_ENDPOINT,
    WebhookSecretRotated => stream_types::WEBHOOK_ENDPOINT,
    WebhookEndpointDisabled => stream_types::WEBHOOK_ENDPOINT,
    WebhookEndpointDeleted => stream_types::WEBHOOK_ENDPOINT,
    WebhookTestRequested => stream_types::WEBHOOK_ENDPOINT,
);

// ---- tenants and keys ----

/// A workspace was created. Its stream id is the tenant id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

/// An API key was minted. Its stream id is the key id. Only the SHA-256 of
/// the key is recorded, never the key.
///
/// Version 2 renamed `key_hash` to `key_sha256`: the stored field names its
/// algorithm, so that a change of algorithm can only ever be a new field
/// (and a new version), never a silent new meaning of old events. Version-1
/// data is upcast on read (see [`EventData::upcast`] below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMinted {
    pub label: String,
    pub scopes: Vec<Scope>,
    /// Lower-case hex SHA-256 of the whole key string (`key_hash` in
    /// version 1).
    pub key_sha256: String,
    /// The first characters of the key, for masked display (`jns_live_a1b2`).
    pub key_start: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
    pub rate_limit_per_minute: u32,
}

impl EventData for KeyMinted {
    const EVENT_TYPE: &'static str = "KeyMinted";
    const STREAM_TYPE: &'static str = stream_types::API_KEY;
    const SCHEMA_VERSION: i32 = 2;

    fn upcast(from_version: i32, data: Value) -> Result<Value, String> {
        match from_version {
            1 => rename_field(data, "key_hash", "key_sha256"),
            v => Err(format!("no upcaster from version {v}")),
        }
    }
}

/// An upcast step: the object's field `from` renamed `to`, which must be
/// absent (the data would be of two versions at once).
fn rename_field(mut data: Value, from: &str, to: &str) -> Result<Value, String> {
    let fields = data.as_object_mut().ok_or("the data is not an object")?;
    let value = fields
        .remove(from)
        .ok_or_else(|| format!("the data has no {from}"))?;
    if fields.insert(to.to_owned(), value).is_some() {
        return Err(format!("the data has both {from} and {to}"));
    }
    Ok(data)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRevoked {}

// ---- resources ----
//
// `*Updated` events carry a JSON merge patch (RFC 7396) of the fields that
// changed, as the api validated it: absent fields unchanged, null cleared.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerCreated {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerUpdated {
    pub patch: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerDeleted {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub name: String,
    #[serde(default)]
    pub sku: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Minor units of `currency`.
    #[serde(default)]
    pub price: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductUpdated {
    pub patch: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductDeleted {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadStage {
    New,
    Contacted,
    Qualified,
    MeetingBooked,
    Proposal,
    Won,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadCreated {
    pub name: String,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    pub stage: LeadStage,
    /// Minor units.
    #[serde(default)]
    pub estimated_value: Option<i64>,
    /// Percent, 0–100.
    #[serde(default)]
    pub probability: Option<i32>,
    pub source: String,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadUpdated {
    pub patch: Map<String, Value>,
}

/// An existing lead moved to a different stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadStageChanged {
    pub previous_stage: LeadStage,
    pub stage: LeadStage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeadDeleted {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Open,
    Delivered,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: Uuid,
    pub quantity: i64,
    /// Minor units.
    pub unit_price: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub customer_id: Uuid,
    pub status: OrderStatus,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub items: Vec<OrderItem>,
    /// Minor units.
    #[serde(default)]
    pub total: Option<i64>,
    #[serde(default)]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderUpdated {
    pub patch: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    pub previous_status: OrderStatus,
    pub status: OrderStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderDeleted {}

// ---- webhook endpoints ----
//
// A signing secret is never recorded in plaintext: `secret_sealed` is the
// secret encrypted under the deployment's secret key (see the api's and the
// dispatcher's `sealing`), so that the event log, a backup or a replay leaks
// nothing usable without that key.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpointCreated {
    pub url: String,
    /// Event types subscribed to, e.g. `lead.stage_changed`.
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub secret_sealed: String,
}

/// A merge patch of `url`, `events`, `enabled`, `description`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpointUpdated {
    pub patch: Map<String, Value>,
}

/// A new signing secret; the previous one keeps signing beside it until
/// `previous_expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSecretRotated {
    pub secret_sealed: String,
    pub previous_expires_at: DateTime<Utc>,
}

/// The dispatcher stopped delivering to the endpoint (410 Gone, or failing
/// everything for days). Re-enabling is a `WebhookEndpointUpdated` with
/// `enabled: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpointDisabled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpointDeleted {}

/// `POST /api/v1/webhooks/{id}/test`: deliver a `webhook.test` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTestRequested {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_round_trips_through_type_and_data() {
        let payload = EventPayload::from(LeadStageChanged {
            previous_stage: LeadStage::New,
            stage: LeadStage::MeetingBooked,
        });
        assert_eq!(payload.event_type(), "LeadStageChanged");
        assert_eq!(payload.stream_type(), "lead");
        assert_eq!(
            payload.to_data(),
            json!({"previous_stage": "new", "stage": "meeting_booked"})
        );
        let decoded = EventPayload::decode("LeadStageChanged", 1, payload.to_data())
            .expect("a known type decodes");
        assert_eq!(decoded, Decoded::Known(payload));
    }

    #[test]
    fn unknown_type_decodes_as_unknown_not_error() {
        let decoded = EventPayload::decode("LeadTeleported", 1, json!({"to": "mars"}))
            .expect("unknown types are skipped, not errors");
        assert_eq!(decoded, Decoded::Unknown);
    }

    #[test]
    fn malformed_data_of_a_known_type_is_an_error() {
        let err = EventPayload::decode("TenantCreated", 1, json!({"nom": "x"}))
            .expect_err("missing name must fail");
        assert!(err.to_string().contains("TenantCreated"), "{err}");
    }

    #[test]
    fn a_version_from_the_future_is_an_error() {
        let err = EventPayload::decode("TenantCreated", 2, json!({"name": "x"}))
            .expect_err("version 2 is unknown to this build");
        assert!(matches!(
            err,
            DecodeError::FutureVersion {
                found: 2,
                current: 1,
                ..
            }
        ));
    }

    /// A type at version 2 whose version 1 called the field `title`: the
    /// shape of a real rename, exercised through the same decode path.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Renamed {
        name: String,
    }

    impl EventData for Renamed {
        const EVENT_TYPE: &'static str = "Renamed";
        const STREAM_TYPE: &'static str = "test";
        const SCHEMA_VERSION: i32 = 2;

        fn upcast(from_version: i32, mut data: Value) -> Result<Value, String> {
            match from_version {
                1 => {
                    let obj = data.as_object_mut().ok_or("data is not an object")?;
                    let title = obj.remove("title").ok_or("version 1 has no title")?;
                    obj.insert("name".into(), title);
                    Ok(data)
                }
                v => Err(format!("no upcaster from version {v}")),
            }
        }
    }

    #[test]
    fn an_older_version_is_upcast_when_read() {
        let v1 = decode_as::<Renamed>(1, json!({"title": "Acme"})).expect("v1 upcasts");
        let v2 = decode_as::<Renamed>(2, json!({"name": "Acme"})).expect("v2 reads as is");
        assert_eq!(v1, v2);
        assert!(decode_as::<Renamed>(1, json!({"name": "no title"})).is_err());
    }

    #[test]
    fn key_minted_version_1_is_upcast_to_key_sha256() {
        let v1 = json!({"label": "zapier", "scopes": ["read"], "key_hash": "ab",
                        "key_start": "jns_live_a1b2", "rate_limit_per_minute": 60});
        match EventPayload::decode("KeyMinted", 1, v1.clone()).expect("v1 upcasts") {
            Decoded::Known(EventPayload::KeyMinted(k)) => assert_eq!(k.key_sha256, "ab"),
            other => panic!("unexpected {other:?}"),
        }
        // Read as today's shape without the upcast, version 1 does not decode.
        assert!(EventPayload::decode("KeyMinted", 2, v1.clone()).is_err());
        // Data of both shapes at once is refused, not guessed at.
        let mut both = v1;
        both["key_sha256"] = json!("cd");
        assert!(matches!(
            EventPayload::decode("KeyMinted", 1, both),
            Err(DecodeError::Upcast { version: 1, .. })
        ));
        let today = EventPayload::from(KeyMinted {
            label: "x".into(),
            scopes: vec![],
            key_sha256: "ab".into(),
            key_start: "jns_live_a1b2".into(),
            expires_at: None,
            allowed_ips: vec![],
            rate_limit_per_minute: 1,
        });
        assert_eq!(today.schema_version(), 2);
        assert!(today.to_data().get("key_hash").is_none());
    }

    /// A rebuild decodes the stored JSON text, everything else a parsed
    /// value: both give the same payload or the same kind of error, at the
    /// current version, through an upcast, and for bad data.
    #[test]
    fn data_decodes_alike_from_its_text_and_from_its_value() {
        let cases = [
            ("TenantCreated", 1, json!({"name": "Acme \"Ltd\" ü"})),
            (
                "KeyMinted",
                1,
                json!({"label": "zapier", "scopes": ["read"], "key_hash": "ab",
                                     "key_start": "jns_live_a1b2", "rate_limit_per_minute": 60}),
            ),
            (
                "KeyMinted",
                2,
                json!({"label": "zapier", "scopes": ["read"], "key_sha256": "ab",
                                     "key_start": "jns_live_a1b2", "rate_limit_per_minute": 60}),
            ),
            ("TenantCreated", 1, json!({"nom": "x"})),
            ("TenantCreated", 1, json!(["Acme"])),
            ("TenantCreated", 2, json!({"name": "x"})),
            ("LeadTeleported", 1, json!({"to": "mars"})),
        ];
        for (event_type, version, value) in cases {
            let text = serde_json::value::to_raw_value(&value).expect("printable");
            let from_text = EventPayload::decode(event_type, version, &*text);
            let from_value = EventPayload::decode(event_type, version, value.clone());
            match (from_text, from_value) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{event_type} v{version}: {value}"),
                (Err(a), Err(b)) => assert_eq!(
                    std::mem::discriminant(&a),
                    std::mem::discriminant(&b),
                    "{event_type} v{version}: {a} / {b}"
                ),
                (a, b) => panic!("{event_type} v{version}: {a:?} from text, {b:?} from the value"),
            }
        }
        // A field of the wrong type is malformed data, from the text too.
        let wrong =
            serde_json::value::RawValue::from_string("{\"name\": 1}".into()).expect("valid JSON");
        assert!(matches!(
            EventPayload::decode("TenantCreated", 1, &*wrong),
            Err(DecodeError::Data { .. })
        ));
    }

    #[test]
    fn key_minted_reads_without_optional_fields() {
        let d = json!({"label": "zapier", "scopes": ["read", "write"], "key_sha256": "ab",
                       "key_start": "jns_live_a1b2", "rate_limit_per_minute": 60});
        match EventPayload::decode("KeyMinted", 2, d).expect("decodes") {
            Decoded::Known(EventPayload::KeyMinted(k)) => {
                assert_eq!(k.scopes, vec![Scope::Read, Scope::Write]);
                assert!(k.allowed_ips.is_empty());
                assert_eq!(k.expires_at, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
