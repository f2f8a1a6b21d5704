//! Who is calling: the authenticated [`Principal`] behind an `/api/v1`
//! request, its scopes, and the modules that establish it (key format,
//! authentication with its cache, client address and IP allowlist).
//!
//! Scopes are hierarchical: `admin` ⊇ `write` ⊇ `read`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use schema::envelope::Metadata;
use schema::events::Scope;
use uuid::Uuid;

use crate::error::ApiError;
use crate::request_id;

pub mod admin;
pub mod authenticate;
pub mod client_ip;
pub mod key;

/// The caller of an `/api/v1` request, as its API key describes it. Inserted
/// into the request's extensions by [`authenticate::middleware`]; handlers
/// take it as an extractor.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub key_id: Uuid,
    pub label: String,
    /// The displayable start of the key (`jns_live_a1b2`), never the key.
    pub key_start: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit_per_minute: u32,
    /// Empty: any address.
    pub allowed_ips: Vec<IpNet>,
}

impl Principal {
    /// Whether the key's scopes include `scope`, directly or through a
    /// broader one.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|held| grants(*held, scope))
    }

    /// 403 `missing_scope`, naming the scope, unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::MissingScope(scope))
        }
    }

    /// The metadata of an event appended on behalf of this caller, in the
    /// current request.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            request_id: request_id::current().map(|id| id.to_string()),
            key_id: Some(self.key_id),
        }
    }
}

/// `held` includes `needed`: admin ⊇ write ⊇ read.
pub fn grants(held: Scope, needed: Scope) -> bool {
    rank(held) >= rank(needed)
}

// Spelled out rather than derived from `Scope`'s declaration order, so that
// reordering the enum can never widen a key's reach.
fn rank(scope: Scope) -> u8 {
    match scope {
        Scope::Read => 1,
        Scope::Write => 2,
        Scope::Admin => 3,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::MissingAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(scopes: &[Scope]) -> Principal {
        Principal {
            tenant_id: Uuid::nil(),
            tenant_name: "t".into(),
            key_id: Uuid::nil(),
            label: "k".into(),
            key_start: "jns_live_abcd".into(),
            scopes: scopes.to_vec(),
            expires_at: None,
            rate_limit_per_minute: 60,
            allowed_ips: Vec::new(),
        }
    }

    #[test]
    fn scopes_are_hierarchical() {
        let read = with(&[Scope::Read]);
        assert!(read.has(Scope::Read));
        assert!(!read.has(Scope::Write));
        assert!(!read.has(Scope::Admin));

        let write = with(&[Scope::Write]);
        assert!(write.has(Scope::Read) && write.has(Scope::Write));
        assert!(!write.has(Scope::Admin));

        let admin = with(&[Scope::Admin]);
        assert!(admin.has(Scope::Read) && admin.has(Scope::Write) && admin.has(Scope::Admin));

        assert!(!with(&[]).has(Scope::Read));
    }

    #[test]
    fn a_missing_scope_is_named() {
        let err = with(&[Scope::Read])
            .require(Scope::Admin)
            .expect_err("refused");
        assert_eq!(err.code(), "missing_scope");
        assert!(err.to_string().contains("admin"), "{err}");
    }
}
