//! The attempt log: one JSON record per attempt on the attempts topic, keyed by delivery id, so an
//! operator can read the whole history of any delivery (`herald history`).

use std::time::{Duration, SystemTime};

use serde::Serialize;

use herald_core::time::rfc3339;

use crate::attempt::AttemptResult;

/// One attempt as written to the attempts topic.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord<'a> {
    pub delivery_id: &'a str,
    pub subscription_id: &'a str,
    pub event_id: &'a str,
    pub event_type: Option<&'a str>,
    pub attempt: u32,
    pub attempted_at: String,
    pub duration_ms: u64,
    pub status: Option<u16>,
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    /// `delivered`, `retry`, `dead_letter` or `disabled`.
    pub outcome: &'static str,
    /// The tier of the next attempt, for a retry.
    pub next_tier: Option<&'a str>,
    pub due_at: Option<String>,
}

impl<'a> AttemptRecord<'a> {
    /// Builds the record of one attempt from its result.
    pub fn new(
        ids: (&'a str, &'a str, &'a str, Option<&'a str>),
        attempt: u32,
        attempted_at: SystemTime,
        duration: Duration,
        result: &AttemptResult,
    ) -> Self {
        let (delivery_id, subscription_id, event_id, event_type) = ids;
        Self {
            delivery_id,
            subscription_id,
            event_id,
            event_type,
            attempt,
            attempted_at: rfc3339(attempted_at),
            duration_ms: duration.as_millis() as u64,
            status: result
                .as_ref()
                .ok()
                .map(|response| response.status.as_u16()),
            error_class: result.as_ref().err().map(|error| error.class()),
            error: result.as_ref().err().map(ToString::to_string),
            outcome: "delivered",
            next_tier: None,
            due_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use http::StatusCode;

    use super::*;
    use crate::client::HttpResponse;

    const SCHEMA: &str = include_str!("../../../schemas/attempt.schema.json");

    #[test]
    fn record_matches_its_published_schema() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("valid schema");
        let result: AttemptResult = Ok(HttpResponse {
            status: StatusCode::OK,
            retry_after: None,
        });
        let record = AttemptRecord::new(
            ("ledger:evt_1", "ledger", "evt_1", Some("payment.settled")),
            1,
            SystemTime::now(),
            Duration::from_millis(12),
            &result,
        );
        let value = serde_json::to_value(&record).expect("serializable");
        let written: BTreeSet<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let described: BTreeSet<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(written, described);
        for required in schema["required"].as_array().expect("required") {
            let name = required.as_str().expect("a name");
            assert!(!value[name].is_null(), "{name} is required");
        }
    }
}
