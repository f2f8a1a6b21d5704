//! Names on NATS: the JetStream stream that carries the event log and the
//! subjects events are published on, all under one configurable prefix so
//! that deployments and tests can share a NATS server.

use uuid::Uuid;

/// The names under one prefix (`JEANUS_NATS_PREFIX`, default `jeanus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

#[derive(Debug, thiserror::Error)]
#[error("JEANUS_NATS_PREFIX={0:?} is invalid: use 1 to 64 of a-z, 0-9, _ and -")]
pub struct InvalidPrefix(pub String);

impl Names {
    pub const DEFAULT_PREFIX: &'static str = "jeanus";

    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream holding every event: `<PREFIX>_EVENTS`. Its
    /// sequence numbers equal the events' global positions.
    pub fn stream_name(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_uppercase())
    }

    /// `<prefix>.events.<tenant_id>.<stream_type>.<event_type>`
    pub fn event_subject(&self, tenant_id: Uuid, stream_type: &str, event_type: &str) -> String {
        format!(
            "{}.events.{tenant_id}.{stream_type}.{event_type}",
            self.prefix
        )
    }

    /// One event type of one stream type, in every tenant:
    /// `<prefix>.events.*.<stream_type>.<event_type>` (a core NATS
    /// subscription; the api watches `api_key.KeyRevoked` with it).
    pub fn event_type_in_all_tenants(&self, stream_type: &str, event_type: &str) -> String {
        format!("{}.events.*.{stream_type}.{event_type}", self.prefix)
    }

    /// Every event subject: the stream's subject filter.
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// One tenant's events: the filter a per-tenant replay subscribes with.
    pub fn tenant_events(&self, tenant_id: Uuid) -> String {
        format!("{}.events.{tenant_id}.>", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let n = Names::new("t_42").expect("valid");
        let tenant = Uuid::nil();
        assert_eq!(n.stream_name(), "T_42_EVENTS");
        assert_eq!(
            n.event_subject(tenant, "lead", "LeadCreated"),
            "t_42.events.00000000-0000-0000-0000-000000000000.lead.LeadCreated"
        );
        assert_eq!(n.all_events(), "t_42.events.>");
        assert_eq!(
            n.event_type_in_all_tenants("api_key", "KeyRevoked"),
            "t_42.events.*.api_key.KeyRevoked"
        );
    }

    #[test]
    fn prefixes_that_would_break_subjects_are_refused() {
        for bad in ["", "a.b", "A", "x y", "*", ">", &"a".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
