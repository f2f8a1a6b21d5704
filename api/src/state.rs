//! The state every handler shares: the connections and the configuration.

use std::sync::Arc;

use async_nats::jetstream;
use schema::nats::Names;
use schema::store::EventStore;
use sqlx::PgPool;

use crate::config::Config;

/// Cheap to clone: every field is a handle onto something shared.
#[derive(Clone)]
pub struct AppState {
    /// Reads (and the read models' queries). Writes of events go through
    /// `store`, never straight to the `events` table.
    pub db: PgPool,
    /// This process's group-commit appender.
    pub store: EventStore,
    /// The NATS connection; `/readyz` watches its state.
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    /// Subjects and the stream name under `JEANUS_NATS_PREFIX`.
    pub names: Names,
    pub config: Arc<Config>,
}
