//! One attempt of a delivery: sign the body with the subscription's secrets at the current time,
//! POST it, and report what happened.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Full;

use herald_core::signing;
use herald_core::subscription::Subscription;
use herald_core::time::unix_seconds;

use crate::client::{HttpResponse, WebhookClient};

const HERALD_USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

/// The result of one attempt: the endpoint's response, or the error that prevented one.
pub type AttemptResult = Result<HttpResponse, AttemptError>;

/// The error of an attempt that got no HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    /// The TLS handshake failed, such as an untrusted or expired certificate.
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("cannot build the request: {0}")]
    InvalidRequest(String),
    /// No request was made: the endpoint's address is in a range webhooks may not reach.
    #[error("not sent: {0}")]
    BlockedAddress(String),
    /// No request was made: the subscription's circuit is open after repeated failures.
    #[error("not sent: the subscription's circuit is open after repeated failures")]
    CircuitOpen,
}

impl AttemptError {
    /// Returns a short stable name, for headers, logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Request(_) => "request",
            Self::InvalidRequest(_) => "invalid_request",
            Self::BlockedAddress(_) => "blocked_address",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// The parts of a delivery an attempt needs.
pub struct AttemptInput<'a> {
    pub webhook_id: &'a str,
    pub body: Bytes,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// Signs and sends one attempt.
pub async fn attempt(
    client: &WebhookClient,
    subscription: &Subscription,
    input: AttemptInput<'_>,
) -> AttemptResult {
    let timestamp = unix_seconds(SystemTime::now());
    let signature = signing::signature_header(
        &subscription.signing_secrets(SystemTime::now()),
        input.webhook_id,
        timestamp,
        &input.body,
    );

    let mut builder = Request::post(subscription.url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static(HERALD_USER_AGENT))
        .header("webhook-id", input.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    for (name, value) in &subscription.headers {
        builder = builder.header(name, value);
    }
    // Trace context comes from the publisher unchecked, so it is forwarded only when it is a
    // valid header value.
    for (name, value) in [
        ("traceparent", input.traceparent),
        ("tracestate", input.tracestate),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            builder = builder.header(name, value);
        }
    }
    let request = builder
        .body(Full::new(input.body))
        .map_err(|error| AttemptError::InvalidRequest(error.to_string()))?;

    client
        .send(
            request,
            Duration::from_millis(subscription.timeout_ms),
            subscription.client_identity.as_deref(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use herald_core::config::Problems;
    use herald_core::subscription::{SubscriptionSpec, check_spec};

    use super::*;

    #[tokio::test]
    async fn extra_headers_are_sent_beside_the_signature() {
        const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let secret = herald_verify::Secret::parse(SECRET).expect("valid secret");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver = crate::client::test_receiver(listener, "headers", secret, true);
        let mut spec = SubscriptionSpec::new(
            "ledger",
            &format!("http://{}/hook", receiver.address()),
            &["*"],
            vec![SECRET.into()],
        );
        spec.headers.insert("X-Tenant".into(), "acme-bank".into());
        let mut problems = Problems::default();
        let subscription = check_spec(&spec, "s", true, &mut problems).expect("valid");

        let guard = herald_core::address::AddressGuard::new(&["127.0.0.1".into()]).expect("valid");
        let client = crate::client::test_client(guard);
        let input = AttemptInput {
            webhook_id: "evt_headers",
            body: Bytes::from_static(b"{}"),
            traceparent: None,
            tracestate: None,
        };
        let response = attempt(&client, &subscription, input).await.expect("sent");
        assert!(response.status.is_success());
        let requests = receiver.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].headers["x-tenant"], "acme-bank");
        assert!(
            requests[0].verification.is_ok(),
            "the signature still verifies"
        );
    }
}
