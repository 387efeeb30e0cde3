//! Signing secrets at rest: sealed with AES-256-GCM under a key from the deployment's secrets.
//! Each sealed value names the key that sealed it, so keys can be rotated: the first key of a
//! [`KeyRing`] seals, and every key in it opens. The subscription id is bound to each sealed
//! value as associated data, so a sealed secret copied to another subscription does not open.
//!
//! A sealed value reads `sealed:v1:<key id>:<base64 of the 12-byte nonce and the ciphertext>`.
//!
//! NOTE: nothing seals secrets yet. Subscriptions still come from a YAML file with secrets in
//! plain text; the subscriptions topic is meant to store only sealed values.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";
const KEY_BYTES: usize = 32;
/// Random bytes in a secret Herald generates.
pub const GENERATED_SECRET_BYTES: usize = 32;
const MAX_KEY_ID_BYTES: usize = 64;

/// The error of building a key ring, or of sealing or opening a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionError {
    #[error("no encryption key given")]
    NoKey,
    #[error("key entry {position} must read <id>:<base64 of 32 bytes>: {detail}")]
    InvalidKey { position: usize, detail: String },
    #[error("key id {0:?} is given twice")]
    DuplicateKeyId(String),
    #[error("the value is not sealed by Herald (expected the prefix {PREFIX})")]
    NotSealed,
    #[error("the value was sealed with key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("the sealed value is damaged, or belongs to another subscription")]
    Damaged,
    #[error("the system random source failed")]
    Random,
}

/// The keys that seal and open secrets.
pub struct KeyRing {
    current: String,
    keys: HashMap<String, LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        formatter
            .debug_struct("KeyRing")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Builds a ring from entries written `<id>:<base64 of 32 bytes>`; the first one seals.
    pub fn parse(entries: &[String]) -> Result<Self, EncryptionError> {
        let mut keys = HashMap::new();
        let mut current = None;
        for (position, entry) in entries.iter().enumerate() {
            let invalid = |detail: &str| EncryptionError::InvalidKey {
                position,
                detail: detail.to_owned(),
            };
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| invalid("no ':' after the id"))?;
            let valid_id = !id.is_empty()
                && id.len() <= MAX_KEY_ID_BYTES
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(invalid(
                    "the id must be 1 to 64 characters of A-Z, a-z, 0-9, '-' or '_'",
                ));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| invalid("the key is not valid base64"))?;
            if bytes.len() != KEY_BYTES {
                return Err(invalid(&format!(
                    "the key decodes to {} bytes, not {KEY_BYTES}",
                    bytes.len()
                )));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| invalid("the key is not an AES-256 key"))?;
            if keys.insert(id.to_owned(), LessSafeKey::new(key)).is_some() {
                return Err(EncryptionError::DuplicateKeyId(id.to_owned()));
            }
            current.get_or_insert_with(|| id.to_owned());
        }
        Ok(Self {
            current: current.ok_or(EncryptionError::NoKey)?,
            keys,
            random: SystemRandom::new(),
        })
    }

    /// Seals `plain` for the subscription `subscription_id` under the current key.
    pub fn seal(&self, plain: &str, subscription_id: &str) -> Result<String, EncryptionError> {
        let key = &self.keys[&self.current];
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| EncryptionError::Random)?;
        let mut sealed = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(subscription_id.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| EncryptionError::Damaged)?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}:{}",
            self.current,
            STANDARD.encode(stored)
        ))
    }

    /// Opens a value sealed for `subscription_id` by any key of the ring.
    pub fn open(&self, sealed: &str, subscription_id: &str) -> Result<String, EncryptionError> {
        let rest = sealed
            .strip_prefix(PREFIX)
            .ok_or(EncryptionError::NotSealed)?;
        let (id, encoded) = rest.split_once(':').ok_or(EncryptionError::Damaged)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| EncryptionError::UnknownKey(id.to_owned()))?;
        let mut stored = STANDARD
            .decode(encoded)
            .map_err(|_| EncryptionError::Damaged)?;
        if stored.len() < NONCE_LEN {
            return Err(EncryptionError::Damaged);
        }
        let mut ciphertext = stored.split_off(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(&stored).map_err(|_| EncryptionError::Damaged)?;
        let plain = key
            .open_in_place(
                nonce,
                Aad::from(subscription_id.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| EncryptionError::Damaged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| EncryptionError::Damaged)
    }

    /// Returns whether `sealed` was sealed with a key other than the current one, which a key
    /// rotation seals again.
    pub fn needs_resealing(&self, sealed: &str) -> bool {
        sealed
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(id, _)| id != self.current)
    }
}

/// Generates a signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn generate_secret() -> Result<String, EncryptionError> {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| EncryptionError::Random)?;
    Ok(format!("whsec_{}", STANDARD.encode(bytes)))
}

/// Returns `bytes` random bytes as lowercase hex, for generated ids.
pub fn random_hex(bytes: usize) -> Result<String, EncryptionError> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| EncryptionError::Random)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> String {
        format!("{id}:{}", STANDARD.encode([byte; KEY_BYTES]))
    }

    #[test]
    fn sealed_secret_opens_only_for_its_subscription() {
        let ring = KeyRing::parse(&[key("k1", 7)]).expect("valid ring");
        let plain = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sealed = ring.seal(plain, "ledger").expect("sealed");
        assert!(sealed.starts_with("sealed:v1:k1:"), "{sealed}");
        assert!(
            !sealed.contains("MfKQ9r8G"),
            "the plain secret shows through"
        );
        assert_ne!(
            ring.seal(plain, "ledger").expect("sealed"),
            sealed,
            "nonces differ"
        );
        assert_eq!(ring.open(&sealed, "ledger").as_deref(), Ok(plain));
        assert_eq!(ring.open(&sealed, "crm"), Err(EncryptionError::Damaged));
    }

    #[test]
    fn damaged_or_foreign_values_do_not_open() {
        let ring = KeyRing::parse(&[key("k1", 7)]).expect("valid ring");
        let sealed = ring.seal("whsec_abc", "ledger").expect("sealed");
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert_eq!(ring.open(&flipped, "ledger"), Err(EncryptionError::Damaged));
        assert_eq!(
            ring.open("whsec_abc", "ledger"),
            Err(EncryptionError::NotSealed)
        );
        assert_eq!(
            ring.open("sealed:v1:k1:AAAA", "ledger"),
            Err(EncryptionError::Damaged)
        );

        let other = KeyRing::parse(&[key("k9", 9)]).expect("valid ring");
        assert_eq!(
            other.open(&sealed, "ledger"),
            Err(EncryptionError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn rotated_ring_opens_old_values() {
        let old = KeyRing::parse(&[key("2026-06", 1)]).expect("valid ring");
        let sealed_before = old.seal("whsec_abc", "ledger").expect("sealed");
        let rotated = KeyRing::parse(&[key("2026-12", 2), key("2026-06", 1)]).expect("valid ring");
        assert_eq!(
            rotated.open(&sealed_before, "ledger").as_deref(),
            Ok("whsec_abc")
        );
        assert!(rotated.needs_resealing(&sealed_before));
        let sealed_after = rotated.seal("whsec_abc", "ledger").expect("sealed");
        assert!(sealed_after.starts_with("sealed:v1:2026-12:"));
        assert!(!rotated.needs_resealing(&sealed_after));
    }

    #[test]
    fn invalid_key_entries_are_named() {
        let cases = [
            (vec![], EncryptionError::NoKey),
            (
                vec!["no-colon".to_owned()],
                EncryptionError::InvalidKey {
                    position: 0,
                    detail: "no ':' after the id".into(),
                },
            ),
            (
                vec![key("k1", 1), format!("k2:{}", STANDARD.encode([1u8; 16]))],
                EncryptionError::InvalidKey {
                    position: 1,
                    detail: "the key decodes to 16 bytes, not 32".into(),
                },
            ),
            (
                vec![key("k1", 1), key("k1", 2)],
                EncryptionError::DuplicateKeyId("k1".into()),
            ),
        ];
        for (entries, expected) in cases {
            assert_eq!(
                KeyRing::parse(&entries).map(|_| ()),
                Err(expected),
                "{entries:?}"
            );
        }
        let debug = format!(
            "{:?}",
            KeyRing::parse(&[key("k1", 42)]).expect("valid ring")
        );
        assert!(
            !debug.contains(&STANDARD.encode([42u8; KEY_BYTES])),
            "{debug}"
        );
    }

    #[test]
    fn generated_secrets_are_random_and_valid() {
        let first = generate_secret().expect("secret");
        let second = generate_secret().expect("secret");
        assert_ne!(first, second);
        let parsed = herald_verify::Secret::parse(&first).expect("a valid whsec_ secret");
        assert_eq!(parsed.expose(), first);
        let decoded = STANDARD
            .decode(first.trim_start_matches("whsec_"))
            .expect("base64");
        assert_eq!(decoded.len(), GENERATED_SECRET_BYTES);
    }
}
