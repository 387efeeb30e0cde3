//! Names of the Kafka record headers Herald sets, and helpers to read them. The table in
//! docs/architecture.md explains each one.

use rdkafka::message::{Headers, OwnedHeaders};

pub const EVENT_ID: &str = "herald-event-id";
pub const EVENT_TYPE: &str = "herald-event-type";
pub const SUBSCRIPTION_ID: &str = "herald-subscription-id";
pub const SOURCE: &str = "herald-source";
pub const ATTEMPT: &str = "herald-attempt";
pub const FIRST_ATTEMPT_AT: &str = "herald-first-attempt-at";
pub const LAST_ATTEMPT_AT: &str = "herald-last-attempt-at";
pub const DUE_AT: &str = "herald-due-at";
pub const TIER: &str = "herald-tier";
pub const REDRIVEN_AT: &str = "herald-redriven-at";
pub const PARKED: &str = "herald-parked";
pub const LAST_STATUS: &str = "herald-last-status";
pub const LAST_ERROR: &str = "herald-last-error";
pub const DEAD_LETTER_REASON: &str = "herald-dead-letter-reason";
pub const REJECT_REASON: &str = "herald-reject-reason";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Headers that describe a delivery's attempts so far. The sender replaces them after each
/// attempt, and a redrive drops them so the retry schedule starts again.
pub const ATTEMPT_HISTORY: [&str; 9] = [
    ATTEMPT,
    FIRST_ATTEMPT_AT,
    LAST_ATTEMPT_AT,
    LAST_STATUS,
    LAST_ERROR,
    DEAD_LETTER_REASON,
    DUE_AT,
    TIER,
    PARKED,
];

/// Headers a publisher may set that Herald carries unchanged from the event to every delivery.
pub const CARRIED_FROM_EVENT: [&str; 2] = [TRACEPARENT, TRACESTATE];

/// Returns the value of the last header named `name`, if it is valid UTF-8.
pub fn find<'a, H: Headers>(headers: Option<&'a H>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    headers
        .iter()
        .filter(|header| header.key == name)
        .filter_map(|header| header.value)
        .filter_map(|value| std::str::from_utf8(value).ok())
        .last()
}

/// Copies every header of `from` into `into` except those named in `replaced`, so that headers
/// set again at a later hop never appear twice.
pub fn copy_except<H: Headers>(
    from: Option<&H>,
    mut into: OwnedHeaders,
    replaced: &[&str],
) -> OwnedHeaders {
    let Some(from) = from else {
        return into;
    };
    for header in from.iter() {
        if replaced.contains(&header.key) {
            continue;
        }
        into = into.insert(rdkafka::message::Header {
            key: header.key,
            value: header.value,
        });
    }
    into
}

/// Formats where a record came from, as `topic/partition/offset`.
pub fn source(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}
