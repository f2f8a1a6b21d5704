//! The `customers` read model: one row per customer, the shared fold of its
//! stream (`schema::resources::Customer`); a deleted customer keeps its row,
//! with `deleted_at` set.

use schema::events::stream_types;
use schema::resources::Customer;

use super::resource_table::ResourceTable;

impl ResourceTable for Customer {
    const TABLE: &'static str = "customers";
    const STREAM_TYPE: &'static str = stream_types::CUSTOMER;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("id", "uuid"),
        ("tenant_id", "uuid"),
        ("name", "text"),
        ("email", "text"),
        ("phone", "text"),
        ("company", "text"),
        ("notes", "text"),
        ("version", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ];
}
