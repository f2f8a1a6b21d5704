//! The state every handler shares: the connections and the configuration.

use std::sync::Arc;

use async_nats::jetstream;
use schema::nats::Names;
use schema::store::EventStore;
use sqlx::PgPool;

use crate::audit::AuditLog;
use crate::auth::authenticate::KeyCache;
use crate::config::Config;
use crate::consistency::Projected;
use crate::ratelimit::RateLimiter;

/// What every handler shares, behind one `Arc`: axum clones the state for
/// every request (whether or not the handler takes it), so a clone must cost
/// one reference count, not one per field. Fields are reached through
/// `Deref` (`state.db`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles themselves; each is cheap to clone on its own too.
pub struct Shared {
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
    /// How far the read models are, so that a write handler can wait for
    /// its own event to be projected before answering (read your writes).
    pub projected: Projected,
    /// API key lookups, cached, with revocation tombstones from NATS.
    pub keys: KeyCache,
    /// The global per-key rate limit (group-batched decisions in Redis).
    pub limiter: RateLimiter,
    /// The audit log's group-commit writer.
    pub audit: AuditLog,
}
