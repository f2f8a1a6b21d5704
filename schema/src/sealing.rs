//! Sealing of secrets at rest: webhook signing secrets are encrypted with
//! XChaCha20-Poly1305 under the deployment's `JEANUS_SECRET_KEY` before they
//! reach an event, a read model or a backup, and opened only where they sign.
//!
//! A sealed value is `v1.` followed by the standard base64 of the 24-byte
//! random nonce and the ciphertext with its 16-byte tag. The version prefix
//! leaves room for another algorithm or key without rewriting stored events.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chacha20poly1305::{
    aead::{Aead, AeadCore, KeyInit, OsRng},
    XChaCha20Poly1305, XNonce,
};

/// The environment variable that holds the key, named in every key error.
pub const SECRET_KEY_VAR: &str = "JEANUS_SECRET_KEY";

const PREFIX: &str = "v1.";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// The 32-byte key that seals secrets. `Debug` never prints it.
#[derive(Clone)]
pub struct SecretKey(chacha20poly1305::Key);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{SECRET_KEY_VAR} is not standard base64")]
    NotBase64,
    #[error("{SECRET_KEY_VAR} must decode to {KEY_LEN} bytes, got {0}")]
    WrongLength(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed secret is malformed")]
    Malformed,
    /// Tampered with, or sealed under another key.
    #[error("sealed secret does not open under this key")]
    WrongKeyOrTampered,
}

impl SecretKey {
    /// Parse the standard base64 of 32 bytes (as `JEANUS_SECRET_KEY` holds it).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?;
        if bytes.len() != KEY_LEN {
            return Err(KeyError::WrongLength(bytes.len()));
        }
        Ok(Self(*chacha20poly1305::Key::from_slice(&bytes)))
    }

    /// A fresh random key (tests, and `scripts/dev`'s first run).
    pub fn generate() -> Self {
        Self(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// The key as `JEANUS_SECRET_KEY` holds it, to hand to another process.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_slice())
    }
}

/// Encrypt `plaintext` under `key` with a fresh random nonce.
pub fn seal(key: &SecretKey, plaintext: &str) -> String {
    let cipher = XChaCha20Poly1305::new(&key.0);
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    // Encryption fails only when the plaintext exceeds the algorithm's limit
    // (~256 GiB), which a secret never approaches.
    let ciphertext = cipher
        .encrypt(&nonce, plaintext.as_bytes())
        .unwrap_or_default();
    let mut bytes = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    bytes.extend_from_slice(nonce.as_slice());
    bytes.extend_from_slice(&ciphertext);
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// Decrypt a value `seal` produced under the same key.
pub fn open(key: &SecretKey, sealed: &str) -> Result<String, OpenError> {
    let encoded = sealed.strip_prefix(PREFIX).ok_or(OpenError::Malformed)?;
    let bytes = STANDARD.decode(encoded).map_err(|_| OpenError::Malformed)?;
    if bytes.len() < NONCE_LEN + 16 {
        return Err(OpenError::Malformed);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
    let plaintext = XChaCha20Poly1305::new(&key.0)
        .decrypt(XNonce::from_slice(nonce), ciphertext)
        .map_err(|_| OpenError::WrongKeyOrTampered)?;
    String::from_utf8(plaintext).map_err(|_| OpenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn sealed_secret_opens_to_the_same_text() {
        let key = SecretKey::generate();
        let sealed = seal(&key, SECRET);
        assert!(sealed.starts_with("v1."), "{sealed}");
        assert!(!sealed.contains(SECRET));
        assert_eq!(open(&key, &sealed), Ok(SECRET.to_owned()));
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let key = SecretKey::generate();
        assert_ne!(seal(&key, SECRET), seal(&key, SECRET));
    }

    #[test]
    fn tampered_ciphertext_does_not_open() {
        let key = SecretKey::generate();
        let sealed = seal(&key, SECRET);
        let mut bytes = STANDARD.decode(&sealed[3..]).expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("v1.{}", STANDARD.encode(bytes));
        assert_eq!(open(&key, &tampered), Err(OpenError::WrongKeyOrTampered));
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = seal(&SecretKey::generate(), SECRET);
        assert_eq!(
            open(&SecretKey::generate(), &sealed),
            Err(OpenError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        let key = SecretKey::generate();
        assert_eq!(open(&key, "whsec_plain"), Err(OpenError::Malformed));
        assert_eq!(open(&key, "v1.!!!"), Err(OpenError::Malformed));
        assert_eq!(open(&key, "v1.AAAA"), Err(OpenError::Malformed));
    }

    #[test]
    fn key_round_trips_through_base64_and_checks_length() {
        let key = SecretKey::generate();
        let again = SecretKey::from_base64(&key.to_base64()).expect("valid key");
        assert_eq!(open(&again, &seal(&key, SECRET)), Ok(SECRET.to_owned()));
        assert_eq!(
            SecretKey::from_base64("c2hvcnQ=").map(|_| ()),
            Err(KeyError::WrongLength(5))
        );
        assert_eq!(
            SecretKey::from_base64("not base64!").map(|_| ()),
            Err(KeyError::NotBase64)
        );
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }
}
