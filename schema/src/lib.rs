//! Jeanus's shared data: the event types, the envelope they travel in, the
//! event store that appends them to PostgreSQL, the relay that publishes them
//! to NATS JetStream, and the SQL migrations every service runs against.

pub mod batch;
pub mod chain;
pub mod connect;
pub mod envelope;
pub mod events;
pub mod nats;
pub mod relay;
pub mod resources;
pub mod sealing;
pub mod store;
pub mod tx;
pub mod webhook_endpoints;
pub mod webhooks;

/// The migrations in `schema/migrations`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
