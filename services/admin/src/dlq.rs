//! Dead letters: read them from the dead-letter topic, filter them, and redrive them into the
//! deliveries topic. Redrive copies a dead letter's key, body and headers, drops the attempt
//! history headers so the retry schedule starts again, and marks the time of the redrive. The
//! dead letter stays on its topic, which is append-only: a second redrive of the same records
//! sends them again, and receivers drop the repeat by `webhook-id`.

use std::time::{Duration, SystemTime};

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Timestamp};
use serde::Serialize;

use herald_core::config::HeraldConfig;
use herald_core::headers;
use herald_core::kafka;
use herald_core::time::rfc3339;

use crate::snapshot::{self, SnapshotError};

/// The values of `herald-dead-letter-reason`.
pub const REASONS: [&str; 6] = [
    "retries_exhausted",
    "gone",
    "subscription_not_found",
    "subscription_disabled",
    "malformed_delivery",
    "blocked_address",
];

/// A dead letter as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub subscription_id: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub reason: Option<String>,
    pub attempts: Option<u32>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub first_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub dead_lettered_at: Option<String>,
    pub source: Option<String>,
    pub body_bytes: usize,
}

impl DeadLetter {
    fn from_message(message: &OwnedMessage) -> Self {
        let header = |name: &str| headers::find(message.headers(), name).map(str::to_owned);
        let dead_lettered_at = match message.timestamp() {
            Timestamp::CreateTime(millis) | Timestamp::LogAppendTime(millis) => {
                u64::try_from(millis)
                    .ok()
                    .map(|millis| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(millis)))
            }
            Timestamp::NotAvailable => None,
        };
        Self {
            partition: message.partition(),
            offset: message.offset(),
            subscription_id: header(headers::SUBSCRIPTION_ID),
            event_id: header(headers::EVENT_ID),
            event_type: header(headers::EVENT_TYPE),
            reason: header(headers::DEAD_LETTER_REASON),
            attempts: header(headers::ATTEMPT).and_then(|text| text.parse().ok()),
            last_status: header(headers::LAST_STATUS),
            last_error: header(headers::LAST_ERROR),
            first_attempt_at: header(headers::FIRST_ATTEMPT_AT),
            last_attempt_at: header(headers::LAST_ATTEMPT_AT),
            dead_lettered_at,
            source: header(headers::SOURCE),
            body_bytes: message.payload().map_or(0, <[u8]>::len),
        }
    }

    fn dead_lettered_time(&self) -> Option<SystemTime> {
        self.dead_lettered_at
            .as_deref()
            .and_then(|text| humantime::parse_rfc3339(text).ok())
    }
}

/// A selection of dead letters; an empty field matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub subscription_id: Option<String>,
    /// An exact event type, or `prefix.*`.
    pub event_type: Option<String>,
    pub reason: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<SystemTime>,
    /// Dead-lettered before this time.
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Returns whether no criterion is set, so the filter matches every dead letter.
    pub fn is_empty(&self) -> bool {
        self.subscription_id.is_none()
            && self.event_type.is_none()
            && self.reason.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
    pub fn matches(&self, dead_letter: &DeadLetter) -> bool {
        let equal = |wanted: &Option<String>, actual: &Option<String>| {
            wanted
                .as_ref()
                .is_none_or(|wanted| actual.as_ref() == Some(wanted))
        };
        let type_matches = self.event_type.as_ref().is_none_or(|pattern| {
            let actual = dead_letter.event_type.as_deref().unwrap_or_default();
            match pattern.strip_suffix('*') {
                Some(prefix) => actual.starts_with(prefix),
                None => actual == pattern,
            }
        });
        let time = dead_letter.dead_lettered_time();
        let after_since = self
            .since
            .is_none_or(|since| time.is_some_and(|time| time >= since));
        let before_until = self
            .until
            .is_none_or(|until| time.is_some_and(|time| time < until));
        equal(&self.subscription_id, &dead_letter.subscription_id)
            && equal(&self.reason, &dead_letter.reason)
            && type_matches
            && after_since
            && before_until
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Read(#[from] SnapshotError),
    #[error("cannot create the Kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("redrive of {partition}/{offset} to {topic} failed")]
    Redrive {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Lists the dead letters that match `filter`, oldest first within each partition.
pub fn list(config: &HeraldConfig, filter: &Filter) -> Result<Vec<DeadLetter>, DlqError> {
    let mut found = Vec::new();
    snapshot::read_topic(&config.kafka, &config.topics.dlq, |message| {
        let dead_letter = DeadLetter::from_message(message);
        if filter.matches(&dead_letter) {
            found.push(dead_letter);
        }
    })?;
    Ok(found)
}

/// Sends the matching dead letters back to the deliveries topic; with `dry_run`, only lists them.
/// Returns the dead letters redriven (or that would be).
pub async fn redrive(
    config: &HeraldConfig,
    filter: &Filter,
    dry_run: bool,
) -> Result<Vec<DeadLetter>, DlqError> {
    let mut selected: Vec<(DeadLetter, OwnedMessage)> = Vec::new();
    snapshot::read_topic(&config.kafka, &config.topics.dlq, |message| {
        let dead_letter = DeadLetter::from_message(message);
        if filter.matches(&dead_letter) {
            selected.push((dead_letter, message.clone()));
        }
    })?;
    if dry_run || selected.is_empty() {
        return Ok(selected
            .into_iter()
            .map(|(dead_letter, _)| dead_letter)
            .collect());
    }

    let producer = kafka::producer(&config.kafka).map_err(DlqError::Producer)?;
    let timeout = Duration::from_millis(config.kafka.produce_timeout_ms);
    let redriven_at = rfc3339(SystemTime::now());
    // The attempt history goes, so the retry schedule starts again; the redrive time is replaced.
    let mut dropped_on_redrive = headers::ATTEMPT_HISTORY.to_vec();
    dropped_on_redrive.push(headers::REDRIVEN_AT);
    let mut pending = Vec::with_capacity(selected.len());
    for (dead_letter, message) in &selected {
        let headers =
            headers::copy_except(message.headers(), OwnedHeaders::new(), &dropped_on_redrive)
                .insert(Header {
                    key: headers::REDRIVEN_AT,
                    value: Some(redriven_at.as_str()),
                });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&config.topics.deliveries).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        pending.push((
            dead_letter.partition,
            dead_letter.offset,
            producer.send(record, timeout),
        ));
    }
    for (partition, offset, future) in pending {
        future.await.map_err(|(source, _)| DlqError::Redrive {
            topic: config.topics.deliveries.clone(),
            partition,
            offset,
            source,
        })?;
    }
    Ok(selected
        .into_iter()
        .map(|(dead_letter, _)| dead_letter)
        .collect())
}

/// Counts the headers of a record, for checks that redrive does not grow them.
pub fn header_count(message: &OwnedMessage) -> usize {
    message.headers().map_or(0, Headers::count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(subscription: &str, event_type: &str, reason: &str, at: &str) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset: 0,
            subscription_id: Some(subscription.into()),
            event_id: Some("evt_1".into()),
            event_type: Some(event_type.into()),
            reason: Some(reason.into()),
            attempts: Some(4),
            last_status: Some("503".into()),
            last_error: None,
            first_attempt_at: None,
            last_attempt_at: None,
            dead_lettered_at: Some(at.into()),
            source: None,
            body_bytes: 2,
        }
    }

    fn time(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).expect("valid time")
    }

    #[test]
    fn empty_filter_matches_everything() {
        let letter = dead_letter(
            "ledger",
            "payment.settled",
            "retries_exhausted",
            "2026-12-04T10:00:00Z",
        );
        assert!(Filter::default().matches(&letter));
    }

    #[test]
    fn filters_by_subscription_type_and_reason() {
        let letter = dead_letter(
            "ledger",
            "payment.settled",
            "retries_exhausted",
            "2026-12-04T10:00:00Z",
        );
        let by = |filter: Filter| filter.matches(&letter);
        assert!(by(Filter {
            subscription_id: Some("ledger".into()),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            subscription_id: Some("crm".into()),
            ..Filter::default()
        }));
        assert!(by(Filter {
            event_type: Some("payment.*".into()),
            ..Filter::default()
        }));
        assert!(by(Filter {
            event_type: Some("payment.settled".into()),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            event_type: Some("kyc.*".into()),
            ..Filter::default()
        }));
        assert!(by(Filter {
            reason: Some("retries_exhausted".into()),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            reason: Some("gone".into()),
            ..Filter::default()
        }));
    }

    #[test]
    fn filters_by_time_range() {
        let letter = dead_letter("ledger", "payment.settled", "gone", "2026-12-04T10:00:00Z");
        let range = |since: &str, until: &str| Filter {
            since: Some(time(since)),
            until: Some(time(until)),
            ..Filter::default()
        };
        assert!(range("2026-12-04T09:00:00Z", "2026-12-04T11:00:00Z").matches(&letter));
        assert!(range("2026-12-04T10:00:00Z", "2026-12-04T10:00:01Z").matches(&letter));
        assert!(!range("2026-12-04T10:00:01Z", "2026-12-04T11:00:00Z").matches(&letter));
        assert!(!range("2026-12-04T09:00:00Z", "2026-12-04T10:00:00Z").matches(&letter));
    }
}
