//! Validation of the requests that create tenants and keys: every rule in
//! one place, pure (no I/O), so the HTTP handlers and the CLI refuse the same
//! things with the same `invalid_param` naming the same field.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use ipnet::IpNet;
use schema::events::Scope;
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::Deserialize;

use crate::auth::key::Mode;
use crate::error::{ApiError, ApiResult};

pub const MAX_TENANT_NAME: usize = 200;
pub const MAX_LABEL: usize = 100;
pub const DEFAULT_RATE_LIMIT: u32 = 60;
pub const MAX_RATE_LIMIT: u32 = 10_000;

/// A request to mint a key, as clients send it. Fields are taken loosely
/// typed (strings) so that a bad value is refused with `invalid_param`
/// naming the field, by [`MintRequest::validate`], rather than with serde's
/// wording.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[schema(description = "A key to mint. Unknown fields are ignored.")]
pub struct MintRequest {
    /// 1 to 100 characters, not blank.
    pub label: String,
    /// At least one of `read`, `write`, `admin`.
    #[schema(value_type = Vec<crate::openapi::Scope>)]
    pub scopes: Vec<String>,
    /// RFC 3339, in the future; absent or `null`: the key does not expire.
    #[serde(default)]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<String>,
    /// CIDRs (IPv4 or IPv6; a bare address is a /32 or /128) the key may be
    /// used from; absent or empty: anywhere.
    #[serde(default)]
    #[schema(example = json!(["203.0.113.0/24", "2001:db8::/32"]))]
    pub allowed_ips: Option<Vec<String>>,
    /// 1 to 10,000; default 60.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub rate_limit_per_minute: Option<i64>,
    /// "live" (the default) or "test".
    #[serde(default)]
    #[schema(pattern = "^(live|test)$")]
    pub mode: Option<String>,
}

/// A valid mint request.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub label: String,
    /// Distinct, in order read < write < admin.
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Normalised: host bits cleared; a bare address is a /32 or /128.
    pub allowed_ips: Vec<IpNet>,
    pub rate_limit_per_minute: u32,
    pub mode: Mode,
}

impl MintRequest {
    /// Checks every field; `now` decides whether `expires_at` is in the future.
    pub fn validate(self, now: DateTime<Utc>) -> ApiResult<KeySpec> {
        let label = bounded_text("label", self.label, MAX_LABEL)?;
        let scopes = parse_scopes(&self.scopes)?;
        let expires_at = self
            .expires_at
            .map(|text| parse_expiry(&text, now))
            .transpose()?;
        let allowed_ips = self
            .allowed_ips
            .unwrap_or_default()
            .iter()
            .map(|text| parse_cidr(text))
            .collect::<ApiResult<Vec<_>>>()?;
        let rate_limit_per_minute = match self.rate_limit_per_minute {
            None => DEFAULT_RATE_LIMIT,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_RATE_LIMIT).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "rate_limit_per_minute",
                        format!("must be between 1 and {MAX_RATE_LIMIT}"),
                    )
                })?,
        };
        let mode = match self.mode.as_deref() {
            None | Some("live") => Mode::Live,
            Some("test") => Mode::Test,
            Some(_) => return Err(invalid("mode", "must be \"live\" or \"test\"")),
        };
        Ok(KeySpec {
            label,
            scopes,
            expires_at,
            allowed_ips,
            rate_limit_per_minute,
            mode,
        })
    }
}

fn invalid(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParam {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// 1 to `max` characters, not all blank; kept as given.
pub(super) fn bounded_text(name: &str, value: String, max: usize) -> ApiResult<String> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > max {
        return Err(invalid(
            name,
            format!("must be 1 to {max} characters, not blank"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(name, "must not contain control characters"));
    }
    Ok(value)
}

fn parse_scopes(names: &[String]) -> ApiResult<Vec<Scope>> {
    const HINT: &str = "must be a non-empty list of \"read\", \"write\" and \"admin\"";
    if names.is_empty() {
        return Err(invalid("scopes", HINT));
    }
    let mut scopes = BTreeSet::new();
    for name in names {
        // Through serde, so the names are exactly the ones events store.
        let scope = Scope::deserialize(StrDeserializer::<ValueError>::new(name))
            .map_err(|_| invalid("scopes", format!("unknown scope {name:?}; {HINT}")))?;
        scopes.insert(scope);
    }
    Ok(scopes.into_iter().collect())
}

fn parse_expiry(text: &str, now: DateTime<Utc>) -> ApiResult<DateTime<Utc>> {
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| {
            invalid(
                "expires_at",
                "must be an RFC 3339 time, e.g. 2030-01-31T00:00:00Z",
            )
        })?
        .with_timezone(&Utc)
        .trunc_subsecs(6);
    if at <= now {
        return Err(invalid("expires_at", "must be in the future"));
    }
    Ok(at)
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
fn parse_cidr(text: &str) -> ApiResult<IpNet> {
    let text = text.trim();
    IpNet::from_str(text)
        .map(|net| net.trunc())
        .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
        .map_err(|_| {
            invalid(
                "allowed_ips",
                format!(
                    "{text:?} is not a CIDR (e.g. 203.0.113.0/24, 2001:db8::/32) or an IP address"
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn request() -> MintRequest {
        MintRequest {
            label: "zapier".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        }
    }

    fn refused(r: MintRequest) -> (String, String) {
        match r.validate(Utc::now()) {
            Err(ApiError::InvalidParam { name, message }) => (name, message),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(spec) => panic!("accepted {spec:?}"),
        }
    }

    #[test]
    fn a_minimal_request_gets_the_defaults() {
        let spec = request().validate(Utc::now()).expect("valid");
        assert_eq!(spec.scopes, [Scope::Read]);
        assert_eq!(spec.rate_limit_per_minute, 60);
        assert_eq!(spec.mode, Mode::Live);
        assert!(spec.allowed_ips.is_empty());
        assert_eq!(spec.expires_at, None);
    }

    #[test]
    fn scopes_are_deduplicated_and_ordered() {
        let spec = MintRequest {
            scopes: vec!["admin".into(), "read".into(), "admin".into()],
            ..request()
        }
        .validate(Utc::now())
        .expect("valid");
        assert_eq!(spec.scopes, [Scope::Read, Scope::Admin]);
    }

    #[test]
    fn unknown_or_no_scopes_are_refused_naming_scopes() {
        for scopes in [
            vec![],
            vec!["read".into(), "delete".into()],
            vec!["Read".into()],
        ] {
            let (name, _) = refused(MintRequest {
                scopes,
                ..request()
            });
            assert_eq!(name, "scopes");
        }
    }

    #[test]
    fn labels_and_names_are_bounded() {
        for label in [String::new(), "   ".into(), "x".repeat(101), "a\nb".into()] {
            assert_eq!(refused(MintRequest { label, ..request() }).0, "label");
        }
        let spec = MintRequest {
            label: "é".repeat(100),
            ..request()
        }
        .validate(Utc::now())
        .expect("100 characters are fine, whatever their bytes");
        assert_eq!(spec.label.chars().count(), 100);
        assert!(bounded_text("name", "x".repeat(200), MAX_TENANT_NAME).is_ok());
        assert!(bounded_text("name", "x".repeat(201), MAX_TENANT_NAME).is_err());
    }

    #[test]
    fn expiry_must_be_rfc3339_and_in_the_future() {
        let now = Utc::now();
        let future = (now + Duration::days(1)).to_rfc3339();
        let spec = MintRequest {
            expires_at: Some(future),
            ..request()
        }
        .validate(now)
        .expect("valid");
        assert!(spec.expires_at.expect("set") > now);

        for text in ["tomorrow", "2030-01-01", "2020-01-01T00:00:00Z"] {
            let (name, _) = refused(MintRequest {
                expires_at: Some(text.into()),
                ..request()
            });
            assert_eq!(name, "expires_at", "{text}");
        }
    }

    #[test]
    fn cidrs_of_both_families_are_normalised() {
        let spec = MintRequest {
            allowed_ips: Some(vec![
                "10.1.2.3/8".into(),
                "192.0.2.7".into(),
                "2001:db8::1".into(),
                "2001:db8:1::/48".into(),
            ]),
            ..request()
        }
        .validate(Utc::now())
        .expect("valid");
        let shown: Vec<String> = spec.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0/8",
                "192.0.2.7/32",
                "2001:db8::1/128",
                "2001:db8:1::/48"
            ]
        );
    }

    #[test]
    fn bad_cidrs_are_refused_naming_allowed_ips() {
        for text in ["10.0.0.0/33", "2001:db8::/129", "not-an-ip", "", "10.0.0"] {
            let (name, _) = refused(MintRequest {
                allowed_ips: Some(vec![text.into()]),
                ..request()
            });
            assert_eq!(name, "allowed_ips", "{text:?}");
        }
    }

    #[test]
    fn the_rate_limit_is_bounded() {
        for n in [0, -1, 10_001, i64::MAX] {
            let (name, _) = refused(MintRequest {
                rate_limit_per_minute: Some(n),
                ..request()
            });
            assert_eq!(name, "rate_limit_per_minute");
        }
        for n in [1, 10_000] {
            let spec = MintRequest {
                rate_limit_per_minute: Some(n),
                ..request()
            }
            .validate(Utc::now())
            .expect("valid");
            assert_eq!(i64::from(spec.rate_limit_per_minute), n);
        }
    }

    #[test]
    fn the_mode_is_live_or_test() {
        let spec = MintRequest {
            mode: Some("test".into()),
            ..request()
        }
        .validate(Utc::now())
        .expect("valid");
        assert_eq!(spec.mode, Mode::Test);
        assert_eq!(
            refused(MintRequest {
                mode: Some("prod".into()),
                ..request()
            })
            .0,
            "mode"
        );
    }
}
