//! The HTTP routes: one module per resource, each with its own `router()`,
//! merged here. Layers and fallbacks are added once, in `crate::app`.

use axum::Router;

use crate::state::AppState;

pub mod health;

pub fn router() -> Router<AppState> {
    Router::new().merge(health::router())
}
