//! Checks one request's Standard Webhooks headers against its body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac;
use http::HeaderMap;

use crate::signature::Secret;

/// How far a `webhook-timestamp` may be from the receiver's clock, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A reason a request failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid text")]
    InvalidHeader(&'static str),
    #[error("webhook-timestamp is not a number of seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is older than the tolerance")]
    TooOld,
    #[error("webhook-timestamp is further in the future than the tolerance")]
    TooNew,
    #[error("no signature matches any secret")]
    NoMatchingSignature,
    #[error("at least one secret is required")]
    NoSecrets,
}

/// A request that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `webhook-id`: the same on every retry, so receivers use it to drop duplicates.
    pub id: String,
    /// `webhook-timestamp`, in Unix seconds.
    pub timestamp: u64,
}

/// Verifies requests signed with any of its secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl Verifier {
    /// Builds a verifier; during a secret rotation give both the old and the new secret.
    pub fn new(secrets: Vec<Secret>) -> Result<Self, VerifyError> {
        if secrets.is_empty() {
            return Err(VerifyError::NoSecrets);
        }
        Ok(Self {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// Sets how far the timestamp may be from now, either way.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Returns how far the timestamp may be from now, either way.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Verifies a request against the current time.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// Verifies a request as if the time were `now`.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let id = header(headers, "webhook-id")?;
        let timestamp_text = header(headers, "webhook-timestamp")?;
        let signatures = header(headers, "webhook-signature")?;

        let timestamp: u64 = timestamp_text
            .parse()
            .map_err(|_| VerifyError::InvalidTimestamp)?;
        let now_seconds = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let tolerance = self.tolerance.as_secs();
        if timestamp.saturating_add(tolerance) < now_seconds {
            return Err(VerifyError::TooOld);
        }
        if timestamp > now_seconds.saturating_add(tolerance) {
            return Err(VerifyError::TooNew);
        }

        let candidates: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .collect();
        for secret in &self.secrets {
            let expected = secret.mac(id, timestamp, body);
            // verify_slice compares in constant time.
            if candidates
                .iter()
                .any(|candidate| expected.clone().verify_slice(candidate).is_ok())
            {
                return Ok(Verified {
                    id: id.to_owned(),
                    timestamp,
                });
            }
        }
        Err(VerifyError::NoMatchingSignature)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    headers
        .get(name)
        .ok_or(VerifyError::MissingHeader(name))?
        .to_str()
        .map_err(|_| VerifyError::InvalidHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::signature_header;

    const NOW: u64 = 1_764_493_200;

    fn secret(byte: u8) -> Secret {
        Secret::from_bytes(vec![byte; 32]).expect("valid secret")
    }

    fn signed(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().expect("valid header"));
        headers.insert(
            "webhook-timestamp",
            timestamp.to_string().parse().expect("valid header"),
        );
        headers.insert(
            "webhook-signature",
            signature_header(secrets, id, timestamp, body)
                .parse()
                .expect("valid header"),
        );
        headers
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn accepts_a_valid_request() {
        let verifier = Verifier::new(vec![secret(1)]).expect("verifier");
        let headers = signed(&[secret(1)], "evt_1", NOW, b"{}");
        assert_eq!(
            verifier.verify_at(&headers, b"{}", at(NOW)),
            Ok(Verified {
                id: "evt_1".into(),
                timestamp: NOW
            })
        );
    }

    #[test]
    fn accepts_when_any_signature_matches() {
        let verifier = Verifier::new(vec![secret(2)]).expect("verifier");
        let headers = signed(&[secret(1), secret(2)], "evt_1", NOW, b"{}");
        assert!(verifier.verify_at(&headers, b"{}", at(NOW)).is_ok());
    }

    #[test]
    fn rejects_a_changed_body_or_wrong_secret() {
        let headers = signed(&[secret(1)], "evt_1", NOW, b"{}");
        let verifier = Verifier::new(vec![secret(1)]).expect("verifier");
        assert_eq!(
            verifier.verify_at(&headers, b"{ }", at(NOW)),
            Err(VerifyError::NoMatchingSignature)
        );
        let other = Verifier::new(vec![secret(3)]).expect("verifier");
        assert_eq!(
            other.verify_at(&headers, b"{}", at(NOW)),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn rejects_timestamps_outside_tolerance_both_ways() {
        let verifier = Verifier::new(vec![secret(1)]).expect("verifier");
        let old = signed(&[secret(1)], "evt_1", NOW - 301, b"{}");
        assert_eq!(
            verifier.verify_at(&old, b"{}", at(NOW)),
            Err(VerifyError::TooOld)
        );
        let new = signed(&[secret(1)], "evt_1", NOW + 301, b"{}");
        assert_eq!(
            verifier.verify_at(&new, b"{}", at(NOW)),
            Err(VerifyError::TooNew)
        );
        let edge = signed(&[secret(1)], "evt_1", NOW - 300, b"{}");
        assert!(verifier.verify_at(&edge, b"{}", at(NOW)).is_ok());
    }

    #[test]
    fn reports_missing_and_malformed_headers() {
        let verifier = Verifier::new(vec![secret(1)]).expect("verifier");
        assert_eq!(
            verifier.verify_at(&HeaderMap::new(), b"{}", at(NOW)),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        let mut headers = signed(&[secret(1)], "evt_1", NOW, b"{}");
        headers.insert("webhook-timestamp", "soon".parse().expect("valid header"));
        assert_eq!(
            verifier.verify_at(&headers, b"{}", at(NOW)),
            Err(VerifyError::InvalidTimestamp)
        );
    }

    #[test]
    fn requires_a_secret() {
        assert_eq!(
            Verifier::new(Vec::new()).map(|_| ()),
            Err(VerifyError::NoSecrets)
        );
    }
}
