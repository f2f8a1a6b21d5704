//! What the webhook endpoints answer: a subscription as clients see it
//! (never a secret), and the create, rotate and test answers (the secret
//! shown once).

use chrono::{DateTime, Utc};
use schema::webhook_endpoints::WebhookEndpoint;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A subscription as clients see it: never a secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    /// Public event types, e.g. `lead.stage_changed`.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// False while nothing is delivered: disabled by a PATCH, or by the
    /// dispatcher (see `disabled_reason`); a PATCH `enabled: true` resumes.
    pub enabled: bool,
    /// Why the dispatcher disabled the endpoint (410 Gone, failing for days).
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookEndpoint> for WebhookView {
    fn from(e: WebhookEndpoint) -> Self {
        Self {
            id: e.meta.id,
            url: e.url,
            events: e.events,
            description: e.description,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.meta.created_at,
            updated_at: e.meta.updated_at,
        }
    }
}

/// The answer to a create: the subscription with its secret, shown here
/// only.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// `whsec_…`: verify each delivery's `webhook-signature` with it
    /// (Standard Webhooks). Shown in this response only; store it now.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// The answer to a rotation: the new secret, shown here only.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    pub id: Uuid,
    /// The new `whsec_…` secret; every delivery is signed with it from now.
    pub secret: String,
    /// Until then deliveries carry a second signature, with the previous
    /// secret, so receivers can switch over without losing any.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// The answer to a test request: the event that will be delivered.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestRequested {
    /// The delivery's `webhook-id` and the body's `id`.
    pub event_id: Uuid,
    /// Always `webhook.test`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
}
