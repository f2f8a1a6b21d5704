//! What a webhook carries: the public event types and the internal events
//! they come from (the one mapping, shared by the api that validates
//! subscriptions and the dispatcher that matches them), the body a receiver
//! gets, and the "is this address on the public internet" predicate both
//! sides use to refuse private targets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::envelope::{Decoded, RecordedEvent};
use crate::events::EventPayload;
use crate::resources::{Customer, Fold, FoldError, Lead, Order};

/// The type sent by `POST /api/v1/webhooks/{id}/test`, to that endpoint only.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// `(internal event type, public event type)`: every event a tenant can
/// subscribe to. The public names are the API's contract.
const SUBSCRIBABLE: [(&str, &str); 8] = [
    ("LeadCreated", "lead.created"),
    ("LeadUpdated", "lead.updated"),
    ("LeadStageChanged", "lead.stage_changed"),
    ("LeadDeleted", "lead.deleted"),
    ("CustomerCreated", "customer.created"),
    ("CustomerUpdated", "customer.updated"),
    ("OrderCreated", "order.created"),
    ("OrderStatusChanged", "order.status_changed"),
];

/// The public event types a subscription may name, in documentation order.
pub fn subscribable_types() -> impl Iterator<Item = &'static str> {
    SUBSCRIBABLE.iter().map(|(_, public)| *public)
}

/// Whether `public_type` is one a subscription may name (`webhook.test` is
/// not: every endpoint gets its own tests).
pub fn is_subscribable(public_type: &str) -> bool {
    subscribable_types().any(|t| t == public_type)
}

/// The public type of an internal event type, if webhooks carry it at all
/// (`WebhookTestRequested` → `webhook.test`).
pub fn public_type(event_type: &str) -> Option<&'static str> {
    if event_type == "WebhookTestRequested" {
        return Some(TEST_EVENT_TYPE);
    }
    SUBSCRIBABLE
        .iter()
        .find(|(internal, _)| *internal == event_type)
        .map(|(_, public)| *public)
}

/// A webhook body could not be built from the log.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("event {0} is not carried by webhooks")]
    NotPublic(Uuid),
    #[error("event {id} cannot be read: {reason}")]
    Unreadable { id: Uuid, reason: String },
    #[error(transparent)]
    Fold(#[from] FoldError),
    #[error("the stream of event {0} does not contain it")]
    NotInStream(Uuid),
}

/// The body sent for `event`: `{"id", "type", "created_at", "data"}`.
/// `stream` is the event's stream, oldest first, at least up to the event
/// (later events are ignored): the resource is rendered as it was right
/// after the event, so that every retry and every endpoint sends the same.
pub fn body(event: &RecordedEvent, stream: &[RecordedEvent]) -> Result<Value, BodyError> {
    let public = public_type(&event.event_type).ok_or(BodyError::NotPublic(event.id))?;
    let data = if public == TEST_EVENT_TYPE {
        json!({ "endpoint_id": event.stream_id, "message": "This is a test event from Jeanus." })
    } else {
        data(event, stream)?
    };
    Ok(envelope(event.id, public, event.occurred_at, data))
}

/// The outer shape of every webhook body.
pub fn envelope(id: Uuid, public_type: &str, created_at: DateTime<Utc>, data: Value) -> Value {
    json!({ "id": id, "type": public_type, "created_at": created_at, "data": data })
}

fn data(event: &RecordedEvent, stream: &[RecordedEvent]) -> Result<Value, BodyError> {
    let upto: Vec<(&RecordedEvent, EventPayload)> = stream
        .iter()
        .take_while(|e| e.stream_version <= event.stream_version)
        .map(|e| match e.decode() {
            Ok(Decoded::Known(p)) => Ok((e, p)),
            Ok(Decoded::Unknown) => Err(BodyError::Unreadable {
                id: e.id,
                reason: format!("unknown type {}", e.event_type),
            }),
            Err(err) => Err(BodyError::Unreadable {
                id: e.id,
                reason: err.to_string(),
            }),
        })
        .collect::<Result<_, _>>()?;
    let Some((_, payload)) = upto.last().filter(|(e, _)| e.id == event.id) else {
        return Err(BodyError::NotInStream(event.id));
    };
    let pairs = || upto.iter().map(|(e, p)| (*e, p));
    match payload {
        EventPayload::LeadStageChanged(change) => {
            let lead = Lead::from_events(pairs())?.ok_or(BodyError::NotInStream(event.id))?;
            Ok(json!({
                "lead": render(&lead),
                "previous_stage": change.previous_stage,
                "stage": change.stage,
                "version": event.stream_version,
            }))
        }
        EventPayload::LeadCreated(_)
        | EventPayload::LeadUpdated(_)
        | EventPayload::LeadDeleted(_) => {
            let lead = Lead::from_events(pairs())?.ok_or(BodyError::NotInStream(event.id))?;
            Ok(render(&lead))
        }
        EventPayload::CustomerCreated(_) | EventPayload::CustomerUpdated(_) => {
            let c = Customer::from_events(pairs())?.ok_or(BodyError::NotInStream(event.id))?;
            Ok(render(&c))
        }
        EventPayload::OrderCreated(_) | EventPayload::OrderStatusChanged(_) => {
            let o = Order::from_events(pairs())?.ok_or(BodyError::NotInStream(event.id))?;
            Ok(render(&o))
        }
        _ => Err(BodyError::NotPublic(event.id)),
    }
}

/// A resource as the api renders it: the folded state minus the bookkeeping
/// a client does not see (tenant, version, deletion).
fn render<T: Fold>(state: &T) -> Value {
    let mut value = serde_json::to_value(state).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut value {
        strip(fields);
    }
    value
}

fn strip(fields: &mut Map<String, Value>) {
    for hidden in ["tenant_id", "version", "deleted_at"] {
        fields.remove(hidden);
    }
}

/// Whether `ip` is on the public internet: not private, loopback,
/// link-local, shared (CGNAT), benchmarking, multicast, reserved or
/// otherwise special. Webhooks go only to such addresses unless
/// `JEANUS_WEBHOOK_ALLOW_PRIVATE=true`. An IPv4-mapped or -compatible IPv6
/// address is judged as the IPv4 address it carries.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_global_v4(v4),
            None => is_global_v6(v6),
        },
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0                                  // 0.0.0.0/8 "this network"
        || a == 10                                        // 10/8 private
        || (a == 100 && (64..128).contains(&b))           // 100.64/10 shared (CGNAT)
        || a == 127                                       // loopback
        || (a == 169 && b == 254)                         // link-local
        || (a == 172 && (16..32).contains(&b))            // 172.16/12 private
        || (a == 192 && b == 0 && c == 0)                 // 192.0.0/24 IETF protocol
        || (a == 192 && b == 0 && c == 2)                 // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)               // 6to4 relay anycast
        || (a == 192 && b == 168)                         // 192.168/16 private
        || (a == 198 && (b & 0xfe) == 18)                 // 198.18/15 benchmarking
        || (a == 198 && b == 51 && c == 100)              // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)               // TEST-NET-3
        || a >= 224; // 224/4 multicast, 240/4 reserved, broadcast
    !special
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let special = ip.is_unspecified()                     // ::
        || ip.is_loopback()                               // ::1
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0) // ::/96 IPv4-compatible (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b)               // 64:ff9b::/96 NAT64 (and /48 local-use)
        || s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 // 100::/64 discard
        || (s[0] == 0x2001 && s[1] < 0x0200)              // 2001::/23 IETF protocol assignments
        || (s[0] == 0x2001 && s[1] == 0x0db8)             // documentation
        || s[0] == 0x2002                                 // 6to4 (embeds any IPv4)
        || (s[0] & 0xfe00) == 0xfc00                      // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80                      // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0                      // fec0::/10 site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00; // ff00::/8 multicast
    !special
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::events::{LeadCreated, LeadStage, LeadStageChanged, WebhookTestRequested};

    #[test]
    fn every_subscribable_type_maps_from_one_internal_type() {
        let types: Vec<&str> = subscribable_types().collect();
        assert_eq!(types.len(), 8);
        assert!(is_subscribable("lead.stage_changed"));
        assert!(!is_subscribable("webhook.test"));
        assert!(!is_subscribable("lead.exploded"));
        assert_eq!(public_type("LeadStageChanged"), Some("lead.stage_changed"));
        assert_eq!(
            public_type("OrderStatusChanged"),
            Some("order.status_changed")
        );
        assert_eq!(public_type("WebhookTestRequested"), Some("webhook.test"));
        assert_eq!(public_type("KeyMinted"), None);
        assert_eq!(public_type("OrderUpdated"), None);
    }

    fn recorded(stream_id: Uuid, version: i64, payload: &EventPayload) -> RecordedEvent {
        RecordedEvent {
            position: version + 100,
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
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

    fn lead_created() -> EventPayload {
        LeadCreated {
            name: "Sarah Patel".into(),
            company: None,
            email: Some("sarah@example.com".into()),
            phone: None,
            stage: LeadStage::New,
            estimated_value: Some(1000),
            probability: None,
            source: "calendly".into(),
            notes: None,
        }
        .into()
    }

    fn stage(previous: LeadStage, stage: LeadStage) -> EventPayload {
        LeadStageChanged {
            previous_stage: previous,
            stage,
        }
        .into()
    }

    #[test]
    fn a_stage_change_carries_the_lead_as_it_was_then_and_its_version() {
        let id = Uuid::now_v7();
        let stream = vec![
            recorded(id, 1, &lead_created()),
            recorded(id, 2, &stage(LeadStage::New, LeadStage::Contacted)),
            recorded(id, 3, &stage(LeadStage::Contacted, LeadStage::Won)),
        ];
        let body = body(&stream[1], &stream).expect("a body");
        assert_eq!(body["id"], json!(stream[1].id));
        assert_eq!(body["type"], "lead.stage_changed");
        assert_eq!(body["data"]["previous_stage"], "new");
        assert_eq!(body["data"]["stage"], "contacted");
        assert_eq!(body["data"]["version"], 2);
        let lead = &body["data"]["lead"];
        assert_eq!(lead["stage"], "contacted", "later events are not folded in");
        assert_eq!(lead["id"], json!(id));
        assert_eq!(lead["name"], "Sarah Patel");
        for hidden in ["tenant_id", "version", "deleted_at"] {
            assert!(lead.get(hidden).is_none(), "{hidden} is not rendered");
        }
        assert!(lead.get("created_at").is_some());
    }

    #[test]
    fn a_lead_creation_carries_the_lead() {
        let id = Uuid::now_v7();
        let stream = vec![recorded(id, 1, &lead_created())];
        let body = body(&stream[0], &stream).expect("a body");
        assert_eq!(body["type"], "lead.created");
        assert_eq!(body["data"]["email"], "sarah@example.com");
        assert_eq!(body["created_at"], json!(stream[0].occurred_at));
    }

    #[test]
    fn a_test_event_needs_no_stream() {
        let event = recorded(Uuid::now_v7(), 1, &WebhookTestRequested {}.into());
        let body = body(&event, &[]).expect("a body");
        assert_eq!(body["type"], "webhook.test");
        assert_eq!(body["data"]["endpoint_id"], json!(event.stream_id));
    }

    fn v4(s: &str) -> bool {
        is_global(s.parse().expect("an address"))
    }

    #[test]
    fn private_and_special_ipv4_addresses_are_not_global() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.8.8",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!v4(ip), "{ip} must not be global");
        }
    }

    #[test]
    fn public_ipv4_addresses_are_global() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.254",
        ] {
            assert!(v4(ip), "{ip} is global");
        }
    }

    #[test]
    fn private_and_special_ipv6_addresses_are_not_global() {
        for ip in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "2002:a00:1::1",
        ] {
            assert!(!v4(ip), "{ip} must not be global");
        }
    }

    #[test]
    fn public_ipv6_addresses_and_mapped_public_ipv4_are_global() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
        ] {
            assert!(v4(ip), "{ip} is global");
        }
    }
}
