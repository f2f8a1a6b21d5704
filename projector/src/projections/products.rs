//! The `products` read model: one row per product, the shared fold of its
//! stream (`schema::resources::Product`); a deleted product keeps its row,
//! with `deleted_at` set.

use schema::events::stream_types;
use schema::resources::Product;

use super::resource_table::ResourceTable;

impl ResourceTable for Product {
    const TABLE: &'static str = "products";
    const STREAM_TYPE: &'static str = stream_types::PRODUCT;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("id", "uuid"),
        ("tenant_id", "uuid"),
        ("name", "text"),
        ("sku", "text"),
        ("description", "text"),
        ("price", "bigint"),
        ("currency", "text"),
        ("active", "boolean"),
        ("version", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ];
}
