//! The delay forwarder: reads the retry tiers and sends each delivery back to the deliveries
//! topic, with the same key, once its `herald-due-at` has passed. Retries thus pass the same
//! limits as first attempts.
//!
//! Every record on one tier has the same delay, so due times rise along each partition. A
//! partition whose head is not due is paused, and its records are held (at most what the
//! consumer had already fetched) until the head is due. The loop never sleeps while holding the
//! consumer: it keeps polling at least once a second, so it stays in its consumer group whatever
//! the delay. An offset is stored only after the forwarded record is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use herald_core::headers;
use herald_core::kafka::GenerationContext;
use herald_core::offsets::{OffsetTracker, TopicPartition};
use herald_core::stage::{commit, store_finished};

use crate::run::SenderError;

/// The maximum time the loop waits without polling Kafka.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// How long due records wait before the next try when the producer's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(50);

struct Held {
    offset: i64,
    generation: u64,
    due_at: SystemTime,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

#[derive(Default)]
struct PartitionHold {
    records: VecDeque<Held>,
    paused: bool,
}

struct Forwarded {
    partition: TopicPartition,
    offset: i64,
    generation: u64,
    result: Result<(), SenderError>,
}

/// Runs the forwarder until `shutdown` resolves.
pub(crate) async fn run_forwarder(
    consumer: &StreamConsumer<GenerationContext>,
    producer: &herald_core::kafka::Producer,
    deliveries_topic: &str,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
) -> Result<(), SenderError> {
    let context = consumer.context().clone();
    let (forwarded_sender, mut forwarded_receiver) = mpsc::unbounded_channel::<Forwarded>();
    let mut tracker = OffsetTracker::default();
    let mut holds: HashMap<TopicPartition, PartitionHold> = HashMap::new();
    let mut queue_full = false;
    tokio::pin!(shutdown);

    loop {
        // With the producer's queue full (a Kafka outage), due records wait a moment and retry.
        let wake_at = if queue_full {
            next_wake(&holds).max(QUEUE_FULL_BACKOFF)
        } else {
            next_wake(&holds)
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(forwarded) = forwarded_receiver.recv() => record_forwarded(consumer, &mut tracker, forwarded)?,
            () = tokio::time::sleep(wake_at) => {}
            received = consumer.recv() => {
                let message = match received {
                    Ok(message) => message,
                    Err(error) => {
                        if let Some(repeats) = herald_core::kafka::error_log().due(&format!("forwarder: {error}")) {
                            tracing::warn!(stage = "forwarder", %error, repeats, "consumer error, continuing (logged at most every 30 s)");
                        }
                        continue;
                    }
                };
                let partition = (message.topic().to_owned(), message.partition());
                let generation = context.generation(message.topic(), message.partition());
                let due_at = headers::find(message.headers(), headers::DUE_AT)
                    .and_then(|text| humantime::parse_rfc3339(text).ok())
                    // A record without a readable due time is forwarded at once rather than held forever.
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                tracker.begin(&partition, message.offset(), generation, 0);
                holds.entry(partition).or_default().records.push_back(Held {
                    offset: message.offset(),
                    generation,
                    due_at,
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: message.headers().map(|headers| headers.detach()),
                });
            }
        }
        queue_full = forward_due(
            consumer,
            &context,
            producer,
            deliveries_topic,
            &mut holds,
            &forwarded_sender,
        )?;
    }

    tracing::info!(
        stage = "forwarder",
        in_flight = tracker.in_flight(),
        "stopping: waiting for forwarded records"
    );
    // Held records that are not due stay on their tier: the next owner reads them again.
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    while forwards_in_flight(&tracker, &holds) > 0 {
        match tokio::time::timeout_at(deadline, forwarded_receiver.recv()).await {
            Ok(Some(forwarded)) => record_forwarded(consumer, &mut tracker, forwarded)?,
            Ok(None) | Err(_) => break,
        }
    }
    commit(consumer, "forwarder");
    Ok(())
}

/// Counts records sent to the deliveries topic whose acknowledgement has not arrived: every
/// tracked record that is not still held.
fn forwards_in_flight(
    tracker: &OffsetTracker,
    holds: &HashMap<TopicPartition, PartitionHold>,
) -> usize {
    let held: usize = holds.values().map(|hold| hold.records.len()).sum();
    tracker.in_flight().saturating_sub(held)
}

/// Returns how long to wait before the earliest held record is due, at most [`MAX_IDLE`].
fn next_wake(holds: &HashMap<TopicPartition, PartitionHold>) -> Duration {
    let now = SystemTime::now();
    holds
        .values()
        .filter_map(|hold| hold.records.front())
        .map(|head| head.due_at.duration_since(now).unwrap_or(Duration::ZERO))
        .min()
        .unwrap_or(MAX_IDLE)
        .min(MAX_IDLE)
}

/// Sends every due head record, in offset order, and pauses or resumes partitions to match.
/// Returns true when the producer's queue was full, so that due records are left for later.
fn forward_due(
    consumer: &StreamConsumer<GenerationContext>,
    context: &GenerationContext,
    producer: &herald_core::kafka::Producer,
    deliveries_topic: &str,
    holds: &mut HashMap<TopicPartition, PartitionHold>,
    forwarded_sender: &mpsc::UnboundedSender<Forwarded>,
) -> Result<bool, SenderError> {
    let now = SystemTime::now();
    let mut queue_full = false;
    for (partition, hold) in holds.iter_mut() {
        // Records held under an earlier assignment belong to the partition's new owner now.
        let generation = context.generation(&partition.0, partition.1);
        hold.records.retain(|held| held.generation == generation);

        while !queue_full && hold.records.front().is_some_and(|head| head.due_at <= now) {
            let Some(held) = hold.records.pop_front() else {
                break;
            };
            let Some(future) = enqueue(producer, deliveries_topic, &held)? else {
                hold.records.push_front(held);
                queue_full = true;
                break;
            };
            let forwarded_sender = forwarded_sender.clone();
            let partition = partition.clone();
            let producer = producer.clone();
            tokio::spawn(async move {
                let result = match future.await {
                    Ok(Ok(_)) => Ok(()),
                    // A produce that timed out, as during an outage, is tried again until stored.
                    Ok(Err((source, message))) => {
                        herald_core::kafka::produce_again(&producer, message, source)
                            .await
                            .map_err(|source| SenderError::Produce {
                                topic: "deliveries".to_owned(),
                                source,
                            })
                    }
                    Err(_) => Err(SenderError::ProduceCanceled),
                };
                let _ = forwarded_sender.send(Forwarded {
                    partition,
                    offset: held.offset,
                    generation: held.generation,
                    result,
                });
            });
        }

        let should_pause = !hold.records.is_empty();
        if should_pause != hold.paused {
            set_paused(consumer, partition, should_pause);
            hold.paused = should_pause;
        }
    }
    holds.retain(|_, hold| hold.paused || !hold.records.is_empty());
    Ok(queue_full)
}

/// Offers a held record to the producer; returns `None` when the producer's queue is full.
fn enqueue(
    producer: &herald_core::kafka::Producer,
    topic: &str,
    held: &Held,
) -> Result<Option<DeliveryFuture>, SenderError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(key) = &held.key {
        record = record.key(key);
    }
    if let Some(payload) = &held.payload {
        record = record.payload(payload);
    }
    if let Some(headers) = &held.headers {
        record = record.headers(headers.clone());
    }
    match producer.send_result(record) {
        Ok(future) => Ok(Some(future)),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Ok(None),
        Err((source, _)) => Err(SenderError::Produce {
            topic: topic.to_owned(),
            source,
        }),
    }
}

fn set_paused(
    consumer: &StreamConsumer<GenerationContext>,
    (topic, partition): &TopicPartition,
    paused: bool,
) {
    let mut list = TopicPartitionList::new();
    if list
        .add_partition_offset(topic, *partition, Offset::Invalid)
        .is_err()
    {
        return;
    }
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        // The partition was revoked meanwhile; the new owner starts unpaused.
        tracing::debug!(%topic, partition, paused, %error, "pause state not changed");
    }
}

fn record_forwarded(
    consumer: &StreamConsumer<GenerationContext>,
    tracker: &mut OffsetTracker,
    forwarded: Forwarded,
) -> Result<(), SenderError> {
    forwarded.result?;
    store_finished(
        consumer,
        tracker,
        &forwarded.partition,
        forwarded.offset,
        forwarded.generation,
    );
    Ok(())
}
