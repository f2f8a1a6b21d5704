//! The fields of a resource's request body and their rules: each resource
//! lists its [`Field`]s, and [`for_create`] / [`for_patch`] check a JSON body
//! against them one field at a time, into normalised JSON values (the shape
//! the events store), refusing with `missing_field` or `invalid_param`
//! naming the field.
//!
//! Rules every resource shares:
//! - An unknown field is refused (a typo must not be dropped silently);
//!   `id`, `created_at` and `updated_at` are refused as read-only.
//! - `null` means "no value": an optional field becomes null; on a create a
//!   defaulted field takes its default; a required field refuses it, and so
//!   does a defaulted one in a PATCH (there is nothing to clear it to).
//! - Text is kept as given, but a blank string (empty or only whitespace) is
//!   taken as `null`: Zapier and form tools send `""` for an unmapped field.
//! - Money is an integer count of the currency's minor unit (cents): a
//!   fraction, a negative number or a string is refused.

mod kinds;

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

pub use kinds::{money, Kind};

pub const MAX_NAME: usize = 200;
pub const MAX_EMAIL: usize = 254;
pub const MAX_PHONE: usize = 50;
pub const MAX_NOTES: usize = 10_000;
/// Most items one order holds.
pub const MAX_ITEMS: usize = 500;

/// Fields no request may set: the server assigns them.
const READ_ONLY: &[&str] = &["id", "created_at", "updated_at"];

/// One field of a resource's body.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub presence: Presence,
}

#[derive(Debug)]
pub enum Presence {
    /// Must be given on create; never null.
    Required,
    /// May be absent or null.
    Optional,
    /// Takes this value when absent or null on create; never null.
    Defaulted(Fallback),
}

/// A default value (`serde_json::Value` cannot be built in a `const`).
#[derive(Debug)]
pub enum Fallback {
    Text(&'static str),
    Bool(bool),
    EmptyList,
}

impl Fallback {
    fn value(&self) -> Value {
        match self {
            Self::Text(text) => Value::from(*text),
            Self::Bool(flag) => Value::Bool(*flag),
            Self::EmptyList => Value::Array(Vec::new()),
        }
    }
}

impl Field {
    pub const fn required(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            presence: Presence::Required,
        }
    }

    pub const fn optional(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            presence: Presence::Optional,
        }
    }

    pub const fn defaulted(name: &'static str, kind: Kind, default: Fallback) -> Self {
        Self {
            name,
            kind,
            presence: Presence::Defaulted(default),
        }
    }
}

/// A create body, checked: every field present, defaults filled in.
pub fn for_create(fields: &[Field], body: Map<String, Value>) -> ApiResult<Map<String, Value>> {
    refuse_unknown(fields, &body)?;
    let mut out = Map::new();
    for field in fields {
        let given = body.get(field.name);
        let value = match given {
            Some(value) if !value.is_null() => field.kind.normalise(field.name, value)?,
            _ => Value::Null,
        };
        let value = match (&field.presence, value.is_null()) {
            (_, false) | (Presence::Optional, true) => value,
            (Presence::Required, true) if given.is_none() => {
                return Err(ApiError::MissingField(field.name.to_owned()))
            }
            (Presence::Required, true) => {
                return Err(invalid(field.name, "must not be null or blank"))
            }
            (Presence::Defaulted(fallback), true) => fallback.value(),
        };
        out.insert(field.name.to_owned(), value);
    }
    Ok(out)
}

/// A merge-patch body, checked: only the fields given, `null` for a cleared
/// optional field.
pub fn for_patch(fields: &[Field], body: Map<String, Value>) -> ApiResult<Map<String, Value>> {
    refuse_unknown(fields, &body)?;
    let mut out = Map::new();
    for field in fields {
        let Some(given) = body.get(field.name) else {
            continue;
        };
        let value = match given {
            Value::Null => Value::Null,
            value => field.kind.normalise(field.name, value)?,
        };
        if value.is_null() && !matches!(field.presence, Presence::Optional) {
            return Err(invalid(
                field.name,
                "cannot be cleared: it must not be null or blank",
            ));
        }
        out.insert(field.name.to_owned(), value);
    }
    Ok(out)
}

fn refuse_unknown(fields: &[Field], body: &Map<String, Value>) -> ApiResult<()> {
    for name in body.keys() {
        if fields.iter().any(|f| f.name == name) {
            continue;
        }
        if READ_ONLY.contains(&name.as_str()) {
            return Err(invalid(name, "is read-only"));
        }
        let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
        return Err(invalid(
            name,
            format!("unknown field; the fields are {}", known.join(", ")),
        ));
    }
    Ok(())
}

pub(super) fn invalid(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParam {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// A field's value once `input` is applied to `current` (the state's
/// serialised form; `None` on a create): what the input says, else what the
/// state holds, else null.
pub fn effective<'a>(
    input: &'a Map<String, Value>,
    current: Option<&'a Value>,
    name: &str,
) -> &'a Value {
    input
        .get(name)
        .or_else(|| current.and_then(|c| c.get(name)))
        .unwrap_or(&Value::Null)
}

/// The rule of every amount: a currency must go with it. `missing_field`
/// if none was ever given, `invalid_param` if a PATCH clears it.
pub fn require_currency(
    input: &Map<String, Value>,
    current: Option<&Value>,
    has_amount: bool,
) -> ApiResult<()> {
    if !has_amount || !effective(input, current, "currency").is_null() {
        return Ok(());
    }
    // A create's input holds every field, null when not given.
    let cleared = current.is_some() && input.contains_key("currency");
    if cleared {
        Err(invalid(
            "currency",
            "is required while there is an amount (a price, a total or items)",
        ))
    } else {
        Err(ApiError::MissingField("currency".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[Field] = &[
        Field::required("name", Kind::Line { max: MAX_NAME }),
        Field::optional("email", Kind::Email),
        Field::optional("notes", Kind::Text { max: MAX_NOTES }),
        Field::defaulted("source", Kind::Line { max: 100 }, Fallback::Text("api")),
        Field::optional("price", Kind::Money),
    ];

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn refused(result: ApiResult<Map<String, Value>>) -> (&'static str, String) {
        match result {
            Err(ApiError::InvalidParam { name, .. }) => ("invalid_param", name),
            Err(ApiError::MissingField(name)) => ("missing_field", name),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_create_fills_defaults_and_nulls() {
        let out = for_create(FIELDS, body(json!({"name": "Sarah", "email": ""}))).expect("valid");
        assert_eq!(
            Value::Object(out),
            json!({"name": "Sarah", "email": null, "notes": null, "source": "api", "price": null})
        );
    }

    #[test]
    fn required_fields_are_missing_or_invalid() {
        assert_eq!(
            refused(for_create(FIELDS, body(json!({})))),
            ("missing_field", "name".into())
        );
        for name in [json!(null), json!("  "), json!(7)] {
            assert_eq!(
                refused(for_create(FIELDS, body(json!({"name": name})))),
                ("invalid_param", "name".into())
            );
        }
    }

    #[test]
    fn unknown_and_read_only_fields_are_refused() {
        for key in ["nmae", "id", "created_at"] {
            let mut b = body(json!({"name": "x"}));
            b.insert(key.into(), json!(1));
            assert_eq!(
                refused(for_create(FIELDS, b)),
                ("invalid_param", key.into())
            );
        }
    }

    #[test]
    fn a_patch_keeps_only_what_is_given_and_refuses_clearing_a_default() {
        let out = for_patch(FIELDS, body(json!({"email": null, "notes": "a\nb"}))).expect("valid");
        assert_eq!(Value::Object(out), json!({"email": null, "notes": "a\nb"}));
        for field in ["name", "source"] {
            let mut b = Map::new();
            b.insert(field.into(), Value::Null);
            assert_eq!(
                refused(for_patch(FIELDS, b)),
                ("invalid_param", field.into())
            );
        }
    }

    #[test]
    fn text_is_bounded_in_characters_and_single_lines_refuse_controls() {
        let max = "é".repeat(MAX_NAME);
        assert!(for_create(FIELDS, body(json!({"name": max}))).is_ok());
        let over = "x".repeat(MAX_NAME + 1);
        assert_eq!(
            refused(for_create(FIELDS, body(json!({"name": over})))).1,
            "name"
        );
        assert_eq!(
            refused(for_create(FIELDS, body(json!({"name": "a\nb"})))).1,
            "name"
        );
    }
}
