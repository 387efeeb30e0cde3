//! Wall-clock helpers: RFC 3339 timestamps for record headers and Unix seconds for signatures.

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `at` as RFC 3339 in UTC with millisecond precision.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Returns whole seconds since the Unix epoch, or 0 for a clock set before 1970.
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
