//! The HTTP routes: one module per resource, each with its own `router()`,
//! merged here. Layers and fallbacks are added once, in `crate::app`.

use axum::routing::get;
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
mod resource;
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
        // Outside `resources`: no Idempotency-Key replay of a secret.
        .merge(webhooks::router())
        .merge(resources(state))
}

/// The v1 resources: list and create, and get, patch and delete by id, with
/// `Idempotency-Key` honoured on POST and PATCH (`crate::idempotency`). The
/// handlers are generated per resource by `resource::resource_handlers!`.
fn resources(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/customers",
            get(customers::list).post(customers::create),
        )
        .route(
            "/api/v1/customers/{id}",
            get(customers::find)
                .patch(customers::update)
                .delete(customers::delete),
        )
        .route(
            "/api/v1/products",
            get(products::list).post(products::create),
        )
        .route(
            "/api/v1/products/{id}",
            get(products::find)
                .patch(products::update)
                .delete(products::delete),
        )
        .route("/api/v1/leads", get(leads::list).post(leads::create))
        .route(
            "/api/v1/leads/{id}",
            get(leads::find).patch(leads::update).delete(leads::delete),
        )
        .route("/api/v1/orders", get(orders::list).post(orders::create))
        .route(
            "/api/v1/orders/{id}",
            get(orders::find)
                .patch(orders::update)
                .delete(orders::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::middleware,
        ))
}
