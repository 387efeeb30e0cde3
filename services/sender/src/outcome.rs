//! The one place that decides what an attempt's result means for the delivery.
//!
//! 2xx is delivered. 410 Gone disables the subscription and dead-letters the delivery, and so
//! does an endpoint address the address guard refuses. Every other status (3xx included, since
//! redirects are not followed), timeouts and connection, DNS and TLS failures are retried. On 429 and 503 a valid `Retry-After` sets the earliest retry.

use std::time::Duration;

use http::StatusCode;

use crate::attempt::AttemptResult;

/// The next step for a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint responded with 2xx.
    Delivered,
    /// Try again later; not before `wait_at_least` when the endpoint asked for a wait.
    Retry { wait_at_least: Option<Duration> },
    /// The endpoint responded with 410 Gone: disable the subscription and dead-letter the delivery.
    Disable,
    /// No attempt can succeed: dead-letter the delivery now.
    DeadLetter(DeadLetterReason),
}

/// The reason a delivery was dead-lettered: the value of `herald-dead-letter-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Every tier of the retry schedule was used and the last attempt failed too.
    RetriesExhausted,
    /// The endpoint responded with 410 Gone, which requests no more deliveries.
    Gone,
    /// The delivery names a subscription that does not exist.
    SubscriptionNotFound,
    /// The subscription is disabled.
    SubscriptionDisabled,
    /// The delivery record lacks a header Herald needs.
    MalformedDelivery,
    /// The endpoint's address is in a range webhooks may not reach (`sender.allowed_networks`).
    BlockedAddress,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries_exhausted",
            Self::Gone => "gone",
            Self::SubscriptionNotFound => "subscription_not_found",
            Self::SubscriptionDisabled => "subscription_disabled",
            Self::MalformedDelivery => "malformed_delivery",
            Self::BlockedAddress => "blocked_address",
        }
    }
}

/// Maps an attempt's result to the delivery's next step. `max_retry_after` caps how long an
/// endpoint may ask Herald to wait.
pub fn decide(result: &AttemptResult, max_retry_after: Duration) -> Outcome {
    let response = match result {
        Ok(response) => response,
        Err(crate::attempt::AttemptError::BlockedAddress(_)) => {
            return Outcome::DeadLetter(DeadLetterReason::BlockedAddress);
        }
        Err(_) => {
            return Outcome::Retry {
                wait_at_least: None,
            };
        }
    };
    if response.status.is_success() {
        return Outcome::Delivered;
    }
    if response.status == StatusCode::GONE {
        return Outcome::Disable;
    }
    let honours_retry_after = matches!(
        response.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    let wait_at_least = response
        .retry_after
        .filter(|_| honours_retry_after)
        .map(|wait| wait.min(max_retry_after));
    Outcome::Retry { wait_at_least }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::AttemptError;
    use crate::client::HttpResponse;

    const CAP: Duration = Duration::from_secs(3600);

    fn answered(code: u16, retry_after: Option<u64>) -> AttemptResult {
        Ok(HttpResponse {
            status: StatusCode::from_u16(code).expect("valid status"),
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    fn retry(wait: Option<u64>) -> Outcome {
        Outcome::Retry {
            wait_at_least: wait.map(Duration::from_secs),
        }
    }

    #[test]
    fn any_2xx_is_delivered() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(
                decide(&answered(code, None), CAP),
                Outcome::Delivered,
                "{code}"
            );
        }
    }

    #[test]
    fn gone_disables_the_subscription() {
        assert_eq!(decide(&answered(410, None), CAP), Outcome::Disable);
    }

    #[test]
    fn redirects_are_retried_not_followed() {
        for code in [301, 302, 307, 308] {
            assert_eq!(decide(&answered(code, None), CAP), retry(None), "{code}");
        }
    }

    #[test]
    fn other_statuses_are_retried() {
        for code in [400, 401, 404, 408, 409, 422, 500, 502, 504] {
            assert_eq!(decide(&answered(code, None), CAP), retry(None), "{code}");
        }
    }

    #[test]
    fn errors_are_retried() {
        for error in [
            AttemptError::Timeout,
            AttemptError::Connect("connection refused".into()),
            AttemptError::Request("connection reset".into()),
        ] {
            assert_eq!(decide(&Err(error.clone()), CAP), retry(None), "{error:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503() {
        assert_eq!(decide(&answered(429, Some(3)), CAP), retry(Some(3)));
        assert_eq!(decide(&answered(503, Some(120)), CAP), retry(Some(120)));
    }

    #[test]
    fn retry_after_is_capped() {
        assert_eq!(
            decide(&answered(429, Some(999_999)), CAP),
            retry(Some(3600))
        );
    }

    #[test]
    fn retry_after_is_ignored_on_other_statuses() {
        assert_eq!(decide(&answered(500, Some(30)), CAP), retry(None));
    }
}
