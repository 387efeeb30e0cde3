//! Kafka helpers for tests: the broker address, unique names, publishing and reading topics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::samples::SampleRecord;

/// Returns the broker under test: `KAFKA_BOOTSTRAP_SERVERS`, or the local broker's default
/// address. The scripts set the variable from `deploy/local/kafka.sh bootstrap`.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .unwrap_or_else(|_| herald_core::config::DEFAULT_BOOTSTRAP_SERVERS.to_owned())
}

/// Returns a name no other test or run uses, such as `t4211-3-1764493200123`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    format!(
        "{prefix}{}-{}-{millis}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Publishes records in order, as a core banking system would: idempotent, acks from all replicas.
pub async fn publish(topic: &str, records: &[SampleRecord]) -> anyhow::Result<()> {
    publish_to(&bootstrap_servers(), topic, records).await
}

/// Like [`publish`], to the broker at `bootstrap_servers`.
pub async fn publish_to(
    bootstrap_servers: &str,
    topic: &str,
    records: &[SampleRecord],
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // The hostile samples include a 1.5 MB event, which the domain topic accepts.
        .set("message.max.bytes", "3000000")
        .create()
        .context("creating the test producer")?;
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let mut future_record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).key(&record.key);
        if let Some(value) = &record.value {
            future_record = future_record.payload(value);
        }
        let future = producer.send_result(future_record).map_err(|(error, _)| {
            anyhow::anyhow!("cannot enqueue a record for {topic}: {error}")
        })?;
        pending.push(future);
    }
    for future in pending {
        future
            .await
            .context("producer dropped a record")?
            .map_err(|(error, _)| anyhow::anyhow!("publishing to {topic} failed: {error}"))?;
    }
    Ok(())
}

/// Publishes one record with headers, such as a `traceparent` from the publisher's own trace.
pub async fn publish_with_headers(
    topic: &str,
    key: &str,
    value: &[u8],
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers())
        .create()
        .context("creating the test producer")?;
    let mut record_headers = rdkafka::message::OwnedHeaders::new();
    for (name, value) in headers {
        record_headers = record_headers.insert(rdkafka::message::Header {
            key: name,
            value: Some(*value),
        });
    }
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(record_headers);
    producer
        .send(record, std::time::Duration::from_secs(30))
        .await
        .map_err(|(error, _)| anyhow::anyhow!("publishing to {topic} failed: {error}"))?;
    Ok(())
}

/// Reads a topic from the beginning until `count` records arrived or `timeout` passed, and
/// returns what it read.
pub fn read_topic(
    topic: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers())
        .set("group.id", unique_name("reader-"))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the test consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for topic_metadata in metadata.topics() {
        for partition in topic_metadata.partitions() {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;

    let deadline = std::time::Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < count && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => messages.push(message.detach()),
            Some(Err(error)) => anyhow::bail!("reading {topic} failed: {error}"),
            None => {}
        }
    }
    Ok(messages)
}

/// Returns a header of a read record as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    herald_core::headers::find(message.headers(), name).map(str::to_owned)
}
