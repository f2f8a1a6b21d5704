//! The `leads` read model: one row per lead, the shared fold of its stream
//! (`schema::resources::Lead`: LeadCreated, LeadUpdated, LeadStageChanged,
//! LeadDeleted); a deleted lead keeps its row, with `deleted_at` set.

use schema::events::stream_types;
use schema::resources::Lead;

use super::resource_table::ResourceTable;

impl ResourceTable for Lead {
    const TABLE: &'static str = "leads";
    const STREAM_TYPE: &'static str = stream_types::LEAD;
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("id", "uuid"),
        ("tenant_id", "uuid"),
        ("name", "text"),
        ("company", "text"),
        ("email", "text"),
        ("phone", "text"),
        // The stage's snake_case name, as the event carries it.
        ("stage", "text"),
        ("estimated_value", "bigint"),
        ("probability", "integer"),
        ("source", "text"),
        ("notes", "text"),
        ("version", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
        ("deleted_at", "timestamptz"),
    ];
}
