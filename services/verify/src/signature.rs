//! Standard Webhooks signatures: `webhook-signature` carries one `v1,<base64 HMAC-SHA256>` entry
//! per active secret, computed over `{webhook-id}.{webhook-timestamp}.{body}`. Herald's sender
//! signs with this code and receivers verify with it, so both sides compute the same message.
//! Spec: <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a signing secret in its text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest secret accepted, in bytes after decoding, as the Standard Webhooks spec requires.
pub const MIN_SECRET_BYTES: usize = 24;
/// The maximum secret length, in bytes after decoding.
pub const MAX_SECRET_BYTES: usize = 64;

/// The reason a secret's text form was rejected. The secret itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret must start with \"{SECRET_PREFIX}\"")]
    MissingPrefix,
    #[error("secret is not valid base64 after \"{SECRET_PREFIX}\"")]
    InvalidBase64,
    #[error(
        "secret decodes to {0} bytes; between {MIN_SECRET_BYTES} and {MAX_SECRET_BYTES} are required"
    )]
    WrongLength(usize),
}

/// A signing secret. It cannot be built with too few bytes, and its `Debug` output hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        Self::from_bytes(bytes)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(SecretError::WrongLength(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Formats the secret as `whsec_<base64>`, for showing it once to the integrator.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// Computes the HMAC-SHA256 of one signed message.
    pub fn mac(&self, webhook_id: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
        // new_from_slice fails only for key sizes HMAC cannot take, and HMAC takes any size.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Returns the `v1,<base64>` signature of one message.
    pub fn sign(&self, webhook_id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = self
            .mac(webhook_id, timestamp, body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(redacted)")
    }
}

/// Builds the `webhook-signature` header value: one signature per secret, separated by spaces,
/// so a receiver with either the old or the new secret accepts the request during rotation.
pub fn signature_header(
    secrets: &[Secret],
    webhook_id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(webhook_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks reference libraries' test suites.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_like_the_reference_libraries() {
        let secret = Secret::parse(SPEC_SECRET).expect("valid secret");
        assert_eq!(
            secret.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn header_has_one_signature_per_secret() {
        let first = Secret::from_bytes(vec![1; 32]).expect("valid secret");
        let second = Secret::from_bytes(vec![2; 32]).expect("valid secret");
        let header = signature_header(&[first.clone(), second.clone()], "id", 1, b"{}");
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            entries,
            [first.sign("id", 1, b"{}"), second.sign("id", 1, b"{}")]
        );
    }

    #[test]
    fn rejects_malformed_and_short_secrets() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(Secret::parse("whsec_!!!"), Err(SecretError::InvalidBase64));
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ="),
            Err(SecretError::WrongLength(5))
        );
    }

    #[test]
    fn round_trips_and_hides_secret_in_debug() {
        let secret = Secret::parse(SPEC_SECRET).expect("valid secret");
        assert_eq!(secret.expose(), SPEC_SECRET);
        assert_eq!(format!("{secret:?}"), "Secret(redacted)");
    }
}
