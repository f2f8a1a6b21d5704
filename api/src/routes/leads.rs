//! `POST /api/v1/leads`, and `GET`, `PATCH`, `DELETE` `/api/v1/leads/{id}`:
//! a lead's fields and rules; the work is done by `crate::resources`. (The
//! list is `crate::lists::leads`.)
//!
//! A lead's stage moves only by LeadStageChanged: a PATCH that sets another
//! stage appends it (after a LeadUpdated if other fields change too, in the
//! same append); the same stage appends nothing. Creating a lead, whatever
//! its stage, is LeadCreated alone. Any stage may follow any other.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use schema::events::{
    stream_types, EventPayload, LeadCreated, LeadDeleted, LeadStage, LeadStageChanged, LeadUpdated,
};
use schema::resources::{Lead, Meta};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::extract::AppJson;
use crate::idempotency::EventIds;
use crate::resources::docs::{
    CreateErrors, DeleteErrors, FindErrors, IdempotencyHeader, IfMatchHeader, PatchErrors,
};
use crate::resources::fields::{Fallback, MAX_NAME, MAX_NOTES};
use crate::resources::{self, Body, Field, IfMatch, Kind, Reader, Resource, Writer};
use crate::state::AppState;
use crate::tenancy::Data;
use crate::views::LeadView;

/// The stages, as `LeadStage` spells them (a test keeps the two in step).
pub const STAGES: &[&str] = &[
    "new",
    "contacted",
    "qualified",
    "meeting_booked",
    "proposal",
    "won",
    "lost",
];

/// The longest `source`.
pub const MAX_SOURCE: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/leads", post(create))
        .route("/api/v1/leads/{id}", get(find).patch(update).delete(delete))
}

impl Resource for Lead {
    const COLLECTION: &'static str = "leads";
    const STREAM_TYPE: &'static str = stream_types::LEAD;
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Line { max: MAX_NAME }),
        Field::optional("company", Kind::Line { max: MAX_NAME }),
        Field::optional("email", Kind::Email),
        Field::optional("phone", Kind::Phone),
        Field::defaulted("stage", Kind::Choice(STAGES), Fallback::Text("new")),
        Field::optional("estimated_value", Kind::Money),
        Field::optional("probability", Kind::Percent),
        Field::defaulted(
            "source",
            Kind::Line { max: MAX_SOURCE },
            Fallback::Text("api"),
        ),
        Field::optional("notes", Kind::Text { max: MAX_NOTES }),
    ];
    const TRANSITION: Option<&'static str> = Some("stage");
    type View = LeadView;

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn created(fields: Body) -> serde_json::Result<EventPayload> {
        serde_json::from_value::<LeadCreated>(fields.into()).map(Into::into)
    }

    fn updated(patch: Body) -> EventPayload {
        LeadUpdated { patch }.into()
    }

    fn deleted() -> EventPayload {
        LeadDeleted {}.into()
    }

    fn transitioned(&self, to: &Value) -> serde_json::Result<Option<EventPayload>> {
        let stage: LeadStage = serde_json::from_value(to.clone())?;
        Ok((stage != self.stage).then(|| {
            LeadStageChanged {
                previous_stage: self.stage,
                stage,
            }
            .into()
        }))
    }
}

/// The stages, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Stage {
    New,
    Contacted,
    Qualified,
    MeetingBooked,
    Proposal,
    Won,
    Lost,
}

/// A lead to create. Unknown fields are refused (400 `invalid_param`); a
/// blank string counts as null.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewLead {
    /// 1 to 200 characters.
    name: String,
    /// At most 200 characters.
    company: Option<String>,
    /// An email address's shape, at most 254 characters.
    email: Option<String>,
    /// At most 50 characters, with digits.
    phone: Option<String>,
    /// Default `new`.
    stage: Option<Stage>,
    /// In minor units (cents): an integer ≥ 0, never a fraction.
    estimated_value: Option<i64>,
    /// Percent: an integer from 0 to 100.
    probability: Option<i32>,
    /// Where the lead came from, at most 100 characters; default `api`.
    source: Option<String>,
    /// At most 10,000 characters.
    notes: Option<String>,
}

/// A JSON merge patch of a lead: absent fields are unchanged, `null` clears
/// an optional field (`name`, `stage` and `source` cannot be cleared).
/// Another `stage` appends a LeadStageChanged event.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LeadPatch {
    name: Option<String>,
    company: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    stage: Option<Stage>,
    estimated_value: Option<i64>,
    probability: Option<i32>,
    source: Option<String>,
    notes: Option<String>,
}

/// Create a lead.
#[utoipa::path(
    post,
    path = "/api/v1/leads",
    tag = "leads",
    params(IdempotencyHeader),
    request_body(content = NewLead, content_type = "application/json"),
    responses(
        (status = 201, description = "The lead created", body = Data<LeadView>,
         headers(("ETag" = String, description = "The version: \"1\""), ("Location" = String))),
        CreateErrors,
    )
)]
pub async fn create(
    Writer(caller): Writer,
    State(state): State<AppState>,
    ids: EventIds,
    AppJson(body): AppJson<Body>,
) -> ApiResult<Response> {
    resources::create::<Lead>(&state, &caller, &ids, body).await
}

/// Get a lead.
#[utoipa::path(
    get,
    path = "/api/v1/leads/{id}",
    tag = "leads",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
    ),
    responses(
        (status = 200, description = "The lead", body = Data<LeadView>,
         headers(("ETag" = String, description = "The version, for If-Match"))),
        FindErrors,
    )
)]
pub async fn find(
    Reader(caller): Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    resources::find::<Lead>(&state, &caller, &id).await
}

/// Update a lead (JSON merge patch).
#[utoipa::path(
    patch,
    path = "/api/v1/leads/{id}",
    tag = "leads",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
        IfMatchHeader,
        IdempotencyHeader,
    ),
    request_body(content = LeadPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The lead as it is now", body = Data<LeadView>,
         headers(("ETag" = String))),
        PatchErrors,
    )
)]
pub async fn update(
    Writer(caller): Writer,
    State(state): State<AppState>,
    ids: EventIds,
    if_match: IfMatch,
    Path(id): Path<String>,
    AppJson(body): AppJson<Body>,
) -> ApiResult<Response> {
    resources::update::<Lead>(&state, &caller, &ids, &id, &if_match, body).await
}

/// Delete a lead (soft: it leaves every list and lookup).
#[utoipa::path(
    delete,
    path = "/api/v1/leads/{id}",
    tag = "leads",
    params(
        ("id" = Uuid, Path, description = "404 unless a live resource of this tenant"),
        IfMatchHeader,
    ),
    responses((status = 204, description = "Deleted"), DeleteErrors)
)]
pub async fn delete(
    Writer(caller): Writer,
    State(state): State<AppState>,
    ids: EventIds,
    if_match: IfMatch,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    resources::delete::<Lead>(&state, &caller, &ids, &id, &if_match).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_list_is_lead_stage() {
        for stage in STAGES {
            let parsed: LeadStage =
                serde_json::from_value(Value::from(*stage)).expect("a LeadStage");
            assert_eq!(serde_json::to_value(parsed).expect("serialises"), *stage);
        }
        assert_eq!(STAGES.len(), 7);
    }
}
