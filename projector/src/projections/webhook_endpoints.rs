//! The `webhook_endpoints` read model: one row per subscription, the shared
//! fold of its stream (`schema::webhook_endpoints::WebhookEndpoint`:
//! WebhookEndpointCreated, …Updated, WebhookSecretRotated, …Disabled,
//! …Deleted, WebhookTestRequested); a deleted endpoint keeps its row, with
//! `deleted_at` set. Secrets arrive sealed and stay sealed.

use schema::events::stream_types;
use schema::webhook_endpoints::WebhookEndpoint;

use super::resource_table::ResourceTable;

impl ResourceTable for WebhookEndpoint {
    const TABLE: &'static str = "webhook_endpoints";
    const STREAM_TYPE: &'static str = stream_types::WEBHOOK_ENDPOINT;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("id", "uuid"),
        ("tenant_id", "uuid"),
        ("url", "text"),
        ("events", "text[]"),
        ("description", "text"),
        ("enabled", "boolean"),
        ("disabled_reason", "text"),
        // [{sealed, expires_at}], as the fold holds them.
        ("secrets", "jsonb"),
        ("version", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ];
}
