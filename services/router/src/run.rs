//! The router's consume loop: routes each record and produces the result, then lets the stage
//! store the input offset once every produced record is acknowledged.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use rdkafka::message::{Header, OwnedHeaders};
use tracing::Instrument;

use herald_core::config::HeraldConfig;
use herald_core::kafka;
use herald_core::registry::Subscriptions;
use herald_core::stage::{StageError, StageSettings, run_stage};
use herald_core::{headers, traces};

use crate::route::{RoutedRecord, route};

/// How long to wait before offering a record again to a full producer queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no source topics configured (router.source_topics)")]
    NoSourceTopics,
    #[error("cannot create the Kafka consumer for {topics}")]
    Consumer {
        topics: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create the Kafka producer")]
    Producer(#[source] KafkaError),
    #[error("produce to {topic} failed")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("producer dropped a record without an outcome")]
    ProduceCanceled,
    #[error("router stopped")]
    Stage(#[source] Box<StageError<RouterError>>),
}

/// Runs the router until `shutdown` resolves. An error means an outcome could not be made safe
/// in Kafka; the offsets of the affected records were not stored.
pub async fn run(
    config: &HeraldConfig,
    subscriptions: Subscriptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let topics: Vec<&str> = config
        .router
        .source_topics
        .iter()
        .map(String::as_str)
        .collect();
    if topics.is_empty() {
        return Err(RouterError::NoSourceTopics);
    }
    let consumer = kafka::subscribed_consumer(&config.kafka, &config.router.group_id, &topics)
        .map_err(|source| RouterError::Consumer {
            topics: topics.join(","),
            source,
        })?;
    let producer = kafka::producer(&config.kafka).map_err(RouterError::Producer)?;

    crate::metrics::register();
    tracing::info!(
        bootstrap_servers = %config.kafka.bootstrap_servers,
        source_topics = ?topics,
        subscriptions = subscriptions.current().len(),
        "router started"
    );
    let settings = StageSettings {
        name: "router",
        max_in_flight: config.router.max_in_flight_events,
        max_in_flight_per_partition: config.router.max_in_flight_events,
        max_in_flight_bytes: config.router.max_in_flight_bytes,
        shutdown_timeout: Duration::from_millis(config.router.shutdown_timeout_ms),
    };
    let deliveries_topic = config.topics.deliveries.clone();
    let rejected_topic = config.topics.rejected.clone();
    let max_event_bytes = config.router.max_event_bytes;
    let group_id = config.router.group_id.clone();

    let result = run_stage(&consumer, &settings, shutdown, |message| {
        let context = event_span(message, &group_id);
        let log_span = traces::log_span(&context);
        let entered = log_span.enter();
        let mut routed = route(message, &subscriptions.current(), max_event_bytes);
        carry_trace_context(&mut routed, &context);
        crate::metrics::record(&routed);
        if let Some(RoutedRecord::Rejected { reason, .. }) = routed.first() {
            context
                .span()
                .set_status(Status::error(format!("rejected: {}", reason.kind())));
        }
        context.span().set_attribute(KeyValue::new(
            "herald.deliveries",
            routed
                .iter()
                .filter(|record| matches!(record, RoutedRecord::Delivery { .. }))
                .count() as i64,
        ));
        let acknowledgements = enqueue_routed(
            &producer,
            message,
            routed,
            (&deliveries_topic, &rejected_topic),
        );
        drop(entered);
        let producer = producer.clone();
        async move {
            let result = await_acknowledgements(&producer, acknowledgements).await;
            if let Err(error) = &result {
                context.span().set_status(Status::error(error.to_string()));
            }
            context.span().end();
            result
        }
        .instrument(log_span)
    })
    .await;
    result.map_err(|error| RouterError::Stage(Box::new(error)))
}

/// Starts the span of routing one event, a child of the publisher's trace when the record carries
/// a `traceparent`, with the messaging attributes of the OpenTelemetry conventions.
fn event_span(message: &BorrowedMessage<'_>, group_id: &str) -> Context {
    let parent = traces::extract(
        headers::find(message.headers(), headers::TRACEPARENT),
        headers::find(message.headers(), headers::TRACESTATE),
    );
    let tracer = traces::tracer();
    let span = tracer
        .span_builder(format!("process {}", message.topic()))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", message.topic().to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                message.partition().to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", message.offset()),
            KeyValue::new("messaging.consumer.group.name", group_id.to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// Replaces the trace headers copied from the event with the routing span's, so the sender's
/// spans become its children.
fn carry_trace_context(routed: &mut [RoutedRecord], context: &Context) {
    let trace_headers = traces::inject(context);
    if trace_headers.is_empty() {
        return;
    }
    for record in routed {
        if let RoutedRecord::Delivery {
            headers: delivery_headers,
            ..
        } = record
        {
            let mut replaced = headers::copy_except(
                Some(&*delivery_headers),
                OwnedHeaders::new(),
                &headers::CARRIED_FROM_EVENT,
            );
            for (name, value) in &trace_headers {
                replaced = replaced.insert(Header {
                    key: name,
                    value: Some(value.as_str()),
                });
            }
            *delivery_headers = replaced;
        }
    }
}

type Pending = (String, DeliveryFuture);

/// Hands every routed record to the producer in order, so that records for one subscription
/// keep the order of their events.
fn enqueue_routed(
    producer: &herald_core::kafka::Producer,
    message: &BorrowedMessage<'_>,
    routed: Vec<RoutedRecord>,
    (deliveries_topic, rejected_topic): (&str, &str),
) -> Result<Vec<Pending>, RouterError> {
    let mut pending = Vec::with_capacity(routed.len());
    for record in routed {
        let (topic, future) = match record {
            RoutedRecord::Delivery { key, headers } => {
                let mut record = FutureRecord::to(deliveries_topic)
                    .key(&key)
                    .headers(headers);
                // The delivery keeps its event's timestamp, from which the sender measures
                // end-to-end latency.
                if let Some(millis) = message.timestamp().to_millis() {
                    record = record.timestamp(millis);
                }
                let record = match message.payload() {
                    Some(payload) => record.payload(payload),
                    None => record,
                };
                (deliveries_topic, enqueue(producer, record)?)
            }
            RoutedRecord::Rejected {
                reason,
                keep_value,
                headers,
            } => {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    reason = %reason,
                    kind = reason.kind(),
                    "event rejected"
                );
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(rejected_topic).headers(headers);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if keep_value && let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                (rejected_topic, enqueue(producer, record)?)
            }
        };
        pending.push((topic.to_owned(), future));
    }
    Ok(pending)
}

/// Offers a record to the producer queue. A full queue drains on librdkafka's own threads, so a
/// short blocking wait is enough. During a Kafka outage the queue stays full, and the router waits
/// with it until Kafka is back.
/// NOTE: the wait blocks the runtime thread that runs the router's loop for as long as the queue
/// stays full. The other runtime thread keeps serving probes and the shutdown signal.
fn enqueue<K, P>(
    producer: &herald_core::kafka::Producer,
    mut record: FutureRecord<'_, K, P>,
) -> Result<DeliveryFuture, RouterError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
            Err((source, returned)) => {
                return Err(RouterError::Produce {
                    topic: returned.topic.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Waits until Kafka has stored every record of an event. A record whose produce timed out, as
/// during an outage, is produced again until it is stored.
async fn await_acknowledgements(
    producer: &herald_core::kafka::Producer,
    pending: Result<Vec<Pending>, RouterError>,
) -> Result<(), RouterError> {
    for (topic, future) in pending? {
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((source, message))) => kafka::produce_again(producer, message, source)
                .await
                .map_err(|source| RouterError::Produce {
                    topic: topic.clone(),
                    source,
                })?,
            Err(_) => return Err(RouterError::ProduceCanceled),
        }
    }
    Ok(())
}
