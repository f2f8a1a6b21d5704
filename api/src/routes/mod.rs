//! The HTTP routes: one module per resource, each with its own `router()`,
//! merged here. Layers and fallbacks are added once, in `crate::app`.

use axum::{middleware, Router};

use crate::idempotency;
use crate::state::AppState;

pub mod admin;
pub mod audit;
pub mod customers;
pub mod events;
pub mod health;
pub mod keys;
pub mod leads;
pub mod me;
pub mod orders;
pub mod products;
pub mod webhooks;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(health::router())
        // GET /api/v1/openapi.json, public.
        .merge(crate::openapi::router())
        .merge(audit::router())
        // GET /api/v1/events and /api/v1/events/head: the history.
        .merge(events::router())
        .merge(admin::router())
        .merge(keys::router())
        .merge(me::router())
        // GET /api/v1/{customers,products,leads,orders}.
        .merge(crate::lists::router())
        // Outside `resources`: no Idempotency-Key replay of a secret.
        .merge(webhooks::router())
        .merge(resources(state))
}

/// POST, and GET, PATCH, DELETE by id, of the v1 resources, with
/// `Idempotency-Key` honoured on POST and PATCH (`crate::idempotency`).
fn resources(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(customers::router())
        .merge(products::router())
        .merge(leads::router())
        .merge(orders::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::middleware,
        ))
}
