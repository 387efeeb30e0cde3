//! Reads a whole topic as it is at the start of the read: every partition from its beginning to
//! the high watermark taken first. Records written meanwhile are left for the next read. No
//! consumer group is joined and no offset is committed.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use herald_core::config::KafkaConfig;
use herald_core::kafka;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// The maximum time a read may go without a record before it fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot create a Kafka consumer")]
    Consumer(#[source] KafkaError),
    #[error("cannot read the partitions of {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("reading {topic} failed")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading {topic} stalled: no record for {STALL_TIMEOUT:?}")]
    Stalled { topic: String },
}

/// Calls `visit` for every record of `topic` up to the high watermarks taken at the start.
pub fn read_topic(
    kafka_config: &KafkaConfig,
    topic: &str,
    mut visit: impl FnMut(&OwnedMessage),
) -> Result<(), SnapshotError> {
    let mut config = kafka::admin_config(kafka_config);
    config
        .set("group.id", "herald-admin-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().map_err(SnapshotError::Consumer)?;
    let metadata_error = |source| SnapshotError::Metadata {
        topic: topic.to_owned(),
        source,
    };
    let partitions =
        kafka::topic_partitions(&consumer, topic, METADATA_TIMEOUT).map_err(metadata_error)?;
    if partitions.is_empty() {
        return Err(SnapshotError::NoSuchTopic(topic.to_owned()));
    }

    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = kafka::watermarks(&consumer, topic, partition, METADATA_TIMEOUT)
            .map_err(metadata_error)?;
        if high > low {
            remaining += 1;
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(metadata_error)?;
        }
    }
    if remaining == 0 {
        return Ok(());
    }
    consumer.assign(&assignment).map_err(metadata_error)?;

    let mut last_record = Instant::now();
    while remaining > 0 {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            if last_record.elapsed() > STALL_TIMEOUT {
                return Err(SnapshotError::Stalled {
                    topic: topic.to_owned(),
                });
            }
            continue;
        };
        let message = polled.map_err(|source| SnapshotError::Read {
            topic: topic.to_owned(),
            source,
        })?;
        last_record = Instant::now();
        let Some(&end) = ends.get(&message.partition()) else {
            continue;
        };
        if message.offset() < end {
            visit(&message.detach());
        }
        if message.offset() + 1 >= end && ends.remove(&message.partition()).is_some() {
            remaining -= 1;
        }
    }
    Ok(())
}
