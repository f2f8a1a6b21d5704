//! The API key format: `jns_live_` (or `jns_test_`) + 30 random base62
//! characters (178 bits) + a 6-character base62 CRC32 of those 30, as
//! GitHub's tokens do. The checksum lets us refuse a mistyped or truncated
//! key without a database lookup, and lets secret scanners recognise a
//! leaked one. Only the SHA-256 of a key is ever stored.

use std::fmt;

use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

const LIVE_PREFIX: &str = "jns_live_";
const TEST_PREFIX: &str = "jns_test_";
const SECRET_LEN: usize = 30;
const CHECKSUM_LEN: usize = 6;
/// How much of the secret a masked key shows: `jns_live_a1b2****`.
const SHOWN_LEN: usize = 4;
pub const KEY_LEN: usize = LIVE_PREFIX.len() + SECRET_LEN + CHECKSUM_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Test,
}

impl Mode {
    fn prefix(self) -> &'static str {
        match self {
            Mode::Live => LIVE_PREFIX,
            Mode::Test => TEST_PREFIX,
        }
    }
}

/// A plaintext key. Its `Debug` and `Display` never show it: use
/// [`PlainKey::expose`] at the one place it is handed to the client.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainKey(String);

impl PlainKey {
    /// A fresh random key.
    pub fn generate(mode: Mode) -> Self {
        let secret = Alphanumeric.sample_string(&mut rand::thread_rng(), SECRET_LEN);
        Self(format!("{}{secret}{}", mode.prefix(), checksum(&secret)))
    }

    /// Check a presented key's shape and checksum, without any lookup.
    pub fn parse(presented: &str) -> Result<Self, InvalidFormat> {
        let rest = presented
            .strip_prefix(LIVE_PREFIX)
            .or_else(|| presented.strip_prefix(TEST_PREFIX))
            .ok_or(InvalidFormat)?;
        if rest.len() != SECRET_LEN + CHECKSUM_LEN
            || !rest.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(InvalidFormat);
        }
        let (secret, sum) = rest.split_at(SECRET_LEN);
        if checksum(secret) != sum {
            return Err(InvalidFormat);
        }
        Ok(Self(presented.to_owned()))
    }

    /// Lower-case hex SHA-256 of the whole key: what is stored and looked up.
    pub fn hash(&self) -> String {
        hash(&self.0)
    }

    /// The displayable start: the prefix and the first characters of the secret.
    pub fn start(&self) -> String {
        self.0[..LIVE_PREFIX.len() + SHOWN_LEN].to_owned()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey([redacted])")
    }
}

/// The masked form shown in lists: `jns_live_a1b2****`.
pub fn masked(start: &str) -> String {
    format!("{start}****")
}

/// Lower-case hex SHA-256.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn checksum(secret: &str) -> String {
    let crc = crc32fast::hash(secret.as_bytes());
    format!("{:0>width$}", base62::encode(crc), width = CHECKSUM_LEN)
}

/// A presented key that cannot be a Jeanus key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the API key is malformed")]
pub struct InvalidFormat;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_have_the_documented_shape() {
        for mode in [Mode::Live, Mode::Test] {
            let key = PlainKey::generate(mode);
            assert_eq!(key.expose().len(), KEY_LEN);
            assert!(key.expose().starts_with(mode.prefix()));
            assert_eq!(PlainKey::parse(key.expose()), Ok(key.clone()));
            assert_eq!(key.start().len(), 13);
            assert_eq!(masked(&key.start()), format!("{}****", &key.expose()[..13]));
        }
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let key = PlainKey::generate(Mode::Live).expose().to_owned();
        for i in LIVE_PREFIX.len()..key.len() {
            let mut bytes = key.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).expect("ascii");
            assert_eq!(
                PlainKey::parse(&typo),
                Err(InvalidFormat),
                "typo at {i} accepted"
            );
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let key = PlainKey::generate(Mode::Live).expose().to_owned();
        let cases = [
            String::new(),
            "jns_live_".into(),
            key[..key.len() - 1].to_owned(),
            format!("{key}x"),
            key.replacen("jns_live_", "jes_live_", 1),
            key.replacen("jns_live_", "JNS_LIVE_", 1),
            format!("{}-{}", &key[..20], &key[21..]),
        ];
        for case in cases {
            assert_eq!(
                PlainKey::parse(&case),
                Err(InvalidFormat),
                "{case:?} accepted"
            );
        }
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = PlainKey::generate(Mode::Live);
        assert!(!format!("{key:?}").contains(&key.expose()[9..]));
    }
}
