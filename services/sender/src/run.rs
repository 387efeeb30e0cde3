//! The sender's consume loop: each delivery gets one attempt, and a failed one becomes a dead
//! letter. The stage stores the offset once the attempt succeeded or the dead letter is
//! acknowledged by Kafka.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

use herald_core::config::HeraldConfig;
use herald_core::headers;
use herald_core::kafka::{self, GenerationContext};
use herald_core::stage::{StageError, StageSettings, run_stage};
use herald_core::subscription::SubscriptionTable;

use crate::attempt::{AttemptInput, attempt};
use crate::client::WebhookClient;
use crate::dead_letter::{self, History};
use crate::outcome::{DeadLetterReason, Outcome, decide};

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("cannot create the Kafka consumer")]
    Consumer(#[source] KafkaError),
    #[error("cannot create the Kafka producer")]
    Producer(#[source] KafkaError),
    #[error("cannot subscribe to {topic}")]
    Subscribe {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("produce of a dead letter to {topic} failed")]
    DeadLetter {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("sender stopped")]
    Stage(#[source] Box<StageError<SenderError>>),
}

/// Everything an attempt task needs, shared by all of them.
struct Shared {
    subscriptions: Arc<SubscriptionTable>,
    client: WebhookClient,
    producer: FutureProducer,
    dlq_topic: String,
    produce_timeout: Duration,
}

/// A delivery record copied out of the consumer's buffer.
struct Delivery {
    key: Option<Vec<u8>>,
    body: Bytes,
    headers: Option<OwnedHeaders>,
}

impl Delivery {
    fn header(&self, name: &str) -> Option<&str> {
        headers::find(self.headers.as_ref(), name)
    }
}

/// Runs the sender until `shutdown` resolves. An error means a dead letter could not be made
/// safe in Kafka; the offsets of the affected deliveries were not stored.
pub async fn run(
    config: &HeraldConfig,
    subscriptions: Arc<SubscriptionTable>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SenderError> {
    let consumer: StreamConsumer<GenerationContext> =
        kafka::consumer_config(&config.kafka, &config.sender.group_id)
            .create_with_context(GenerationContext::default())
            .map_err(SenderError::Consumer)?;
    consumer
        .subscribe(&[&config.topics.deliveries])
        .map_err(|source| SenderError::Subscribe {
            topic: config.topics.deliveries.clone(),
            source,
        })?;
    let shared = Arc::new(Shared {
        subscriptions,
        client: WebhookClient::new(
            Duration::from_millis(config.sender.connect_timeout_ms),
            config.sender.max_response_bytes,
        ),
        producer: kafka::producer(&config.kafka).map_err(SenderError::Producer)?,
        dlq_topic: config.topics.dlq.clone(),
        produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
    });

    tracing::info!(topic = %config.topics.deliveries, subscriptions = shared.subscriptions.len(), "sender started");
    let settings = StageSettings {
        name: "sender",
        max_in_flight: config.sender.max_in_flight,
        shutdown_timeout: Duration::from_millis(config.sender.shutdown_timeout_ms),
    };
    let result = run_stage(&consumer, &settings, shutdown, |message| {
        let delivery = Delivery {
            key: message.key().map(<[u8]>::to_vec),
            body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers: message.headers().map(|headers| headers.detach()),
        };
        deliver(Arc::clone(&shared), delivery)
    })
    .await;
    result.map_err(|error| SenderError::Stage(Box::new(error)))
}

/// Makes one attempt and dead-letters the delivery if it failed.
async fn deliver(shared: Arc<Shared>, delivery: Delivery) -> Result<(), SenderError> {
    let subscription_id = delivery.header(headers::SUBSCRIPTION_ID);
    let event_id = delivery.header(headers::EVENT_ID);
    let (Some(subscription_id), Some(event_id)) = (subscription_id, event_id) else {
        return dead_letter(
            &shared,
            &delivery,
            DeadLetterReason::MalformedDelivery,
            &History::none(),
        )
        .await;
    };
    let Some(subscription) = shared.subscriptions.get(subscription_id) else {
        return dead_letter(
            &shared,
            &delivery,
            DeadLetterReason::SubscriptionNotFound,
            &History::none(),
        )
        .await;
    };
    if !subscription.enabled {
        return dead_letter(
            &shared,
            &delivery,
            DeadLetterReason::SubscriptionDisabled,
            &History::none(),
        )
        .await;
    }

    let attempted_at = SystemTime::now();
    let input = AttemptInput {
        webhook_id: event_id,
        body: delivery.body.clone(),
        traceparent: delivery.header(headers::TRACEPARENT),
        tracestate: delivery.header(headers::TRACESTATE),
    };
    let result = attempt(&shared.client, subscription, input).await;

    match decide(&result) {
        Outcome::Delivered => {
            tracing::debug!(subscription_id, event_id, "delivered");
            Ok(())
        }
        Outcome::DeadLetter(reason) => {
            let history = History {
                attempts: 1,
                first_attempt_at: Some(attempted_at),
                last_attempt_at: Some(attempted_at),
                last_result: Some(&result),
            };
            dead_letter(&shared, &delivery, reason, &history).await
        }
    }
}

async fn dead_letter(
    shared: &Shared,
    delivery: &Delivery,
    reason: DeadLetterReason,
    history: &History<'_>,
) -> Result<(), SenderError> {
    tracing::warn!(
        subscription_id = delivery.header(headers::SUBSCRIPTION_ID),
        event_id = delivery.header(headers::EVENT_ID),
        reason = reason.as_str(),
        status = history
            .last_result
            .and_then(|r| r.as_ref().ok())
            .map(|s| s.as_u16()),
        error = history
            .last_result
            .and_then(|r| r.as_ref().err())
            .map(|e| e.class()),
        "delivery dead-lettered"
    );
    let headers = dead_letter::headers(delivery.headers.as_ref(), reason, history);
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&shared.dlq_topic)
        .payload(&delivery.body[..])
        .headers(headers);
    if let Some(key) = &delivery.key {
        record = record.key(&key[..]);
    }
    match shared.producer.send(record, shared.produce_timeout).await {
        Ok(_) => Ok(()),
        Err((source, _)) => Err(SenderError::DeadLetter {
            topic: shared.dlq_topic.clone(),
            source,
        }),
    }
}
