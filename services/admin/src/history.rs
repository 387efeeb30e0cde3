//! The history of one delivery, read from the attempt log. The whole attempts topic is scanned,
//! so the command takes longer as the log grows; its retention bounds that.

use rdkafka::Message;
use serde_json::Value;

use herald_core::config::HeraldConfig;

use crate::snapshot::{self, SnapshotError};

/// Returns the attempt records of delivery `subscription_id:event_id`, in the order written.
pub fn attempts(config: &HeraldConfig, delivery_id: &str) -> Result<Vec<Value>, SnapshotError> {
    let mut found = Vec::new();
    snapshot::read_topic(&config.kafka, &config.topics.attempts, |message| {
        if message.key() != Some(delivery_id.as_bytes()) {
            return;
        }
        // A record that is not JSON is shown as it is rather than hidden.
        let record = message
            .payload()
            .map(|payload| {
                serde_json::from_slice(payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(payload).into_owned())
                })
            })
            .unwrap_or(Value::Null);
        found.push(record);
    })?;
    Ok(found)
}
