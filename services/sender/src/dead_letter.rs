//! Builds the headers of a delivery's next record, on a retry tier or the dead-letter topic: the
//! original headers unchanged, plus what happened so far. Headers Herald sets are replaced, never
//! repeated, so a delivery that is retried, dead-lettered, redriven and fails again does not grow.

use std::time::SystemTime;

use rdkafka::message::{Header, OwnedHeaders};

use herald_core::headers;
use herald_core::time::rfc3339;

use crate::attempt::AttemptResult;
use crate::outcome::DeadLetterReason;

/// The longest `herald-last-error` kept, in bytes.
const MAX_ERROR_BYTES: usize = 1024;

/// The attempt history of a delivery at the time its next record is written.
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

/// Returns the dead letter's headers: the delivery's own, then Herald's account of what happened.
pub fn headers(
    original: Option<&OwnedHeaders>,
    reason: DeadLetterReason,
    history: &History<'_>,
) -> OwnedHeaders {
    with_history(
        original,
        history,
        &[(headers::DEAD_LETTER_REASON, reason.as_str())],
    )
}

/// Returns the headers of a delivery parked on tier `tier_name` until `due_at`.
pub fn retry_headers(
    original: Option<&OwnedHeaders>,
    history: &History<'_>,
    tier_name: &str,
    due_at: SystemTime,
) -> OwnedHeaders {
    let due_at = rfc3339(due_at);
    with_history(
        original,
        history,
        &[(headers::TIER, tier_name), (headers::DUE_AT, &due_at)],
    )
}

/// Returns the headers of a delivery parked until `due_at` without an attempt: everything as it
/// was, with a new due time and the count of parkings.
pub fn park_headers(
    original: Option<&OwnedHeaders>,
    due_at: SystemTime,
    parked: u32,
) -> OwnedHeaders {
    let due_at = rfc3339(due_at);
    let parked = parked.to_string();
    headers::copy_except(
        original,
        OwnedHeaders::new(),
        &[headers::DUE_AT, headers::PARKED],
    )
    .insert(Header {
        key: headers::DUE_AT,
        value: Some(due_at.as_str()),
    })
    .insert(Header {
        key: headers::PARKED,
        value: Some(parked.as_str()),
    })
}

fn with_history(
    original: Option<&OwnedHeaders>,
    history: &History<'_>,
    extra: &[(&str, &str)],
) -> OwnedHeaders {
    let mut result = headers::copy_except(original, OwnedHeaders::new(), &headers::ATTEMPT_HISTORY);
    let mut add = |key: &str, value: &str| {
        result = std::mem::replace(&mut result, OwnedHeaders::new()).insert(Header {
            key,
            value: Some(value),
        });
    };
    for (key, value) in extra {
        add(key, value);
    }
    add(headers::ATTEMPT, &history.attempts.to_string());
    if let Some(at) = history.first_attempt_at {
        add(headers::FIRST_ATTEMPT_AT, &rfc3339(at));
    }
    if let Some(at) = history.last_attempt_at {
        add(headers::LAST_ATTEMPT_AT, &rfc3339(at));
    }
    match history.last_result {
        Some(Ok(response)) => add(headers::LAST_STATUS, response.status.as_str()),
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
    use crate::client::HttpResponse;

    fn values(headers: &OwnedHeaders, name: &str) -> Vec<String> {
        headers
            .iter()
            .filter(|h| h.key == name)
            .filter_map(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    fn history(result: Option<&AttemptResult>) -> History<'_> {
        History {
            attempts: 2,
            first_attempt_at: Some(SystemTime::now()),
            last_attempt_at: Some(SystemTime::now()),
            last_result: result,
        }
    }

    #[test]
    fn keeps_original_headers_and_adds_history() {
        let original = OwnedHeaders::new().insert(Header {
            key: "herald-event-id",
            value: Some("evt_1"),
        });
        let result: AttemptResult = Ok(HttpResponse {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
        });
        let built = headers(
            Some(&original),
            DeadLetterReason::RetriesExhausted,
            &history(Some(&result)),
        );
        assert_eq!(values(&built, "herald-event-id"), ["evt_1"]);
        assert_eq!(
            values(&built, "herald-dead-letter-reason"),
            ["retries_exhausted"]
        );
        assert_eq!(values(&built, "herald-last-status"), ["503"]);
        assert_eq!(values(&built, "herald-attempt"), ["2"]);
    }

    #[test]
    fn headers_do_not_grow_on_repeat() {
        let result: AttemptResult = Err(AttemptError::Timeout);
        let once = headers(
            None,
            DeadLetterReason::RetriesExhausted,
            &history(Some(&result)),
        );
        let retried = retry_headers(
            Some(&once),
            &history(Some(&result)),
            "10s",
            SystemTime::now(),
        );
        let twice = headers(
            Some(&retried),
            DeadLetterReason::RetriesExhausted,
            &history(Some(&result)),
        );
        assert_eq!(once.count(), twice.count());
        assert_eq!(values(&twice, "herald-last-error"), ["timeout: timed out"]);
        assert!(values(&twice, "herald-tier").is_empty());
        assert!(values(&twice, "herald-due-at").is_empty());
    }

    #[test]
    fn retry_headers_carry_tier_and_due_time() {
        let built = retry_headers(None, &history(None), "1m", std::time::UNIX_EPOCH);
        assert_eq!(values(&built, "herald-tier"), ["1m"]);
        assert_eq!(
            values(&built, "herald-due-at"),
            ["1970-01-01T00:00:00.000Z"]
        );
        assert_eq!(values(&built, "herald-attempt"), ["2"]);
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let text = "é".repeat(1000);
        let cut = truncate(&text, 1023);
        assert_eq!(cut.len(), 1022);
    }
}
