//! Webhook subscriptions' write side and lookups: create (with a signing
//! secret, shown once), update, delete, rotate the secret, request a test
//! delivery; and the read model queries behind the GETs. The HTTP handlers
//! are in `routes::webhooks`; the delivery log in [`deliveries`].
//!
//! As for the resources (`crate::resources`), every change is an event,
//! decided on the folded stream (`schema::webhook_endpoints`) and appended
//! with the version read, and the answer waits until the read model holds it.
//!
//! **Secrets**: `whsec_` + standard base64 of 32 random bytes, returned in
//! the create and rotate responses only. What is stored (event, read model)
//! is sealed under `JEANUS_SECRET_KEY` (`schema::sealing`). For the same
//! reason these routes are not under the `Idempotency-Key` middleware,
//! which keeps response bodies in plaintext to replay them.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chrono::{SubsecRound, Utc};
use rand::RngCore;
use schema::envelope::NewEvent;
use schema::events::{
    stream_types, EventPayload, WebhookEndpointCreated, WebhookEndpointDeleted,
    WebhookEndpointUpdated, WebhookSecretRotated, WebhookTestRequested,
};
use schema::resources::Fold;
use schema::store::{self, AppendError, ExpectedVersion, StreamRef};
use schema::webhook_endpoints::WebhookEndpoint;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::resources::commands::{recorded, ATTEMPTS};
use crate::resources::load::fold_events;
use crate::resources::{path_id, Body, IfMatch};
use crate::state::AppState;
use crate::tenancy::append_failed;

pub mod deliveries;
pub mod validate;
pub mod views;

use crate::lists::params::invalid;
pub use views::{CreatedWebhook, RotatedSecret, TestRequested, WebhookView};

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// The prefix of every signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// A fresh signing secret: `whsec_` + standard base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

fn seal(state: &AppState, secret: &str) -> ApiResult<String> {
    let key = state.config.sealing_key()?;
    Ok(schema::sealing::seal(key, secret))
}

/// `POST /api/v1/webhooks`: `{url, events, description?}` or Zapier's
/// REST Hooks `{target_url, event}`.
pub async fn create(state: &AppState, caller: &Principal, body: Body) -> ApiResult<CreatedWebhook> {
    let zapier = body.contains_key("target_url") || body.contains_key("event");
    let (url_field, events_field, known): (&str, &str, &[&str]) = if zapier {
        ("target_url", "event", &["target_url", "event"])
    } else {
        ("url", "events", &["url", "events", "description"])
    };
    refuse_unknown(&body, known)?;
    let url = body
        .get(url_field)
        .ok_or_else(|| ApiError::MissingField(url_field.to_owned()))?;
    let url = validate::url_shape(url_field, url)?;
    let events = body
        .get(events_field)
        .ok_or_else(|| ApiError::MissingField(events_field.to_owned()))?;
    let events = validate::events(events_field, events)?;
    let description = match body.get("description") {
        Some(value) => validate::description(value)?,
        None => None,
    };
    validate::url_target(url_field, &url, state.config.webhook_allow_private).await?;

    let secret = new_secret();
    let created = WebhookEndpointCreated {
        url: url.to_string(),
        events,
        description,
        secret_sealed: seal(state, &secret)?,
    };
    let id = Uuid::now_v7();
    let endpoint = append(
        state,
        caller,
        id,
        None,
        vec![created.into()],
        &[Uuid::now_v7()],
    )
    .await?
    .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a new stream already exists")))?;
    Ok(CreatedWebhook {
        id,
        url: endpoint.url,
        events: endpoint.events,
        description: endpoint.description,
        enabled: endpoint.enabled,
        secret,
        created_at: endpoint.meta.created_at,
    })
}

/// `PATCH /api/v1/webhooks/{id}`: `url`, `events`, `enabled`,
/// `description`, as a merge patch. A patch that changes nothing appends
/// nothing.
pub async fn update(
    state: &AppState,
    caller: &Principal,
    id: &str,
    if_match: &IfMatch,
    body: Body,
) -> ApiResult<WebhookEndpoint> {
    let id = path_id(id)?;
    refuse_unknown(&body, &["url", "events", "enabled", "description"])?;
    let mut patch = Body::new();
    if let Some(value) = body.get("url") {
        let url = validate::url_shape("url", value)?;
        validate::url_target("url", &url, state.config.webhook_allow_private).await?;
        patch.insert("url".into(), Value::String(url.to_string()));
    }
    if let Some(value) = body.get("events") {
        patch.insert("events".into(), validate::events("events", value)?.into());
    }
    if let Some(value) = body.get("enabled") {
        let enabled = value
            .as_bool()
            .ok_or_else(|| invalid("enabled", "must be true or false"))?;
        patch.insert("enabled".into(), Value::Bool(enabled));
    }
    if let Some(value) = body.get("description") {
        patch.insert("description".into(), validate::description(value)?.into());
    }
    change(state, caller, id, if_match, |current| {
        let now =
            serde_json::to_value(current).map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
        let mut changed = patch.clone();
        changed.retain(|field, value| now.get(field) != Some(&*value));
        Ok(if changed.is_empty() {
            vec![]
        } else {
            vec![WebhookEndpointUpdated { patch: changed }.into()]
        })
    })
    .await
    .map(|(endpoint, _)| endpoint)
}

/// `DELETE /api/v1/webhooks/{id}`: unsubscribe. Deleting a deleted
/// endpoint succeeds too (Zapier unsubscribes at will), but another
/// tenant's, or none, is 404.
pub async fn delete(
    state: &AppState,
    caller: &Principal,
    id: &str,
    if_match: &IfMatch,
) -> ApiResult<()> {
    let id = path_id(id)?;
    let deleted = change(state, caller, id, if_match, |_| {
        Ok(vec![WebhookEndpointDeleted {}.into()])
    })
    .await;
    match deleted {
        Ok(_) => Ok(()),
        // Not live: deleted already (204 again), or not the tenant's (404).
        Err(ApiError::NotFound) if load(&state.db, caller.tenant_id, id).await?.is_some() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `POST /api/v1/webhooks/{id}/rotate-secret`: a new secret; the current
/// one keeps signing beside it for [`ROTATION_OVERLAP`].
pub async fn rotate(state: &AppState, caller: &Principal, id: &str) -> ApiResult<RotatedSecret> {
    let id = path_id(id)?;
    let secret = new_secret();
    let sealed = seal(state, &secret)?;
    let expires = Utc::now().trunc_subsecs(6) + ROTATION_OVERLAP;
    change(state, caller, id, &IfMatch::Absent, |_| {
        Ok(vec![WebhookSecretRotated {
            secret_sealed: sealed.clone(),
            previous_expires_at: expires,
        }
        .into()])
    })
    .await?;
    Ok(RotatedSecret {
        id,
        secret,
        previous_secret_expires_at: expires,
    })
}

/// `POST /api/v1/webhooks/{id}/test`: appends a `WebhookTestRequested`,
/// which the dispatcher delivers as `webhook.test` to this endpoint only.
pub async fn request_test(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> ApiResult<TestRequested> {
    let id = path_id(id)?;
    let (_, event_ids) = change(state, caller, id, &IfMatch::Absent, |_| {
        Ok(vec![WebhookTestRequested {}.into()])
    })
    .await?;
    Ok(TestRequested {
        event_id: event_ids.first().copied().unwrap_or_default(),
        event_type: schema::webhooks::TEST_EVENT_TYPE,
    })
}

/// The tenant's live endpoint `id` from the read model, once it holds every
/// write of the tenant acknowledged so far.
pub async fn find(state: &AppState, caller: &Principal, id: &str) -> ApiResult<WebhookEndpoint> {
    let id = path_id(id)?;
    state
        .projected
        .catch_up_tenant(&state.db, caller.tenant_id)
        .await?;
    projected(&state.db, caller.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// The endpoint as the read model holds it, if it is the tenant's and not
/// deleted.
pub async fn projected(
    db: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> ApiResult<Option<WebhookEndpoint>> {
    let row: Option<sqlx::types::Json<WebhookEndpoint>> = sqlx::query_scalar(
        "select to_jsonb(w) from webhook_endpoints w
          where id = $1 and tenant_id = $2 and deleted_at is null",
    )
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|sqlx::types::Json(e)| e))
}

/// 400 `invalid_param` for a field the operation does not take.
fn refuse_unknown(body: &Body, known: &[&str]) -> ApiResult<()> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(field) => Err(invalid(
            field,
            format!("unknown field; use {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Loads the live endpoint, lets `decide` turn it into events (checking
/// `if_match`), and appends them with the version read; on a lost race,
/// tries again on the new state (412 instead when `If-Match` pinned a
/// version). Gives the new state and the ids of the events appended.
async fn change(
    state: &AppState,
    caller: &Principal,
    id: Uuid,
    if_match: &IfMatch,
    mut decide: impl FnMut(&WebhookEndpoint) -> ApiResult<Vec<EventPayload>>,
) -> ApiResult<(WebhookEndpoint, Vec<Uuid>)> {
    for _ in 0..ATTEMPTS {
        let current = load(&state.db, caller.tenant_id, id)
            .await?
            .filter(|e| e.meta.deleted_at.is_none())
            .ok_or(ApiError::NotFound)?;
        if_match.check(current.meta.version)?;
        let events = decide(&current)?;
        if events.is_empty() {
            return Ok((current, vec![]));
        }
        let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
        match append(state, caller, id, Some(current), events, &ids).await? {
            Some(updated) => return Ok((updated, ids)),
            None if if_match.pins_version() => return Err(ApiError::PreconditionFailed),
            None => continue,
        }
    }
    Err(ApiError::Conflict)
}

/// The endpoint `id` of `tenant_id` as its events say, deleted or not.
/// `None` for no such stream, or another kind, or another tenant's.
pub async fn load(db: &PgPool, tenant_id: Uuid, id: Uuid) -> ApiResult<Option<WebhookEndpoint>> {
    let events = store::read_stream(db, id).await?;
    match events.first() {
        Some(first)
            if first.tenant_id == tenant_id
                && first.stream_type == stream_types::WEBHOOK_ENDPOINT => {}
        _ => return Ok(None),
    }
    Ok(fold_events::<WebhookEndpoint>(&events)?.map(|folded| folded.state))
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::Internal(anyhow::Error::new(e).context("failed to fold a webhook endpoint"))
}

/// Appends `payloads` (with event ids `ids`) to endpoint `id`'s stream,
/// expecting `current`'s version (no stream when `None`), waits until the
/// read model holds them, and gives the new state. `None`: the stream moved
/// since `current` was read; nothing was written.
async fn append(
    state: &AppState,
    caller: &Principal,
    id: Uuid,
    current: Option<WebhookEndpoint>,
    payloads: Vec<EventPayload>,
    ids: &[Uuid],
) -> ApiResult<Option<WebhookEndpoint>> {
    let stream = StreamRef {
        tenant_id: caller.tenant_id,
        stream_type: stream_types::WEBHOOK_ENDPOINT,
        stream_id: id,
    };
    let expected = match &current {
        Some(c) => ExpectedVersion::Exact(c.meta.version),
        None => ExpectedVersion::NoStream,
    };
    // PostgreSQL's precision, so that the answer equals the read model.
    let occurred_at = Utc::now().trunc_subsecs(6);
    let metadata = caller.metadata();
    let events: Vec<NewEvent> = payloads
        .iter()
        .zip(ids)
        .map(|(payload, &id)| NewEvent {
            id,
            occurred_at,
            ..NewEvent::new(payload, metadata.clone())
        })
        .collect();
    let appended = match state.store.append(stream, expected, events.clone()).await {
        Ok(appended) => appended,
        Err(AppendError::Conflict { .. }) => return Ok(None),
        Err(e) => return Err(append_failed(e)),
    };
    let Some(positions) = appended.positions else {
        // Fresh ids are never duplicates.
        return Err(ApiError::Internal(anyhow::anyhow!(
            "an append of new events wrote nothing"
        )));
    };
    let mut endpoint = current;
    for (recorded, payload) in
        recorded(stream, &events, &positions, appended.version).zip(&payloads)
    {
        endpoint = Some(WebhookEndpoint::fold(endpoint, &recorded, payload).map_err(internal)?);
    }
    state.projected.settle(Some(*positions.end())).await;
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_whsec_and_32_random_bytes() {
        let secret = new_secret();
        let bytes = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("prefixed"))
            .expect("base64");
        assert_eq!(bytes.len(), 32);
        assert_ne!(new_secret(), secret);
    }
}
