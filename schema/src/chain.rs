//! The hash chain's encoding, as `jeanus_append` computes it at append
//! (migration 0010) and as `jeanus-projector verify` recomputes it:
//! `hash = SHA-256(prev_hash ‖ canonical bytes)`, chained per tenant, where
//! a tenant's first event has 32 zero bytes ([`GENESIS`]) for `prev_hash`.
//!
//! The canonical bytes are the UTF-8 text PostgreSQL prints for the jsonb
//! object of the event as `GET /api/v1/events` returns it, without `hash`
//! (ARCHITECTURE.md, "Tamper evidence"): keys sorted by byte length, then
//! bytewise; `", "` and `": "` separators; `metadata` and `data` as
//! `jsonb::text` prints them. This module writes the same text from the
//! columns, with `metadata` and `data` taken as PostgreSQL printed them, so
//! that a check here never trusts the database's own function.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::envelope::{Metadata, NewEvent};

/// The `prev_hash` of a tenant's first event.
pub const GENESIS: Hash = [0; 32];

pub type Hash = [u8; 32];

/// One stored event, with `metadata` and `data` as `jsonb::text`.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalEvent<'a> {
    pub position: i64,
    pub id: Uuid,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub stream_type: &'a str,
    pub stream_id: Uuid,
    pub stream_version: i64,
    pub occurred_at: DateTime<Utc>,
    pub metadata: &'a str,
    pub data: &'a str,
}

/// `occurred_at` as the chain and the history API write it: UTC, always six
/// fractional digits (`2026-01-31T09:00:00.000000Z`), as PostgreSQL's
/// `to_char(… at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`.
pub fn format_occurred_at(at: DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(27);
    write_occurred_at(at, &mut out);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the canonical bytes of `event` into `out` (cleared first).
pub fn write_canonical(event: &CanonicalEvent<'_>, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.clear();
    write_before_position(event, out);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", event.position);
    write_before_version(event, out);
    let _ = write!(out, "{}}}", event.stream_version);
}

/// `{"id": …, "data": …, "type": …, "metadata": …, "position": `
fn write_before_position(event: &CanonicalEvent<'_>, out: &mut Vec<u8>) {
    write_before_position_with(
        event.id,
        event.event_type,
        out,
        |out| {
            out.extend_from_slice(event.data.as_bytes());
            true
        },
        |out| out.extend_from_slice(event.metadata.as_bytes()),
    );
}

/// [`write_before_position`] with `data` and `metadata` written by the
/// given functions; `false` if `data` declined (see [`write_jsonb_text`]).
fn write_before_position_with(
    id: Uuid,
    event_type: &str,
    out: &mut Vec<u8>,
    data: impl FnOnce(&mut Vec<u8>) -> bool,
    metadata: impl FnOnce(&mut Vec<u8>),
) -> bool {
    out.extend_from_slice(b"{\"id\": \"");
    write_uuid(id, out);
    out.extend_from_slice(b"\", \"data\": ");
    if !data(out) {
        return false;
    }
    out.extend_from_slice(b", \"type\": ");
    write_json_string(event_type, out);
    out.extend_from_slice(b", \"metadata\": ");
    metadata(out);
    out.extend_from_slice(b", \"position\": ");
    true
}

/// `, "stream_id": …, "occurred_at": …, "stream_type": …, "schema_version": …, "stream_version": `
fn write_before_version(event: &CanonicalEvent<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b", \"stream_id\": \"");
    write_uuid(event.stream_id, out);
    out.extend_from_slice(b"\", \"occurred_at\": \"");
    write_occurred_at(event.occurred_at, out);
    out.extend_from_slice(b"\", \"stream_type\": ");
    write_json_string(event.stream_type, out);
    out.extend_from_slice(b", \"schema_version\": ");
    out.extend_from_slice(itoa::Buffer::new().format(event.schema_version).as_bytes());
    out.extend_from_slice(b", \"stream_version\": ");
}

/// A UUID in lower-case hyphenated form, as PostgreSQL prints one.
fn write_uuid(id: Uuid, out: &mut Vec<u8>) {
    let mut buffer = Uuid::encode_buffer();
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buffer).as_bytes());
}

/// [`format_occurred_at`] into `out`, digit by digit: `verify` writes one
/// per event, and chrono's format strings are interpreted at each call.
fn write_occurred_at(at: DateTime<Utc>, out: &mut Vec<u8>) {
    use chrono::{Datelike as _, Timelike as _};
    fn digits(out: &mut Vec<u8>, value: u32, width: u32) {
        for place in (0..width).rev() {
            out.push(b'0' + (value / 10_u32.pow(place) % 10) as u8);
        }
    }
    let year = at.year();
    if !(0..=9999).contains(&year) {
        // Outside what four digits hold: let chrono write it.
        out.extend_from_slice(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string().as_bytes());
        return;
    }
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, at.month(), 2);
    out.push(b'-');
    digits(out, at.day(), 2);
    out.push(b'T');
    digits(out, at.hour(), 2);
    out.push(b':');
    digits(out, at.minute(), 2);
    out.push(b':');
    digits(out, at.second(), 2);
    out.push(b'.');
    // A leap second's nanoseconds run past 10⁹; PostgreSQL has none.
    digits(out, at.nanosecond() % 1_000_000_000 / 1_000, 6);
    out.push(b'Z');
}

/// An event's canonical bytes before the log has placed it: everything but
/// its `position` and `stream_version`, which only the log's end decides.
/// The event store's writer prints these on each caller's task, so that
/// chaining a batch, which is serial, only hashes.
#[derive(Debug, Clone)]
pub struct Unplaced {
    before_position: Vec<u8>,
    before_version: Vec<u8>,
}

impl Unplaced {
    /// The pieces of `event`, appended to stream `stream_id` of type
    /// `stream_type`, if its payloads' `jsonb` text is certain (see
    /// [`write_jsonb_text`]). The payloads are printed straight into the
    /// pieces: the event store's writer does this for every event it chains.
    pub fn of(stream_type: &str, stream_id: Uuid, event: &NewEvent) -> Option<Self> {
        let mut before_position = Vec::with_capacity(512);
        let certain = write_before_position_with(
            event.id,
            event.event_type,
            &mut before_position,
            |out| write_jsonb_text(&event.data, out),
            |out| write_metadata_jsonb_text(&event.metadata, out),
        );
        if !certain {
            return None;
        }
        let mut before_version = Vec::with_capacity(160);
        write_before_version(
            &CanonicalEvent {
                position: 0,
                id: event.id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                stream_type,
                stream_id,
                stream_version: 0,
                occurred_at: event.occurred_at,
                metadata: "",
                data: "",
            },
            &mut before_version,
        );
        Some(Self {
            before_position,
            before_version,
        })
    }

    /// The hash of this event at `position` and `stream_version`, after
    /// `prev`: [`next_hash`] of its canonical bytes, without writing them out.
    pub fn link(&self, prev: &Hash, position: i64, stream_version: i64) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(&self.before_position);
        hasher.update(itoa::Buffer::new().format(position));
        hasher.update(&self.before_version);
        hasher.update(itoa::Buffer::new().format(stream_version));
        hasher.update(b"}");
        hasher.finalize().into()
    }
}

/// The canonical bytes of `event`.
pub fn canonical(event: &CanonicalEvent<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + event.data.len() + event.metadata.len());
    write_canonical(event, &mut out);
    out
}

/// One link: `SHA-256(prev ‖ canonical)`.
pub fn next_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// Writes `value` as PostgreSQL prints it once stored as `jsonb`
/// (`jsonb::text`), so that the event store's writer can build an event's
/// canonical bytes before the database has stored it: objects with their
/// keys sorted by byte length, then bytewise, `", "` and `": "` between
/// items, strings escaped as [`write_json_string`] says, numbers as written.
///
/// Returns `false`, with `out` partly written, for what it cannot be sure
/// of: a number PostgreSQL would rewrite (`1e21` is printed
/// `1000000000000000000000`, `-0.0` is printed `0.0`). The caller then
/// leaves the hash to the database.
pub fn write_jsonb_text(value: &serde_json::Value, out: &mut Vec<u8>) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
            } else {
                let text = n.to_string();
                if text.contains(['e', 'E'])
                    || n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative())
                {
                    return false;
                }
                out.extend_from_slice(text.as_bytes());
            }
        }
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                if !write_jsonb_text(item, out) {
                    return false;
                }
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|(a, _), (b, _)| {
                a.len()
                    .cmp(&b.len())
                    .then_with(|| a.as_bytes().cmp(b.as_bytes()))
            });
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                write_json_string(key, out);
                out.extend_from_slice(b": ");
                if !write_jsonb_text(item, out) {
                    return false;
                }
            }
            out.push(b'}');
        }
    }
    true
}

/// `metadata` as [`write_jsonb_text`] writes its serde form, without
/// building that form: keys by length (`key_id` before `request_id`), absent
/// ones left out, as `Metadata`'s `skip_serializing_if` leaves them out.
fn write_metadata_jsonb_text(metadata: &Metadata, out: &mut Vec<u8>) {
    // Destructured so that a new field cannot be forgotten here.
    let Metadata { request_id, key_id } = metadata;
    out.push(b'{');
    if let Some(key_id) = key_id {
        out.extend_from_slice(b"\"key_id\": \"");
        write_uuid(*key_id, out);
        out.push(b'"');
    }
    if let Some(request_id) = request_id {
        if key_id.is_some() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"\"request_id\": ");
        write_json_string(request_id, out);
    }
    out.push(b'}');
}

/// A JSON string as PostgreSQL's `escape_json` writes it, which serde_json
/// matches: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control
/// characters as `\u00xx`, everything else (non-ASCII too) as is.
fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A hash as lower-case hex (64 characters), as the history API shows it.
pub fn to_hex(hash: &[u8]) -> String {
    hex::encode(hash)
}

/// A hash from 64 hex digits (either case).
pub fn from_hex(text: &str) -> Option<Hash> {
    let mut hash = GENESIS;
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(data: &'a str, event_type: &'a str) -> CanonicalEvent<'a> {
        CanonicalEvent {
            position: 7,
            id: Uuid::parse_str("0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e51").expect("uuid"),
            event_type,
            schema_version: 2,
            stream_type: "lead",
            stream_id: Uuid::parse_str("0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e50").expect("uuid"),
            stream_version: 3,
            occurred_at: DateTime::parse_from_rfc3339("2026-01-01T00:00:00.5Z")
                .expect("time")
                .with_timezone(&Utc),
            metadata: "{}",
            data,
        }
    }

    #[test]
    fn the_encoding_is_the_jsonb_text_of_the_event() {
        let bytes = canonical(&sample(r#"{"b": 1.50}"#, "LeadCreated"));
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            r#"{"id": "0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e51", "data": {"b": 1.50}, "type": "LeadCreated", "metadata": {}, "position": 7, "stream_id": "0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e50", "occurred_at": "2026-01-01T00:00:00.500000Z", "stream_type": "lead", "schema_version": 2, "stream_version": 3}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_postgresql_escapes_them() {
        let mut out = Vec::new();
        write_json_string("a\"b\\c\nd\u{1}é\u{7f}", &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\""
        );
    }

    #[test]
    fn each_link_covers_the_previous_hash() {
        let bytes = canonical(&sample("{}", "X"));
        let first = next_hash(&GENESIS, &bytes);
        assert_ne!(next_hash(&first, &bytes), first);
        // SHA-256 of 32 zero bytes followed by "abc", computed with Python's hashlib.
        assert_eq!(
            to_hex(&next_hash(&GENESIS, b"abc")),
            "365aa7d8f7f9402c4b9434502b4cc89ddb09fe50d7cd95b493b834c62d5a5370"
        );
    }

    #[test]
    fn an_unplaced_event_links_as_its_canonical_bytes_do() {
        let key_id = Uuid::parse_str("0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e52").expect("uuid");
        let metadata = r#"{"key_id": "0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e52", "request_id": "r"}"#;
        let event = CanonicalEvent {
            metadata,
            ..sample(r#"{"a": "\u0001", "b": 1.5}"#, "Lead\"Odd")
        };
        let new = NewEvent {
            id: event.id,
            event_type: "Lead\"Odd",
            schema_version: event.schema_version,
            occurred_at: event.occurred_at,
            metadata: Metadata {
                request_id: Some("r".into()),
                key_id: Some(key_id),
            },
            data: serde_json::json!({ "b": 1.5, "a": "\u{1}" }),
        };
        let unplaced =
            Unplaced::of(event.stream_type, event.stream_id, &new).expect("certain jsonb text");
        let prev = next_hash(&GENESIS, b"before");
        assert_eq!(
            unplaced.link(&prev, event.position, event.stream_version),
            next_hash(&prev, &canonical(&event))
        );
        assert_ne!(
            unplaced.link(&prev, event.position + 1, event.stream_version),
            next_hash(&prev, &canonical(&event))
        );
    }

    #[test]
    fn metadata_is_written_as_its_serde_form_would_be() {
        let key_id = Uuid::parse_str("0193a7c6-8b4e-7c1d-9e2f-0a1b2c3d4e52").expect("uuid");
        for (request_id, key_id) in [
            (None, None),
            (Some("req \"1\"\n"), None),
            (None, Some(key_id)),
            (Some("é\u{1}"), Some(key_id)),
        ] {
            let metadata = Metadata {
                request_id: request_id.map(str::to_owned),
                key_id,
            };
            let (mut direct, mut through_value) = (Vec::new(), Vec::new());
            write_metadata_jsonb_text(&metadata, &mut direct);
            let value = serde_json::to_value(&metadata).expect("serializable");
            assert!(write_jsonb_text(&value, &mut through_value));
            assert_eq!(
                String::from_utf8(direct).expect("utf-8"),
                String::from_utf8(through_value).expect("utf-8"),
                "{metadata:?}"
            );
        }
    }

    #[test]
    fn occurred_at_is_written_as_chrono_and_postgresql_write_it() {
        for text in [
            "2026-01-01T00:00:00Z",
            "1999-12-31T23:59:59.999999Z",
            "0001-02-03T04:05:06.000007Z",
            "2026-06-30T12:00:00.5+02:00",
        ] {
            let at = DateTime::parse_from_rfc3339(text)
                .expect("a time")
                .with_timezone(&Utc);
            assert_eq!(
                format_occurred_at(at),
                at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                "{text}"
            );
        }
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = next_hash(&GENESIS, b"x");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex(&to_hex(&h).to_uppercase()), Some(h));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }
}
