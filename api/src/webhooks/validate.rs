//! The rules of a subscription's fields: the target URL (absolute http(s),
//! at most 2,048 characters, no credentials, and a host on the public
//! internet unless `JEANUS_WEBHOOK_ALLOW_PRIVATE`), the event types (known
//! public ones, at least one) and the description. Each failure is 400
//! `invalid_param` naming the field.

use std::net::IpAddr;
use std::time::Duration;

use schema::webhooks::{is_global, is_subscribable, subscribable_types};
use serde_json::Value;
use url::{Host, Url};

use crate::error::ApiResult;
use crate::lists::params::invalid;

/// The longest URL accepted, in bytes.
pub const MAX_URL: usize = 2048;
/// The longest description accepted, in characters.
pub const MAX_DESCRIPTION: usize = 1000;
/// How long the host's DNS resolution may take at subscribe time.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL's shape, without looking its host up: `field` names it in the
/// error (`url`, or Zapier's `target_url`).
pub fn url_shape(field: &str, value: &Value) -> ApiResult<Url> {
    let text = value
        .as_str()
        .ok_or_else(|| invalid(field, "must be a string"))?
        .trim();
    if text.len() > MAX_URL {
        return Err(invalid(
            field,
            format!("must be at most {MAX_URL} characters"),
        ));
    }
    let url =
        Url::parse(text).map_err(|e| invalid(field, format!("is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(invalid(field, "must be an https:// (or http://) URL"));
    }
    if url.host().is_none() {
        return Err(invalid(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            field,
            "must not carry credentials; authenticate the request with its signature",
        ));
    }
    if url.fragment().is_some() {
        return Err(invalid(field, "must not have a #fragment"));
    }
    Ok(url)
}

/// Refuses a URL whose host is, or resolves to, an address that is not on
/// the public internet (private, loopback, link-local, …), unless
/// `allow_private`. Every address the name resolves to must be global: the
/// dispatcher checks again at send time, after its own resolution, and
/// pins the address it vetted.
pub async fn url_target(field: &str, url: &Url, allow_private: bool) -> ApiResult<()> {
    if allow_private {
        return Ok(());
    }
    let refused = |ip: IpAddr| {
        invalid(
            field,
            format!("its host resolves to {ip}, which is not a public internet address"),
        )
    };
    let addresses: Vec<IpAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![ip.into()],
        Some(Host::Ipv6(ip)) => vec![ip.into()],
        Some(Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((name, port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                Ok(Err(_)) | Err(_) => {
                    return Err(invalid(
                        field,
                        format!("its host {name:?} does not resolve"),
                    ))
                }
            }
        }
        None => return Err(invalid(field, "must name a host")),
    };
    if addresses.is_empty() {
        return Err(invalid(field, "its host does not resolve"));
    }
    match addresses.into_iter().find(|ip| !is_global(*ip)) {
        Some(ip) => Err(refused(ip)),
        None => Ok(()),
    }
}

/// A non-empty array of known public event types, without repeats (in the
/// order given). `field` is `events`, or Zapier's `event` (one string).
pub fn events(field: &str, value: &Value) -> ApiResult<Vec<String>> {
    let known = || subscribable_types().collect::<Vec<_>>().join(", ");
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::String(_) if field == "event" => vec![value],
        _ => return Err(invalid(field, "must be an array of event types")),
    };
    if items.is_empty() {
        return Err(invalid(
            field,
            format!("must name at least one event type: {}", known()),
        ));
    }
    let mut types: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let name = item
            .as_str()
            .ok_or_else(|| invalid(field, "must hold event type names (strings)"))?;
        if !is_subscribable(name) {
            return Err(invalid(
                field,
                format!("{name:?} is not an event type; use {}", known()),
            ));
        }
        if !types.iter().any(|t| t == name) {
            types.push(name.to_owned());
        }
    }
    Ok(types)
}

/// A description: a string of at most [`MAX_DESCRIPTION`] characters; null
/// or blank is none.
pub fn description(value: &Value) -> ApiResult<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) if s.chars().count() > MAX_DESCRIPTION => Err(invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        )),
        Value::String(s) => Ok(Some(s.trim().to_owned())),
        _ => Err(invalid("description", "must be a string or null")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use serde_json::json;

    fn code_and_name(e: ApiError) -> String {
        match e {
            ApiError::InvalidParam { name, .. } => name,
            other => panic!("not invalid_param: {other:?}"),
        }
    }

    #[test]
    fn urls_must_be_absolute_http_without_credentials() {
        assert!(url_shape("url", &json!("https://example.com/hooks?x=1")).is_ok());
        assert!(url_shape("url", &json!("http://127.0.0.1:8080/")).is_ok());
        for bad in [
            json!("example.com/hook"),
            json!("ftp://example.com/"),
            json!("https://user:pw@example.com/"),
            json!("https://example.com/#frag"),
            json!("mailto:someone@example.com"),
            json!(42),
            json!(format!("https://example.com/{}", "a".repeat(MAX_URL))),
        ] {
            let e = url_shape("url", &bad).expect_err(&bad.to_string());
            assert_eq!(code_and_name(e), "url", "{bad}");
        }
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed() {
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/",
        ] {
            let url = url_shape("url", &json!(private)).expect("well formed");
            let e = url_target("url", &url, false).await.expect_err(private);
            assert_eq!(code_and_name(e), "url");
            assert!(url_target("url", &url, true).await.is_ok());
        }
        let public = url_shape("url", &json!("https://93.184.215.14/")).expect("well formed");
        assert!(url_target("url", &public, false).await.is_ok());
    }

    #[test]
    fn events_must_be_known_and_are_deduplicated() {
        assert_eq!(
            events(
                "events",
                &json!(["lead.stage_changed", "lead.created", "lead.stage_changed"])
            )
            .expect("valid"),
            ["lead.stage_changed", "lead.created"]
        );
        assert_eq!(
            events("event", &json!("order.created")).expect("valid"),
            ["order.created"]
        );
        for bad in [
            json!([]),
            json!(["lead.teleported"]),
            json!(["webhook.test"]),
            json!("lead.created"),
            json!([1]),
        ] {
            let e = events("events", &bad).expect_err(&bad.to_string());
            assert_eq!(code_and_name(e), "events");
        }
    }

    #[test]
    fn descriptions_are_bounded_and_blank_is_none() {
        assert_eq!(description(&json!("  ")).expect("valid"), None);
        assert_eq!(
            description(&json!(" crm ")).expect("valid").as_deref(),
            Some("crm")
        );
        assert!(description(&json!("x".repeat(MAX_DESCRIPTION + 1))).is_err());
        assert!(description(&json!(1)).is_err());
    }
}
