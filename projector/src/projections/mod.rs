//! The read models the projector builds from the event log: one module per
//! read model, and [`Projection`], the closed set of them that the consumer
//! applies every batch of events to.
//!
//! A projection applies a batch of events, in position order, inside the
//! consumer's transaction: it never commits, never talks to the network, and
//! never reads the clock (times come from the events), so applying the log
//! from the start always rebuilds the same rows. Exactly-once application is
//! the consumer's job, so a projection may (and should) fail on what would be
//! a second application, such as a duplicate primary key.
//!
//! Two shapes: `tenants` and `api_keys` apply one event at a time (an
//! `apply` per event); the four resource read models (`customers`,
//! `products`, `leads`, `orders`) and `webhook_endpoints` work per batch through
//! [`resource_table`]: one query loads the rows the batch touches, the
//! shared fold runs in memory, one upsert writes them back.
//!
//! To add a read model: a table in a new migration in `schema/migrations`, a
//! module here, and a variant in [`Projection`] (its `name` in `name`, its
//! batch step in `apply`, the variant in `ALL`). The consumer starts the new
//! projection from the beginning of the log on its own.

use anyhow::Context as _;
use schema::envelope::RecordedEvent;
use schema::events::{stream_types, EventPayload};
use schema::resources::{Customer, Lead, Order, Product};
use schema::webhook_endpoints::WebhookEndpoint;
use sqlx::PgConnection;

pub mod api_keys;
pub mod customers;
pub mod leads;
pub mod orders;
pub mod products;
pub mod resource_table;
pub mod tenants;
pub mod webhook_endpoints;

pub use resource_table::NewRows;
use resource_table::{apply_batch, ResourceTable};

/// One read model. An enum rather than a trait object: the set is closed and
/// known at compile time, and a `match` needs neither boxing nor `async_trait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    Tenants,
    ApiKeys,
    Customers,
    Products,
    Leads,
    Orders,
    WebhookEndpoints,
}

impl Projection {
    /// Every projection this build maintains.
    pub const ALL: &'static [Projection] = &[
        Projection::Tenants,
        Projection::ApiKeys,
        Projection::Customers,
        Projection::Products,
        Projection::Leads,
        Projection::Orders,
        Projection::WebhookEndpoints,
    ];

    /// The name under which the projection's checkpoint is stored in
    /// `projector_checkpoint`. Never change it once shipped: a new name
    /// means a new, empty checkpoint, and a replay from the first event
    /// onto rows that are already there.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tenants => "tenants",
            Self::ApiKeys => "api_keys",
            Self::Customers => "customers",
            Self::Products => "products",
            Self::Leads => "leads",
            Self::Orders => "orders",
            Self::WebhookEndpoints => "webhook_endpoints",
        }
    }

    /// The read model's table. The same word as [`Projection::name`] today,
    /// but a different thing: the rebuild fills `<table>_rebuild` and
    /// renames it to this.
    pub fn table(self) -> &'static str {
        self.name()
    }

    /// The stream types whose events this projection reads; it ignores every
    /// other event (the rebuild reads only these from the log).
    pub fn stream_types(self) -> &'static [&'static str] {
        match self {
            Self::Tenants => &[stream_types::TENANT],
            Self::ApiKeys => &[stream_types::API_KEY],
            Self::Customers => &[Customer::STREAM_TYPE],
            Self::Products => &[Product::STREAM_TYPE],
            Self::Leads => &[Lead::STREAM_TYPE],
            Self::Orders => &[Order::STREAM_TYPE],
            Self::WebhookEndpoints => &[WebhookEndpoint::STREAM_TYPE],
        }
    }

    /// The projection called `name`.
    pub fn from_name(name: &str) -> Result<Self, UnknownProjection> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.name() == name)
            .ok_or_else(|| UnknownProjection(name.to_owned()))
    }

    /// Apply `events` (consecutive, in position order, every one of a type
    /// this build knows and none applied to this projection yet) within the
    /// consumer's transaction. Events a projection does not care about are
    /// no-ops.
    pub async fn apply(
        self,
        conn: &mut PgConnection,
        events: &[(RecordedEvent, EventPayload)],
    ) -> anyhow::Result<()> {
        self.apply_into(conn, self.table(), events, NewRows::Upsert)
            .await
    }

    /// [`Projection::apply`] into `table`, a table shaped like
    /// [`Projection::table`] (the rebuild's fresh copy): the live path and
    /// the rebuild run the same code. The rebuild's load hands events
    /// grouped by stream (each stream's in order) rather than in position
    /// order: every read model's row depends on its own stream's events
    /// only. A projection whose rows combine several streams would break
    /// that rule, and must then be loaded in position order. `new_rows`
    /// says how the resource tables write the rows of streams that begin
    /// in `events` (the rebuild copies them: [`NewRows::Copy`]).
    pub async fn apply_into(
        self,
        conn: &mut PgConnection,
        table: &str,
        events: &[(RecordedEvent, EventPayload)],
        new_rows: NewRows,
    ) -> anyhow::Result<()> {
        match self {
            Self::Tenants => {
                for (event, payload) in events {
                    tenants::apply(conn, table, event, payload)
                        .await
                        .with_context(|| format!("at position {}", event.position))?;
                }
                Ok(())
            }
            Self::ApiKeys => {
                for (event, payload) in events {
                    api_keys::apply(conn, table, event, payload)
                        .await
                        .with_context(|| format!("at position {}", event.position))?;
                }
                Ok(())
            }
            Self::Customers => apply_batch::<Customer>(conn, table, events, new_rows).await,
            Self::Products => apply_batch::<Product>(conn, table, events, new_rows).await,
            Self::Leads => apply_batch::<Lead>(conn, table, events, new_rows).await,
            Self::Orders => apply_batch::<Order>(conn, table, events, new_rows).await,
            Self::WebhookEndpoints => {
                apply_batch::<WebhookEndpoint>(conn, table, events, new_rows).await
            }
        }
    }
}

impl std::str::FromStr for Projection {
    type Err = UnknownProjection;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::from_name(name)
    }
}

/// A name that is no projection's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown projection {0:?}: use one of {names}", names = Projection::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownProjection(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_is_found_by_its_name_and_no_other() {
        for &p in Projection::ALL {
            assert_eq!(Projection::from_name(p.name()), Ok(p));
        }
        let err = Projection::from_name("lead").expect_err("not a projection");
        let message = err.to_string();
        assert!(message.contains("\"lead\""), "{message}");
        assert!(
            message.contains("tenants, api_keys, customers"),
            "{message}"
        );
    }
}
