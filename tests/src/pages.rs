//! Reading the pages the list endpoints answer (`{"data": [...],
//! "pagination": {...}}`): the rows' ids, names and field names.

use std::collections::BTreeSet;

use serde_json::Value;
use uuid::Uuid;

fn rows(page: &Value) -> &[Value] {
    page["data"].as_array().expect("data is an array")
}

/// The rows' ids, in the page's order.
pub fn ids(page: &Value) -> Vec<Uuid> {
    rows(page)
        .iter()
        .map(|row| row["id"].as_str().expect("an id").parse().expect("a UUID"))
        .collect()
}

/// The rows' names.
pub fn names(page: &Value) -> BTreeSet<String> {
    rows(page)
        .iter()
        .map(|row| row["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// The field names of one row (or any JSON object).
pub fn field_names(row: &Value) -> BTreeSet<&str> {
    row.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}
