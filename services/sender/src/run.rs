//! Wiring of the sender process: the delivery stage (one attempt per delivery record) and the
//! delay forwarder (retry tiers back to the deliveries topic) run side by side until shutdown.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tracing::Instrument;

use herald_core::address::AddressGuard;
use herald_core::config::HeraldConfig;
use herald_core::kafka::{self, GenerationContext};
use herald_core::registry::Subscriptions;
use herald_core::stage::{StageError, StageSettings, run_stage};
use herald_core::{headers, traces};

use crate::client::{ClientSettings, WebhookClient, read_ca_file};
use crate::deliver::{Delivery, Shared, deliver};
use crate::forwarder::run_forwarder;
use crate::limits::Limits;

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("invalid retry schedule: {0}")]
    Schedule(String),
    #[error("invalid sender.allowed_networks: {0}")]
    AllowedNetworks(String),
    #[error("invalid sender.extra_ca_file: {0}")]
    ExtraCa(String),
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("cannot create the Kafka producer")]
    Producer(#[source] KafkaError),
    #[error("cannot create the Kafka consumer for {topic}")]
    Consumer {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("produce to {topic} failed")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("producer dropped a record without an outcome")]
    ProduceCanceled,
    #[error("sender stopped")]
    Stage(#[source] Box<StageError<SenderError>>),
}

fn consumer(
    config: &HeraldConfig,
    group_id: &str,
    topics: &[&str],
) -> Result<StreamConsumer<GenerationContext>, SenderError> {
    kafka::subscribed_consumer(&config.kafka, group_id, topics).map_err(|source| {
        SenderError::Consumer {
            topic: topics.join(","),
            source,
        }
    })
}

/// Runs the sender and the delay forwarder until `shutdown` resolves. An error means a record
/// could not be made safe in Kafka; the offsets of the affected records were not stored.
pub async fn run(
    config: &HeraldConfig,
    subscriptions: Subscriptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SenderError> {
    let schedule = config.retry.schedule().map_err(SenderError::Schedule)?;
    let tier_topics: Vec<String> = schedule
        .tiers()
        .iter()
        .map(|tier| tier.topic.clone())
        .collect();
    let tier_topics: Vec<&str> = tier_topics.iter().map(String::as_str).collect();
    let delivery_consumer = consumer(
        config,
        &config.sender.group_id,
        &[&config.topics.deliveries],
    )?;
    let forwarder_consumer = consumer(config, &config.retry.forwarder_group_id, &tier_topics)?;
    let producer = kafka::producer(&config.kafka).map_err(SenderError::Producer)?;

    crate::metrics::register();
    let shared = Arc::new(Shared {
        subscriptions,
        client: webhook_client(config)?,
        producer: producer.clone(),
        dlq_topic: config.topics.dlq.clone(),
        attempts_topic: config
            .sender
            .attempt_log
            .then(|| config.topics.attempts.clone()),
        schedule,
        jitter_percent: config.retry.jitter_percent,
        max_retry_after: Duration::from_secs(config.retry.max_retry_after_s),
        disabled: Mutex::new(HashSet::new()),
        jitter_hasher: std::collections::hash_map::RandomState::new(),
        limits: Limits::new(&config.sender),
        circuit_open: Duration::from_millis(config.sender.circuit_open_ms),
    });
    tracing::info!(
        bootstrap_servers = %config.kafka.bootstrap_servers,
        topic = %config.topics.deliveries,
        tiers = ?tier_topics,
        subscriptions = shared.subscriptions.current().len(),
        "sender started"
    );

    // Both loops stop on the same signal, and either one failing stops the other.
    let (stop_sender, stop_receiver) = watch::channel(false);
    let stopped = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let settings = StageSettings {
        name: "sender",
        max_in_flight: config.sender.max_in_flight,
        max_in_flight_per_partition: config.sender.max_in_flight_per_partition,
        max_in_flight_bytes: config.sender.max_in_flight_bytes,
        shutdown_timeout: Duration::from_millis(config.sender.shutdown_timeout_ms),
    };
    let deliveries = async {
        let result = run_stage(
            &delivery_consumer,
            &settings,
            stopped(stop_receiver.clone()),
            |message| {
                // Log lines about this delivery name the trace it belongs to.
                let log_span = traces::log_span(&traces::extract(
                    headers::find(message.headers(), headers::TRACEPARENT),
                    headers::find(message.headers(), headers::TRACESTATE),
                ));
                let delivery = Delivery {
                    key: message.key().map(<[u8]>::to_vec),
                    body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                    headers: message.headers().map(|headers| headers.detach()),
                    published_at: message
                        .timestamp()
                        .to_millis()
                        .and_then(|millis| u64::try_from(millis).ok())
                        .map(|millis| std::time::UNIX_EPOCH + Duration::from_millis(millis)),
                };
                deliver(Arc::clone(&shared), delivery).instrument(log_span)
            },
        )
        .await
        .map_err(|error| SenderError::Stage(Box::new(error)));
        let _ = stop_sender.send(true);
        result
    };
    let forwarding = async {
        let result = run_forwarder(
            &forwarder_consumer,
            &producer,
            &config.topics.deliveries,
            stopped(stop_receiver.clone()),
            Duration::from_millis(config.sender.shutdown_timeout_ms),
        )
        .await;
        let _ = stop_sender.send(true);
        result
    };
    let signal = async {
        tokio::select! {
            () = shutdown => {}
            () = stopped(stop_receiver.clone()) => {}
        }
        let _ = stop_sender.send(true);
    };
    let (delivered, forwarded, ()) = tokio::join!(deliveries, forwarding, signal);
    delivered.and(forwarded)
}

/// Builds the HTTP client from the sender's settings: timeouts, the address guard and the extra
/// certificate authorities.
fn webhook_client(config: &HeraldConfig) -> Result<WebhookClient, SenderError> {
    let extra_roots = match &config.sender.extra_ca_file {
        Some(path) => read_ca_file(path).map_err(SenderError::ExtraCa)?,
        None => Vec::new(),
    };
    WebhookClient::new(ClientSettings {
        connect_timeout: Duration::from_millis(config.sender.connect_timeout_ms),
        max_response_bytes: config.sender.max_response_bytes,
        guard: AddressGuard::new(&config.sender.allowed_networks)
            .map_err(SenderError::AllowedNetworks)?,
        extra_roots,
    })
    .map_err(SenderError::Tls)
}
