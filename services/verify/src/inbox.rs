//! The whole receiving check in one framework-neutral call: a function of the request's method,
//! headers, raw body and source address, which any HTTP server can call before it parses the
//! body. It checks the method and the source, verifies the signature and the timestamp, and
//! recognises ids already received.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

use crate::network::SourceAllowList;
use crate::replay::ReplayStore;
use crate::verify::{Verified, Verifier, VerifyError};

/// A request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub verified: Verified,
    /// `false` when this `webhook-id` was already accepted within the replay store's time: a
    /// retry or a replay. Respond with 2xx and do not process the event again.
    pub first_time: bool,
}

/// The reason a request was refused, with the status to respond with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("method {0} is not POST")]
    Method(Method),
    #[error("source address {0} is not in the allow-list")]
    Source(IpAddr),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl Rejection {
    /// Returns the status to respond with: 405 for another method, 403 for a source outside the
    /// allow-list, 400 for missing or malformed headers, 401 for a signature that does not match
    /// or a timestamp outside the tolerance.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Source(_) => StatusCode::FORBIDDEN,
            Self::Verify(
                VerifyError::MissingHeader(_)
                | VerifyError::InvalidHeader(_)
                | VerifyError::InvalidTimestamp,
            ) => StatusCode::BAD_REQUEST,
            Self::Verify(_) => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A verifier, a replay store and an optional source allow-list, shared by every request of a
/// receiving endpoint.
#[derive(Debug)]
pub struct Inbox {
    verifier: Verifier,
    replays: ReplayStore,
    sources: Option<SourceAllowList>,
}

impl Inbox {
    /// Builds an inbox that remembers ids for twice the verifier's tolerance, the longest a
    /// captured request stays within the tolerance.
    pub fn new(verifier: Verifier) -> Self {
        let ttl = verifier.tolerance() * 2;
        Self {
            verifier,
            replays: ReplayStore::new(ttl),
            sources: None,
        }
    }

    /// Remembers ids for `ttl` instead, such as the length of Herald's retry schedule so that
    /// every retry is recognised; never less than twice the tolerance.
    pub fn remember_ids_for(mut self, ttl: Duration) -> Self {
        self.replays = ReplayStore::new(ttl.max(self.verifier.tolerance() * 2));
        self
    }

    /// Accepts requests only from these networks.
    pub fn allow_sources(mut self, sources: SourceAllowList) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Checks one request at the current time. `source` is the client address, when known.
    pub fn receive(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: &[u8],
        source: Option<IpAddr>,
    ) -> Result<Accepted, Rejection> {
        self.receive_at(method, headers, body, source, SystemTime::now())
    }

    /// Checks one request as if the time were `now`.
    pub fn receive_at(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body: &[u8],
        source: Option<IpAddr>,
        now: SystemTime,
    ) -> Result<Accepted, Rejection> {
        if method != Method::POST {
            return Err(Rejection::Method(method.clone()));
        }
        if let Some(sources) = &self.sources {
            // Without a known address the request cannot be shown to come from the list.
            let address = source.ok_or(Rejection::Source(IpAddr::from([0, 0, 0, 0])))?;
            if !sources.allows(address) {
                return Err(Rejection::Source(address));
            }
        }
        let verified = self.verifier.verify_at(headers, body, now)?;
        // Only verified requests are remembered, so forged ones cannot fill the store.
        let first_time = self.replays.first_time(&verified.id, now);
        Ok(Accepted {
            verified,
            first_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::signature::{Secret, signature_header};

    const NOW: u64 = 1_764_493_200;

    fn secret() -> Secret {
        Secret::from_bytes(vec![9; 32]).expect("valid secret")
    }

    fn request(id: &str, timestamp: u64, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().expect("valid header"));
        headers.insert(
            "webhook-timestamp",
            timestamp.to_string().parse().expect("valid header"),
        );
        headers.insert(
            "webhook-signature",
            signature_header(&[secret()], id, timestamp, body)
                .parse()
                .expect("valid header"),
        );
        headers
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn inbox() -> Inbox {
        Inbox::new(Verifier::new(vec![secret()]).expect("verifier"))
    }

    #[test]
    fn accepts_once_then_recognises_the_repeat() {
        let inbox = inbox();
        let headers = request("msg_1", NOW, b"{}");
        let first = inbox
            .receive_at(&Method::POST, &headers, b"{}", None, at(NOW))
            .expect("accepted");
        assert!(first.first_time);
        let again = inbox
            .receive_at(&Method::POST, &headers, b"{}", None, at(NOW + 60))
            .expect("accepted");
        assert!(!again.first_time, "a replay within the tolerance");
        let retry = request("msg_1", NOW + 120, b"{}");
        let retried = inbox
            .receive_at(&Method::POST, &retry, b"{}", None, at(NOW + 120))
            .expect("accepted");
        assert!(!retried.first_time, "a retry signed again with the same id");
    }

    #[test]
    fn rejections_carry_their_status() {
        let inbox = inbox();
        let headers = request("msg_1", NOW, b"{}");
        let cases = [
            (
                inbox.receive_at(&Method::GET, &headers, b"{}", None, at(NOW)),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                inbox.receive_at(&Method::POST, &HeaderMap::new(), b"{}", None, at(NOW)),
                StatusCode::BAD_REQUEST,
            ),
            (
                inbox.receive_at(&Method::POST, &headers, b"{ }", None, at(NOW)),
                StatusCode::UNAUTHORIZED,
            ),
            (
                inbox.receive_at(&Method::POST, &headers, b"{}", None, at(NOW + 3_600)),
                StatusCode::UNAUTHORIZED,
            ),
        ];
        for (result, status) in cases {
            assert_eq!(result.map_err(|rejection| rejection.status()), Err(status));
        }
        assert!(
            inbox.replays.is_empty(),
            "rejected requests are not remembered"
        );
    }

    #[test]
    fn sources_outside_the_list_are_forbidden() {
        let inbox =
            inbox().allow_sources(SourceAllowList::parse(&["203.0.113.0/24"]).expect("valid"));
        let headers = request("msg_1", NOW, b"{}");
        let outside: IpAddr = "198.51.100.7".parse().expect("address");
        let rejected = inbox.receive_at(&Method::POST, &headers, b"{}", Some(outside), at(NOW));
        assert_eq!(rejected, Err(Rejection::Source(outside)));
        let unknown = inbox.receive_at(&Method::POST, &headers, b"{}", None, at(NOW));
        assert_eq!(
            unknown.map_err(|rejection| rejection.status()),
            Err(StatusCode::FORBIDDEN)
        );
        let inside: IpAddr = "203.0.113.7".parse().expect("address");
        assert!(
            inbox
                .receive_at(&Method::POST, &headers, b"{}", Some(inside), at(NOW))
                .is_ok()
        );
    }
}
