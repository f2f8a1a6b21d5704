//! The `orders` read model: one row per order, the shared fold of its stream
//! (`schema::resources::Order`: OrderCreated, OrderUpdated,
//! OrderStatusChanged, OrderDeleted); a deleted order keeps its row, with
//! `deleted_at` set.

use schema::events::stream_types;
use schema::resources::Order;

use super::resource_table::ResourceTable;

impl ResourceTable for Order {
    const TABLE: &'static str = "orders";
    const STREAM_TYPE: &'static str = stream_types::ORDER;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("id", "uuid"),
        ("tenant_id", "uuid"),
        ("customer_id", "uuid"),
        // The status's snake_case name, as the event carries it.
        ("status", "text"),
        ("currency", "text"),
        // [{product_id, quantity, unit_price}], as the event carries it.
        ("items", "jsonb"),
        ("total", "bigint"),
        ("notes", "text"),
        ("version", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ];
}
