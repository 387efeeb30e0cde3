//! Builds the dead-letter record of a delivery: the original key, body and headers unchanged,
//! plus what happened. Headers Herald sets are replaced, never repeated, so a dead letter that
//! is redriven and fails again does not grow.

use std::time::SystemTime;

use rdkafka::message::{Header, OwnedHeaders};

use herald_core::headers;
use herald_core::time::rfc3339;

use crate::attempt::AttemptResult;
use crate::outcome::DeadLetterReason;

/// The longest `herald-last-error` kept, in bytes.
const MAX_ERROR_BYTES: usize = 1024;

/// The attempt history of a delivery at the time it is dead-lettered.
pub struct History<'a> {
    pub attempts: u32,
    pub first_attempt_at: Option<SystemTime>,
    pub last_attempt_at: Option<SystemTime>,
    pub last_result: Option<&'a AttemptResult>,
}

impl History<'_> {
    /// Returns the history of a delivery dead-lettered before any attempt, such as one for an
    /// unknown subscription.
    pub fn none() -> Self {
        History {
            attempts: 0,
            first_attempt_at: None,
            last_attempt_at: None,
            last_result: None,
        }
    }
}

const REPLACED: [&str; 6] = [
    headers::ATTEMPT,
    headers::FIRST_ATTEMPT_AT,
    headers::LAST_ATTEMPT_AT,
    headers::LAST_STATUS,
    headers::LAST_ERROR,
    headers::DEAD_LETTER_REASON,
];

/// Returns the dead letter's headers: the delivery's own, then Herald's account of what happened.
pub fn headers(
    original: Option<&OwnedHeaders>,
    reason: DeadLetterReason,
    history: &History<'_>,
) -> OwnedHeaders {
    let mut result = headers::copy_except(original, OwnedHeaders::new(), &REPLACED);
    let mut add = |key: &str, value: &str| {
        result = std::mem::replace(&mut result, OwnedHeaders::new()).insert(Header {
            key,
            value: Some(value),
        });
    };
    add(headers::DEAD_LETTER_REASON, reason.as_str());
    add(headers::ATTEMPT, &history.attempts.to_string());
    if let Some(at) = history.first_attempt_at {
        add(headers::FIRST_ATTEMPT_AT, &rfc3339(at));
    }
    if let Some(at) = history.last_attempt_at {
        add(headers::LAST_ATTEMPT_AT, &rfc3339(at));
    }
    match history.last_result {
        Some(Ok(status)) => add(headers::LAST_STATUS, status.as_str()),
        Some(Err(error)) => add(
            headers::LAST_ERROR,
            &truncate(&format!("{}: {error}", error.class()), MAX_ERROR_BYTES),
        ),
        None => {}
    }
    result
}

/// Cuts `text` to at most `max_bytes` bytes on a character boundary.
fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use rdkafka::message::Headers;

    use super::*;
    use crate::attempt::AttemptError;

    fn values(headers: &OwnedHeaders, name: &str) -> Vec<String> {
        headers
            .iter()
            .filter(|h| h.key == name)
            .filter_map(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    #[test]
    fn keeps_original_headers_and_adds_history() {
        let original = OwnedHeaders::new().insert(Header {
            key: "herald-event-id",
            value: Some("evt_1"),
        });
        let result: AttemptResult = Ok(StatusCode::SERVICE_UNAVAILABLE);
        let now = SystemTime::now();
        let history = History {
            attempts: 1,
            first_attempt_at: Some(now),
            last_attempt_at: Some(now),
            last_result: Some(&result),
        };
        let built = headers(Some(&original), DeadLetterReason::AttemptFailed, &history);
        assert_eq!(values(&built, "herald-event-id"), ["evt_1"]);
        assert_eq!(
            values(&built, "herald-dead-letter-reason"),
            ["attempt_failed"]
        );
        assert_eq!(values(&built, "herald-last-status"), ["503"]);
        assert_eq!(values(&built, "herald-attempt"), ["1"]);
    }

    #[test]
    fn dead_lettering_again_does_not_grow_headers() {
        let result: AttemptResult = Err(AttemptError::Timeout);
        let history = History {
            attempts: 1,
            first_attempt_at: Some(SystemTime::now()),
            last_attempt_at: Some(SystemTime::now()),
            last_result: Some(&result),
        };
        let once = headers(None, DeadLetterReason::AttemptFailed, &history);
        let twice = headers(Some(&once), DeadLetterReason::AttemptFailed, &history);
        assert_eq!(once.count(), twice.count());
        assert_eq!(values(&twice, "herald-last-error"), ["timeout: timed out"]);
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let text = "é".repeat(1000);
        let cut = truncate(&text, 1023);
        assert_eq!(cut.len(), 1022);
    }
}
