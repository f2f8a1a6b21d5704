//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`,
//! one per live secret, space-separated.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every secret shown to a tenant.
pub const SECRET_PREFIX: &str = "whsec_";

/// The raw key bytes of one secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// A secret that is not `whsec_` + standard base64.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret must be whsec_ followed by standard base64")]
pub struct InvalidSecret;

impl SigningKey {
    /// `whsec_<base64>` (the prefix may be absent, as the specification's
    /// libraries accept) → the key bytes.
    pub fn from_secret(secret: &str) -> Result<Self, InvalidSecret> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let bytes = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
        if bytes.is_empty() {
            return Err(InvalidSecret);
        }
        Ok(Self(bytes))
    }
}

/// One `v1,<signature>` entry.
pub fn sign_one(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(&key.0) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one entry per key, in order, separated by
/// spaces (during a rotation a receiver holding either secret verifies).
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| sign_one(key, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector (its
    // libraries' "sign function works" test), given once with the `whsec_`
    // prefix and once without, as the libraries accept both.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_published_test_vector_signs_as_the_specification_says() {
        let key = SigningKey::from_secret(SECRET).expect("valid");
        assert_eq!(sign_one(&key, ID, TIMESTAMP, BODY.as_bytes()), EXPECTED);
    }

    #[test]
    fn the_published_test_vector_signs_the_same_without_its_prefix() {
        let key = SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
        assert_eq!(sign_one(&key, ID, TIMESTAMP, BODY.as_bytes()), EXPECTED);
    }

    #[test]
    fn any_change_to_id_timestamp_or_body_changes_the_signature() {
        let key = SigningKey::from_secret(SECRET).expect("valid");
        assert_ne!(
            sign_one(&key, "msg_other", TIMESTAMP, BODY.as_bytes()),
            EXPECTED
        );
        assert_ne!(sign_one(&key, ID, TIMESTAMP + 1, BODY.as_bytes()), EXPECTED);
        assert_ne!(
            sign_one(&key, ID, TIMESTAMP, b"{\"test\": 2432232315}"),
            EXPECTED
        );
    }

    #[test]
    fn several_keys_give_space_separated_signatures_in_order() {
        let a = SigningKey::from_secret(SECRET).expect("valid");
        let b = SigningKey::from_secret("whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==")
            .expect("valid");
        let header = signature_header(&[b.clone(), a], ID, TIMESTAMP, BODY.as_bytes());
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign_one(&b, ID, TIMESTAMP, BODY.as_bytes()));
        assert_eq!(parts[1], EXPECTED);
    }

    #[test]
    fn a_secret_that_is_not_base64_is_refused() {
        assert!(SigningKey::from_secret("whsec_not base64!").is_err());
        assert!(SigningKey::from_secret("whsec_").is_err());
    }
}
