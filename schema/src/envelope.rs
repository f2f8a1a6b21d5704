//! The envelope every event travels in: as stored in PostgreSQL, as published
//! to JetStream, and as read back by consumers and auditors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{EventData, EventPayload};

/// Who caused an event and through which request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The `X-Request-Id` of the request that appended the event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The API key that acted, if any (operator and system actions have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Uuid>,
}

/// An event about to be appended: everything but its place in the log.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: &'static str,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub data: serde_json::Value,
}

impl NewEvent {
    /// A new event with a fresh UUIDv7 id, stamped now, at the payload's current schema version.
    pub fn new(payload: &EventPayload, metadata: Metadata) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: payload.event_type(),
            schema_version: payload.schema_version(),
            occurred_at: Utc::now(),
            metadata,
            data: payload.to_data(),
        }
    }
}

/// An event as recorded in the log. `data` is kept as stored (at its own
/// `schema_version`); [`RecordedEvent::decode`] upcasts it and gives the typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RecordedEvent {
    pub position: i64,
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub stream_type: String,
    pub stream_id: Uuid,
    pub stream_version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    pub occurred_at: DateTime<Utc>,
    #[sqlx(json)]
    pub metadata: Metadata,
    pub data: serde_json::Value,
}

/// What a consumer gets from a recorded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A type this build knows, upcast to its current schema version.
    Known(EventPayload),
    /// A type this build does not know (written by a newer version): skip it.
    Unknown,
}

impl RecordedEvent {
    /// The typed payload, upcast from the stored schema version. An unknown
    /// type is `Decoded::Unknown`, not an error, so that an older consumer
    /// skips what a newer producer wrote; a known type that fails to decode
    /// is an error.
    pub fn decode(&self) -> Result<Decoded, DecodeError> {
        EventPayload::decode(&self.event_type, self.schema_version, self.data.clone())
    }
}

/// A known event type whose stored data cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "event type {event_type} has schema version {found}, newer than this build's {current}"
    )]
    FutureVersion {
        event_type: String,
        found: i32,
        current: i32,
    },
    #[error("event type {event_type} version {version} cannot be upcast: {reason}")]
    Upcast {
        event_type: String,
        version: i32,
        reason: String,
    },
    #[error("event type {event_type} has malformed data: {source}")]
    Data {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An event's data as read from the log: parsed, or still its JSON text.
/// From the text, data at the current version goes straight into its Rust
/// type, with no `serde_json::Value` tree in between (a rebuild's reads).
#[derive(Debug)]
pub enum StoredData<'a> {
    Value(serde_json::Value),
    Text(&'a str),
}

impl From<serde_json::Value> for StoredData<'static> {
    fn from(value: serde_json::Value) -> Self {
        Self::Value(value)
    }
}

impl<'a> From<&'a serde_json::value::RawValue> for StoredData<'a> {
    fn from(raw: &'a serde_json::value::RawValue) -> Self {
        Self::Text(raw.get())
    }
}

/// Decode data stored at `version` into `T`, upcasting it first.
pub fn decode_as<'a, T: EventData>(
    version: i32,
    data: impl Into<StoredData<'a>>,
) -> Result<T, DecodeError> {
    let malformed = |source| DecodeError::Data {
        event_type: T::EVENT_TYPE.to_owned(),
        source,
    };
    if version > T::SCHEMA_VERSION {
        return Err(DecodeError::FutureVersion {
            event_type: T::EVENT_TYPE.to_owned(),
            found: version,
            current: T::SCHEMA_VERSION,
        });
    }
    let data = match data.into() {
        StoredData::Text(text) if version == T::SCHEMA_VERSION => {
            return serde_json::from_str(text).map_err(malformed);
        }
        StoredData::Text(text) => serde_json::from_str(text).map_err(malformed)?,
        StoredData::Value(value) => value,
    };
    let data = if version < T::SCHEMA_VERSION {
        T::upcast(version, data).map_err(|reason| DecodeError::Upcast {
            event_type: T::EVENT_TYPE.to_owned(),
            version,
            reason,
        })?
    } else {
        data
    };
    serde_json::from_value(data).map_err(malformed)
}
