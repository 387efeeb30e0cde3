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
    #[error("request failed: {0}")]
    Request(String),
    #[error("cannot build the request: {0}")]
    InvalidRequest(String),
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
            Self::Request(_) => "request",
            Self::InvalidRequest(_) => "invalid_request",
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
        .send(request, Duration::from_millis(subscription.timeout_ms))
        .await
}
