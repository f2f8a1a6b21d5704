//! What each kind of field accepts, and the normalised JSON value it
//! becomes (the shape the events store).

use serde_json::Value;
use uuid::Uuid;

use super::{invalid, MAX_EMAIL, MAX_ITEMS, MAX_PHONE};
use crate::error::{ApiError, ApiResult};

#[derive(Debug)]
pub enum Kind {
    /// One line of text: at most `max` characters, no control characters.
    Line { max: usize },
    /// Free text: at most `max` characters; newlines and tabs allowed.
    Text { max: usize },
    /// An email address's shape: `local@domain.tld`, at most 254 characters.
    Email,
    /// At most 50 characters with at least one digit.
    Phone,
    /// An amount in minor units: an integer ≥ 0.
    Money,
    /// An integer from 0 to 100.
    Percent,
    /// An ISO 4217 code: three upper-case letters naming a real currency.
    Currency,
    /// `true` or `false`.
    Flag,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A UUID; normalised to its lower-case hyphenated form.
    Id,
    /// Order items: `[{product_id, quantity ≥ 1, unit_price ≥ 0}]`.
    Items,
}

impl Kind {
    /// The value in the shape events store it; `Null` for blank text.
    pub(super) fn normalise(&self, name: &str, value: &Value) -> ApiResult<Value> {
        match self {
            Self::Line { max } => text(name, value, *max, false),
            Self::Text { max } => text(name, value, *max, true),
            Self::Email => {
                let email = text(name, value, MAX_EMAIL, false)?;
                match email.as_str() {
                    Some(e) if !email_shaped(e) => Err(invalid(
                        name,
                        "must be an email address such as name@example.com",
                    )),
                    _ => Ok(email),
                }
            }
            Self::Phone => {
                let phone = text(name, value, MAX_PHONE, false)?;
                match phone.as_str() {
                    Some(p) if !p.chars().any(|c| c.is_ascii_digit()) => {
                        Err(invalid(name, "must contain a phone number's digits"))
                    }
                    _ => Ok(phone),
                }
            }
            Self::Money => money(name, value).map(Value::from),
            Self::Percent => match value.as_i64() {
                Some(n) if (0..=100).contains(&n) => Ok(Value::from(n)),
                _ => Err(invalid(name, "must be an integer from 0 to 100")),
            },
            Self::Currency => match value.as_str() {
                Some(code) if is_currency(code) => Ok(Value::from(code)),
                _ => Err(invalid(
                    name,
                    "must be an ISO 4217 currency code in upper case, such as USD or EUR",
                )),
            },
            Self::Flag => match value {
                Value::Bool(_) => Ok(value.clone()),
                _ => Err(invalid(name, "must be true or false")),
            },
            Self::Choice(choices) => match value.as_str() {
                Some(choice) if choices.contains(&choice) => Ok(value.clone()),
                _ => Err(invalid(
                    name,
                    format!("must be one of {}", choices.join(", ")),
                )),
            },
            Self::Id => id(name, value).map(|id| Value::from(id.to_string())),
            Self::Items => items(name, value),
        }
    }
}

/// A string of at most `max` characters, as given; `Null` if blank.
fn text(name: &str, value: &Value, max: usize, multiline: bool) -> ApiResult<Value> {
    let Some(text) = value.as_str() else {
        return Err(invalid(name, "must be a string"));
    };
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    if text.chars().count() > max {
        return Err(invalid(name, format!("must be at most {max} characters")));
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(invalid(name, "must not contain control characters"));
    }
    Ok(value.clone())
}

/// `local@domain.tld`: one `@`, no spaces, a local part of at most 64
/// characters, and a domain of two or more dot-separated labels of letters,
/// digits and inner hyphens. The shape only: deliverability is not ours to
/// judge.
fn email_shaped(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && labels.len() >= 2
        && labels.iter().all(|l| label_ok(l))
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

fn is_currency(code: &str) -> bool {
    code.len() == 3
        && code.chars().all(|c| c.is_ascii_uppercase())
        && iso_currency::Currency::from_code(code).is_some()
}

/// An integer ≥ 0 (minor units).
pub fn money(name: &str, value: &Value) -> ApiResult<i64> {
    let refused = |why: &str| {
        invalid(
            name,
            format!("must be an integer count of minor units (cents) ≥ 0; {why}"),
        )
    };
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(amount) if amount >= 0 => Ok(amount),
            Some(_) => Err(refused("it is negative")),
            None if n.is_u64() => Err(refused("it is too large")),
            None => Err(refused("fractions are not accepted")),
        },
        _ => Err(refused("not a number")),
    }
}

fn id(name: &str, value: &Value) -> ApiResult<Uuid> {
    value
        .as_str()
        .and_then(|text| Uuid::parse_str(text).ok())
        .ok_or_else(|| invalid(name, "must be a UUID"))
}

const ITEM_FIELDS: &[&str] = &["product_id", "quantity", "unit_price"];

/// `[{product_id, quantity, unit_price}]`, each item exactly those fields,
/// errors named `items[2].quantity`.
fn items(name: &str, value: &Value) -> ApiResult<Value> {
    let Some(list) = value.as_array() else {
        return Err(invalid(name, "must be a list of items"));
    };
    if list.len() > MAX_ITEMS {
        return Err(invalid(
            name,
            format!("must hold at most {MAX_ITEMS} items"),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = |field: &str| format!("{name}[{i}].{field}");
        let Some(item) = item.as_object() else {
            return Err(invalid(
                &format!("{name}[{i}]"),
                "must be an object {product_id, quantity, unit_price}",
            ));
        };
        if let Some(unknown) = item.keys().find(|k| !ITEM_FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                &at(unknown),
                "unknown field; an item has product_id, quantity and unit_price",
            ));
        }
        let get = |field: &str| match item.get(field) {
            None => Err(ApiError::MissingField(at(field))),
            Some(value) => Ok(value),
        };
        let product_id = id(&at("product_id"), get("product_id")?)?;
        let quantity = match get("quantity")?.as_i64() {
            Some(n) if n >= 1 => n,
            _ => return Err(invalid(&at("quantity"), "must be an integer ≥ 1")),
        };
        let unit_price = money(&at("unit_price"), get("unit_price")?)?;
        out.push(serde_json::json!({
            "product_id": product_id.to_string(),
            "quantity": quantity,
            "unit_price": unit_price,
        }));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn email_shapes() {
        for good in [
            "a@b.co",
            "sarah.patel+x@patel-holdings.com",
            "x@sub.example.org",
        ] {
            assert!(email_shaped(good), "{good}");
        }
        for bad in [
            "a",
            "a@",
            "@b.com",
            "a@b",
            "a b@c.com",
            "a@b@c.com",
            "a@-b.com",
            "a@b..com",
            "a@1.2",
        ] {
            assert!(!email_shaped(bad), "{bad}");
        }
    }

    #[test]
    fn money_is_a_non_negative_integer() {
        assert_eq!(money("p", &json!(0)).expect("zero"), 0);
        assert_eq!(money("p", &json!(i64::MAX)).expect("max"), i64::MAX);
        for bad in [
            json!(-1),
            json!(1.5),
            json!(12.0),
            json!("12"),
            json!(u64::MAX),
            json!(1e3),
        ] {
            assert!(money("p", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn currencies_are_real_upper_case_codes() {
        for good in ["USD", "EUR", "JPY", "CHF"] {
            assert!(is_currency(good), "{good}");
        }
        for bad in ["usd", "US", "USDD", "ABC", "ZZZ", "€"] {
            assert!(!is_currency(bad), "{bad}");
        }
    }

    #[test]
    fn items_are_named_by_index() {
        let ok = items("items", &json!([{"product_id": Uuid::nil().to_string().to_uppercase(), "quantity": 2, "unit_price": 5}]))
            .expect("valid");
        assert_eq!(ok[0]["product_id"], Uuid::nil().to_string());

        let cases = [
            (
                json!([{"quantity": 1, "unit_price": 1}]),
                "items[0].product_id",
            ),
            (
                json!([{"product_id": "x", "quantity": 1, "unit_price": 1}]),
                "items[0].product_id",
            ),
            (
                json!([{"product_id": Uuid::nil(), "quantity": 0, "unit_price": 1}]),
                "items[0].quantity",
            ),
            (
                json!([{"product_id": Uuid::nil(), "quantity": 1, "unit_price": -1}]),
                "items[0].unit_price",
            ),
            (
                json!([{"product_id": Uuid::nil(), "quantity": 1, "unit_price": 1, "x": 1}]),
                "items[0].x",
            ),
            (json!([1]), "items[0]"),
            (json!({}), "items"),
        ];
        for (value, name) in cases {
            match items("items", &value) {
                Err(ApiError::InvalidParam { name: n, .. }) | Err(ApiError::MissingField(n)) => {
                    assert_eq!(n, name, "{value}")
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }
}
