//! The sample events shipped in `samples/`: banking events and hostile records.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

/// One record to publish.
#[derive(Debug, Clone)]
pub struct SampleRecord {
    pub key: String,
    /// The exact record value; `None` for a record without a value.
    pub value: Option<Vec<u8>>,
    /// For hostile records: whether Herald must deliver it or reject it.
    pub expect_delivery: bool,
    /// For hostile records: what is wrong with it.
    pub why: String,
}

impl SampleRecord {
    /// Returns `eventId` and `eventType` of a readable envelope.
    pub fn id_and_type(&self) -> Option<(String, String)> {
        let value = self.value.as_deref()?;
        let value = value.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(value);
        let envelope: serde_json::Value = serde_json::from_slice(value).ok()?;
        Some((
            envelope.get("eventId")?.as_str()?.to_owned(),
            envelope.get("eventType")?.as_str()?.to_owned(),
        ))
    }
}

/// Returns the event ids of `records`.
pub fn ids(records: &[SampleRecord]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter_map(|record| record.id_and_type().map(|(id, _)| id))
        .collect()
}

/// Returns the repository's `samples/` folder.
pub fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

#[derive(Deserialize)]
struct BankingLine {
    key: String,
    value: serde_json::Value,
}

#[derive(Deserialize)]
struct BadLine {
    key: String,
    #[serde(rename = "valueBase64")]
    value_base64: Option<String>,
    expect: String,
    why: String,
}

/// Reads the 2,000 banking events, serialized as `serde_json` writes them.
pub fn banking_events() -> anyhow::Result<Vec<SampleRecord>> {
    let path = folder().join("banking-events.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let parsed: BankingLine = serde_json::from_str(line)?;
            Ok(SampleRecord {
                key: parsed.key,
                value: Some(serde_json::to_vec(&parsed.value)?),
                expect_delivery: true,
                why: String::new(),
            })
        })
        .collect()
}

/// Reads the hostile records, with the exact bytes each one carries.
pub fn bad_events() -> anyhow::Result<Vec<SampleRecord>> {
    let path = folder().join("bad-events.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let parsed: BadLine = serde_json::from_str(line)?;
            let value = parsed
                .value_base64
                .map(|encoded| STANDARD.decode(encoded))
                .transpose()?;
            Ok(SampleRecord {
                key: parsed.key,
                value,
                expect_delivery: parsed.expect == "deliver",
                why: parsed.why,
            })
        })
        .collect()
}

/// Returns `count` small `payment.settled` events with distinct ids `evt_<prefix>_<n>`, keyed
/// over 17 customers.
pub fn synthetic_payments(prefix: &str, count: usize) -> Vec<SampleRecord> {
    synthetic_events(prefix, "payment.settled", count)
}

/// Returns `count` small events of `event_type`, shaped like payments, with distinct ids
/// `evt_<prefix>_<n>`, keyed over 17 customers.
pub fn synthetic_events(prefix: &str, event_type: &str, count: usize) -> Vec<SampleRecord> {
    (0..count)
        .map(|n| {
            let value = serde_json::json!({
                "eventId": format!("evt_{prefix}_{n:05}"),
                "eventType": event_type,
                "timestamp": "2026-12-04T10:00:00Z",
                "data": {"paymentId": format!("PAY_{n}"), "amount": "100.00", "currency": "CHF"}
            });
            SampleRecord {
                key: format!("CUST_{}", n % 17),
                value: Some(value.to_string().into_bytes()),
                expect_delivery: true,
                why: String::new(),
            }
        })
        .collect()
}
