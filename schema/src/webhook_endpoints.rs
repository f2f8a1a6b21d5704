//! A webhook endpoint's state as folded from its events — one fold, shared
//! by the api (to validate a subscription change against the stream) and the
//! projector (the `webhook_endpoints` read model the dispatcher matches
//! events against), so that the two never disagree on what an event means.
//!
//! Signing secrets are only ever held sealed (`crate::sealing`): `secrets`
//! is the list the dispatcher signs with, the current one first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::envelope::RecordedEvent;
use crate::events::EventPayload;
use crate::resources::{Fold, FoldError, Meta};

/// One signing secret, sealed, and until when it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// `crate::sealing::seal` of the `whsec_…` secret.
    pub sealed: String,
    /// `None` for the current secret; a rotated-out secret keeps signing
    /// beside the new one until then.
    pub expires_at: Option<DateTime<Utc>>,
}

impl SealedSecret {
    /// Whether it still signs at `at`.
    pub fn live_at(&self, at: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|expires| expires > at)
    }
}

/// The subscription's state; the read model's row has a column per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    #[serde(flatten)]
    pub meta: Meta,
    pub url: String,
    /// Public event types (`lead.stage_changed`, …).
    pub events: Vec<String>,
    pub description: Option<String>,
    /// False after a PATCH `enabled: false` or a `WebhookEndpointDisabled`
    /// (410 Gone, or failing for days); nothing is delivered meanwhile.
    pub enabled: bool,
    /// Why the dispatcher disabled it; cleared when it is enabled again.
    pub disabled_reason: Option<String>,
    /// The current secret first, then those rotated out but still live.
    pub secrets: Vec<SealedSecret>,
}

impl WebhookEndpoint {
    /// The secrets that sign at `at`, current first.
    pub fn live_secrets(&self, at: DateTime<Utc>) -> impl Iterator<Item = &SealedSecret> {
        self.secrets.iter().filter(move |s| s.live_at(at))
    }
}

impl Fold for WebhookEndpoint {
    const NAME: &'static str = "webhook endpoint";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn fold(
        state: Option<Self>,
        event: &RecordedEvent,
        payload: &EventPayload,
    ) -> Result<Self, FoldError> {
        let live = |state: Option<Self>| match state {
            Some(s) if s.meta.deleted_at.is_none() => Ok(s),
            _ => Err(does_not_apply(event)),
        };
        let mut s = match payload {
            EventPayload::WebhookEndpointCreated(c) if state.is_none() => {
                return Ok(Self {
                    meta: Meta {
                        id: event.stream_id,
                        tenant_id: event.tenant_id,
                        version: event.stream_version,
                        created_at: event.occurred_at,
                        updated_at: event.occurred_at,
                        deleted_at: None,
                    },
                    url: c.url.clone(),
                    events: c.events.clone(),
                    description: c.description.clone(),
                    enabled: true,
                    disabled_reason: None,
                    secrets: vec![SealedSecret {
                        sealed: c.secret_sealed.clone(),
                        expires_at: None,
                    }],
                })
            }
            EventPayload::WebhookEndpointUpdated(u) => {
                let mut s = live(state)?;
                apply_patch(&mut s, &u.patch, event)?;
                s
            }
            EventPayload::WebhookSecretRotated(r) => {
                let mut s = live(state)?;
                let mut secrets = vec![SealedSecret {
                    sealed: r.secret_sealed.clone(),
                    expires_at: None,
                }];
                // The current secret signs on until `previous_expires_at`;
                // those rotated out before keep their own expiry, and are
                // dropped once expired (at the event's time, so a replay
                // folds the same).
                for old in s.secrets.drain(..) {
                    let old = SealedSecret {
                        expires_at: Some(old.expires_at.unwrap_or(r.previous_expires_at)),
                        ..old
                    };
                    if old.live_at(event.occurred_at) {
                        secrets.push(old);
                    }
                }
                s.secrets = secrets;
                s
            }
            // The dispatcher may disable an endpoint that a client deletes
            // at the same moment: on a deleted endpoint it changes nothing.
            EventPayload::WebhookEndpointDisabled(d) => match state {
                Some(mut s) if s.meta.deleted_at.is_some() => {
                    s.meta.version = event.stream_version;
                    return Ok(s);
                }
                state => {
                    let mut s = live(state)?;
                    s.enabled = false;
                    s.disabled_reason = Some(d.reason.clone());
                    s
                }
            },
            EventPayload::WebhookEndpointDeleted(_) => {
                let mut s = live(state)?;
                s.meta.deleted_at = Some(event.occurred_at);
                s
            }
            // A request to deliver, not a change of the subscription: only
            // the stream version moves.
            EventPayload::WebhookTestRequested(_) => {
                let mut s = live(state)?;
                s.meta.version = event.stream_version;
                return Ok(s);
            }
            _ => return Err(does_not_apply(event)),
        };
        s.meta.version = event.stream_version;
        s.meta.updated_at = event.occurred_at;
        Ok(s)
    }
}

/// `url`, `events`, `enabled`, `description` from a merge patch; enabling
/// clears the dispatcher's reason for disabling.
fn apply_patch(
    s: &mut WebhookEndpoint,
    patch: &Map<String, Value>,
    event: &RecordedEvent,
) -> Result<(), FoldError> {
    let bad = |source| FoldError::Patch {
        position: event.position,
        source,
    };
    for (field, value) in patch {
        match field.as_str() {
            "url" => s.url = serde_json::from_value(value.clone()).map_err(bad)?,
            "events" => s.events = serde_json::from_value(value.clone()).map_err(bad)?,
            "description" => s.description = serde_json::from_value(value.clone()).map_err(bad)?,
            "enabled" => {
                s.enabled = serde_json::from_value(value.clone()).map_err(bad)?;
                if s.enabled {
                    s.disabled_reason = None;
                }
            }
            // Fields a later version may add: ignored by this one.
            _ => {}
        }
    }
    Ok(())
}

fn does_not_apply(event: &RecordedEvent) -> FoldError {
    FoldError::DoesNotApply {
        position: event.position,
        event_type: event.event_type.clone(),
        state: WebhookEndpoint::NAME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::events::{
        WebhookEndpointCreated, WebhookEndpointDeleted, WebhookEndpointDisabled,
        WebhookEndpointUpdated, WebhookSecretRotated, WebhookTestRequested,
    };
    use chrono::Duration;
    use serde_json::json;
    use uuid::Uuid;

    fn fold_all(
        payloads: &[(DateTime<Utc>, EventPayload)],
    ) -> Result<Option<WebhookEndpoint>, FoldError> {
        let id = Uuid::now_v7();
        let events: Vec<RecordedEvent> = payloads
            .iter()
            .enumerate()
            .map(|(i, (at, p))| RecordedEvent {
                position: i as i64 + 1,
                id: Uuid::now_v7(),
                tenant_id: Uuid::nil(),
                stream_type: p.stream_type().into(),
                stream_id: id,
                stream_version: i as i64 + 1,
                event_type: p.event_type().into(),
                schema_version: p.schema_version(),
                occurred_at: *at,
                metadata: Metadata::default(),
                data: p.to_data(),
            })
            .collect();
        WebhookEndpoint::from_events(events.iter().zip(payloads.iter().map(|(_, p)| p)))
    }

    fn created() -> EventPayload {
        WebhookEndpointCreated {
            url: "https://example.com/hook".into(),
            events: vec!["lead.created".into()],
            description: None,
            secret_sealed: "v1.first".into(),
        }
        .into()
    }

    fn rotated(sealed: &str, expires: DateTime<Utc>) -> EventPayload {
        WebhookSecretRotated {
            secret_sealed: sealed.into(),
            previous_expires_at: expires,
        }
        .into()
    }

    #[test]
    fn a_patch_changes_the_fields_and_enabling_clears_the_reason() {
        let t = Utc::now();
        let patch = |v: Value| -> EventPayload {
            WebhookEndpointUpdated {
                patch: v.as_object().cloned().unwrap_or_default(),
            }
            .into()
        };
        let s = fold_all(&[
            (t, created()),
            (
                t,
                WebhookEndpointDisabled {
                    reason: "410 Gone".into(),
                }
                .into(),
            ),
            (
                t,
                patch(json!({"events": ["lead.stage_changed"], "description": "crm"})),
            ),
        ])
        .expect("folds")
        .expect("exists");
        assert!(!s.enabled);
        assert_eq!(s.disabled_reason.as_deref(), Some("410 Gone"));
        assert_eq!(s.events, ["lead.stage_changed"]);
        assert_eq!(s.description.as_deref(), Some("crm"));
        assert_eq!(s.meta.version, 3);

        let s = fold_all(&[
            (t, created()),
            (t, WebhookEndpointDisabled { reason: "x".into() }.into()),
            (t, patch(json!({"enabled": true, "description": null}))),
        ])
        .expect("folds")
        .expect("exists");
        assert!(s.enabled);
        assert_eq!(s.disabled_reason, None);
        assert_eq!(s.description, None);
    }

    #[test]
    fn a_rotation_keeps_the_previous_secret_until_it_expires() {
        let t = Utc::now();
        let s = fold_all(&[
            (t, created()),
            (t, rotated("v1.second", t + Duration::hours(24))),
        ])
        .expect("folds")
        .expect("exists");
        let live: Vec<&str> = s.live_secrets(t).map(|s| s.sealed.as_str()).collect();
        assert_eq!(live, ["v1.second", "v1.first"]);
        let later: Vec<&str> = s
            .live_secrets(t + Duration::hours(25))
            .map(|s| s.sealed.as_str())
            .collect();
        assert_eq!(later, ["v1.second"]);

        // A third rotation two days later drops the long-expired first one.
        let s = fold_all(&[
            (t, created()),
            (t, rotated("v1.second", t + Duration::hours(24))),
            (
                t + Duration::hours(48),
                rotated("v1.third", t + Duration::hours(72)),
            ),
        ])
        .expect("folds")
        .expect("exists");
        let all: Vec<&str> = s.secrets.iter().map(|s| s.sealed.as_str()).collect();
        assert_eq!(all, ["v1.third", "v1.second"]);
    }

    #[test]
    fn nothing_but_a_late_disable_applies_after_a_delete() {
        let t = Utc::now();
        let deleted = [(t, created()), (t, WebhookEndpointDeleted {}.into())];
        let s = fold_all(&deleted).expect("folds").expect("exists");
        assert!(s.meta.deleted_at.is_some());

        let mut late = deleted.to_vec();
        late.push((t, WebhookEndpointDisabled { reason: "x".into() }.into()));
        let s = fold_all(&late).expect("folds").expect("exists");
        assert_eq!(s.meta.version, 3);
        assert!(s.enabled, "a deleted endpoint is left as it was");

        for after in [
            WebhookTestRequested {}.into(),
            WebhookEndpointDeleted {}.into(),
            rotated("v1.x", t),
        ] {
            let mut events = deleted.to_vec();
            events.push((t, after));
            assert!(fold_all(&events).is_err());
        }
    }

    #[test]
    fn a_test_request_moves_only_the_version() {
        let t = Utc::now();
        let s = fold_all(&[
            (t, created()),
            (t + Duration::seconds(5), WebhookTestRequested {}.into()),
        ])
        .expect("folds")
        .expect("exists");
        assert_eq!(s.meta.version, 2);
        assert_eq!(s.meta.updated_at, t);
    }
}
