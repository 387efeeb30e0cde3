//! The one place that decides what an attempt's result means for the delivery.
//!
//! Retry tiers are not built yet, so every failed attempt is dead-lettered at once and nothing is
//! lost silently. The dead letter keeps the status or error.

use http::StatusCode;

use crate::attempt::AttemptResult;

/// The next step for a delivery after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// The delivery goes to the dead-letter topic for this reason.
    DeadLetter(DeadLetterReason),
}

/// Why a delivery was dead-lettered; the value of `herald-dead-letter-reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The endpoint answered with a status other than 2xx, or gave no answer.
    AttemptFailed,
    /// The endpoint answered 410 Gone: it asked for no more deliveries.
    Gone,
    /// The delivery names a subscription that does not exist.
    SubscriptionNotFound,
    /// The subscription is disabled.
    SubscriptionDisabled,
    /// The delivery record lacks a header Herald needs.
    MalformedDelivery,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttemptFailed => "attempt_failed",
            Self::Gone => "gone",
            Self::SubscriptionNotFound => "subscription_not_found",
            Self::SubscriptionDisabled => "subscription_disabled",
            Self::MalformedDelivery => "malformed_delivery",
        }
    }
}

/// Maps an attempt's result to the delivery's outcome.
pub fn decide(result: &AttemptResult) -> Outcome {
    match result {
        Ok(status) if status.is_success() => Outcome::Delivered,
        Ok(status) if *status == StatusCode::GONE => Outcome::DeadLetter(DeadLetterReason::Gone),
        Ok(_) | Err(_) => Outcome::DeadLetter(DeadLetterReason::AttemptFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::AttemptError;

    #[test]
    fn any_2xx_is_delivered() {
        for code in [200, 201, 202, 204, 299] {
            let status = StatusCode::from_u16(code).expect("valid status");
            assert_eq!(decide(&Ok(status)), Outcome::Delivered, "{code}");
        }
    }

    #[test]
    fn redirect_is_a_failure() {
        assert_eq!(
            decide(&Ok(StatusCode::MOVED_PERMANENTLY)),
            Outcome::DeadLetter(DeadLetterReason::AttemptFailed)
        );
    }

    #[test]
    fn gone_has_its_own_reason() {
        assert_eq!(
            decide(&Ok(StatusCode::GONE)),
            Outcome::DeadLetter(DeadLetterReason::Gone)
        );
    }

    #[test]
    fn errors_and_other_statuses_are_failures() {
        for result in [
            Ok(StatusCode::INTERNAL_SERVER_ERROR),
            Ok(StatusCode::TOO_MANY_REQUESTS),
            Ok(StatusCode::BAD_REQUEST),
            Err(AttemptError::Timeout),
            Err(AttemptError::Connect("refused".into())),
        ] {
            assert_eq!(
                decide(&result),
                Outcome::DeadLetter(DeadLetterReason::AttemptFailed),
                "{result:?}"
            );
        }
    }
}
