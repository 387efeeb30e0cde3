//! Kafka clients configured the way Herald's delivery guarantee needs them: offsets stored by the
//! application only after an outcome is safe in Kafka (auto-commit then commits what was stored),
//! idempotent producers with `acks=all`, bounded consumer queues, cooperative rebalancing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::offsets::TopicPartition;

/// How much fetched data a consumer may queue, in kilobytes: bounds memory whatever the backlog.
const CONSUMER_QUEUE_KILOBYTES: &str = "16384";
/// How long the broker may hold a fetch that has no new data, in milliseconds. librdkafka's
/// default of 500 gave a p99 of about 300 ms at a moderate, steady load (loadtest/README.md).
/// The cost is up to 20 fetches a second from an idle consumer.
const CONSUMER_FETCH_WAIT_MS: &str = "50";
/// The shortest time between two log lines of the same librdkafka error.
const ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often librdkafka reports statistics (lag, round trips, queues), in milliseconds.
const STATISTICS_MS: &str = "5000";
/// How long a producer waits to fill a batch, in milliseconds.
const PRODUCER_LINGER_MS: &str = "5";
/// How much unacknowledged data a producer may buffer, in kilobytes; a full buffer makes the
/// stage wait instead of growing.
const PRODUCER_BUFFER_KILOBYTES: &str = "65536";

fn base(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    config
}

/// Applies `kafka.client` and then the settings for this kind of client last, so an operator can
/// override any setting Herald chose.
fn with_overrides(
    mut config: ClientConfig,
    kafka: &KafkaConfig,
    specific: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    for (key, value) in kafka.client.iter().chain(specific) {
        config.set(key, value);
    }
    config
}

/// Settings of a consumer in `group_id` that stores offsets itself.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut config = base(kafka);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", CONSUMER_QUEUE_KILOBYTES)
        .set("fetch.wait.max.ms", CONSUMER_FETCH_WAIT_MS)
        // Statistics carry each partition's lag, which the herald.consumer.lag gauge reports.
        .set("statistics.interval.ms", STATISTICS_MS);
    if let Some(name) = &kafka.group_instance_id {
        config.set("group.instance.id", name);
    }
    with_overrides(config, kafka, &kafka.consumer)
}

/// Creates a consumer in `group_id`, with the context that tracks assignment generations, and
/// subscribes it to `topics`.
pub fn subscribed_consumer(
    kafka: &KafkaConfig,
    group_id: &str,
    topics: &[&str],
) -> rdkafka::error::KafkaResult<rdkafka::consumer::StreamConsumer<GenerationContext>> {
    use rdkafka::consumer::Consumer;

    let consumer: rdkafka::consumer::StreamConsumer<GenerationContext> =
        consumer_config(kafka, group_id).create_with_context(GenerationContext::new(group_id))?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// Settings of an idempotent producer whose produce of a record times out after
/// `produce_timeout_ms`. The pipeline's stages then produce it again (see [`produce_again`]).
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", PRODUCER_LINGER_MS)
        .set("compression.type", "lz4")
        .set("queue.buffering.max.kbytes", PRODUCER_BUFFER_KILOBYTES)
        .set("message.timeout.ms", kafka.produce_timeout_ms.to_string())
        // Statistics feed readiness, broker round trips and the producer queue gauge.
        .set("statistics.interval.ms", STATISTICS_MS);
    with_overrides(config, kafka, &kafka.producer)
}

/// Returns the partition ids of `topic`, none when it does not exist. A topic created moments
/// ago may not be in the metadata yet, so an absent topic is looked up again until `timeout`.
pub fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<i32>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|found| found.name() == topic && found.error().is_none())
            .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
            .collect();
        if !partitions.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(partitions);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Returns the low and high watermarks of a partition. A topic created moments ago may have no
/// leader yet, so leader errors are retried until `timeout` has passed.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    partition: i32,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    let deadline = std::time::Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition,
            )) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Settings of an admin client.
pub fn admin_config(kafka: &KafkaConfig) -> ClientConfig {
    with_overrides(base(kafka), kafka, &std::collections::BTreeMap::new())
}

/// The producer of every service, whose librdkafka reports go through [`HealthContext`].
pub type Producer = FutureProducer<HealthContext>;

/// Creates the producer every service uses.
pub fn producer(kafka: &KafkaConfig) -> rdkafka::error::KafkaResult<Producer> {
    producer_config(kafka).create_with_context(HealthContext::new("producer"))
}

/// Returns whether a failed produce can succeed when tried again: it timed out, as every produce
/// does while Kafka is unreachable for longer than `kafka.produce_timeout_ms`.
fn can_produce_again(error: &rdkafka::error::KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            rdkafka::types::RDKafkaErrorCode::MessageTimedOut
                | rdkafka::types::RDKafkaErrorCode::QueueFull
        )
    )
}

/// Produces a record that timed out again, and again, until Kafka stores it or fails it for
/// good, such as for a deleted topic. The pipeline's stages call it so that an outage stalls the
/// record's partition instead of losing the record or stopping the service. Each timeout is
/// logged, at most every [`ERROR_LOG_INTERVAL`].
pub async fn produce_again(
    producer: &Producer,
    mut message: rdkafka::message::OwnedMessage,
    mut error: rdkafka::error::KafkaError,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::Message;

    while can_produce_again(&error) {
        if let Some(repeats) = error_log().due(&format!("produce again: {}", message.topic())) {
            tracing::warn!(topic = message.topic(), %error, repeats, "produce timed out: trying again until Kafka stores the record (logged at most every 30 s)");
        }
        let mut record: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
            rdkafka::producer::FutureRecord::to(message.topic()).partition(message.partition());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let Some(headers) = message.headers() {
            record = record.headers(headers.clone());
        }
        if let Some(millis) = message.timestamp().to_millis() {
            record = record.timestamp(millis);
        }
        match producer.send(record, rdkafka::util::Timeout::Never).await {
            Ok(_) => return Ok(()),
            Err((next_error, returned)) => {
                error = next_error;
                message = returned;
            }
        }
    }
    Err(error)
}

/// The time each error was last logged. During a Kafka outage the clients report the same error
/// many times a second, so each is logged at most once per [`ERROR_LOG_INTERVAL`]. There is one
/// per process: see [`error_log`].
#[derive(Default)]
pub struct ErrorLog {
    last: Mutex<HashMap<String, (std::time::Instant, u64)>>,
}

/// Returns the process's limiter of repeated error lines; its keys name the client.
pub fn error_log() -> &'static ErrorLog {
    static ERRORS: std::sync::LazyLock<ErrorLog> = std::sync::LazyLock::new(ErrorLog::default);
    &ERRORS
}

impl ErrorLog {
    /// Returns `Some(repeats)` when `error` is due to be logged, with how many times it came since
    /// it was last logged, and `None` when it was logged less than [`ERROR_LOG_INTERVAL`] ago.
    pub fn due(&self, error: &str) -> Option<u64> {
        self.due_at(error, std::time::Instant::now())
    }

    fn due_at(&self, error: &str, now: std::time::Instant) -> Option<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last.get_mut(error) {
            Some((logged_at, repeats)) if now.duration_since(*logged_at) < ERROR_LOG_INTERVAL => {
                *repeats += 1;
                None
            }
            Some((logged_at, repeats)) => {
                let skipped = *repeats;
                *logged_at = now;
                *repeats = 0;
                Some(skipped)
            }
            None => {
                last.insert(error.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs a librdkafka error at most once per [`ERROR_LOG_INTERVAL`], and marks Kafka down when
/// every broker is unreachable.
fn report_error(client: &str, error: &rdkafka::error::KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
        crate::telemetry::mark_kafka_down();
    }
    if let Some(repeats) = error_log().due(&format!("{client}: {error}")) {
        tracing::error!(client, %error, reason, repeats, "librdkafka error (logged at most every 30 s; repeats counts the ones left out)");
    }
}

/// Passes librdkafka's own log lines to `tracing`. Warnings and errors are logged at most once per
/// [`ERROR_LOG_INTERVAL`] and facility, because an outage repeats them at every reconnection.
fn report_log(
    client: &str,
    level: rdkafka::config::RDKafkaLogLevel,
    facility: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel;

    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            if let Some(repeats) = error_log().due(&format!("{client}: log {facility}")) {
                tracing::warn!(
                    client,
                    facility,
                    message,
                    repeats,
                    "librdkafka (logged at most every 30 s per facility; repeats counts the ones left out)"
                );
            }
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(client, facility, message, "librdkafka")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(client, facility, message, "librdkafka"),
    }
}

fn report_brokers(statistics: &rdkafka::Statistics) {
    if statistics
        .brokers
        .values()
        .any(|broker| broker.state == "UP" && broker.nodeid >= 0)
    {
        crate::telemetry::mark_kafka_up();
    }
}

/// The context of Herald's clients outside consumer groups, such as producers and the
/// subscriptions reader: librdkafka's errors and statistics feed logs and readiness.
#[derive(Clone)]
pub struct HealthContext {
    client: &'static str,
}

impl HealthContext {
    /// Creates the context of a client named `client` in log lines and metrics, such as `producer`.
    pub fn new(client: &'static str) -> Self {
        Self { client }
    }
}

impl ClientContext for HealthContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        report_error(self.client, &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        report_log(self.client, level, facility, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        report_brokers(&statistics);
        crate::telemetry::record_client_statistics(
            self.client,
            &statistics,
            statistics.client_type == "producer",
        );
    }
}

impl ConsumerContext for HealthContext {}

/// The consume loop's handling of partitions taken away from it. It runs inside the rebalance,
/// before the partitions go, so that work in flight can finish and its offsets be committed.
pub trait RevokeHandler: Send + Sync {
    /// Finishes what it can for `revoked`, then stores and commits the offsets. `lost` is true
    /// when the group has already given the partitions to another member, so nothing is committed.
    fn revoked(
        &self,
        consumer: &BaseConsumer<GenerationContext>,
        revoked: &[TopicPartition],
        lost: bool,
    );
}

/// A consumer context that counts assignment generations per partition, so that work started
/// under an earlier assignment is recognised after a rebalance (see [`crate::offsets`]), and
/// hands revoked partitions to the consume loop's [`RevokeHandler`].
#[derive(Clone)]
pub struct GenerationContext {
    group_id: Arc<str>,
    generations: Arc<Mutex<HashMap<TopicPartition, u64>>>,
    on_revoke: Arc<OnceLock<Arc<dyn RevokeHandler>>>,
}

impl GenerationContext {
    /// Creates the context of a consumer in `group_id`, which its rebalance logs name.
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: Arc::from(group_id),
            generations: Arc::default(),
            on_revoke: Arc::default(),
        }
    }

    /// Sets what runs when partitions are revoked; only the first call has an effect.
    pub fn on_revoke(&self, handler: Arc<dyn RevokeHandler>) {
        let _ = self.on_revoke.set(handler);
    }

    /// Returns the current generation of a partition.
    pub fn generation(&self, topic: &str, partition: i32) -> u64 {
        let generations = self
            .generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        generations
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    fn advance(&self, partitions: &TopicPartitionList) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for element in partitions.elements() {
            *generations
                .entry((element.topic().to_owned(), element.partition()))
                .or_default() += 1;
        }
    }
}

impl ClientContext for GenerationContext {
    /// Marks Kafka down while every broker is unreachable, and logs each librdkafka error at most
    /// once per [`ERROR_LOG_INTERVAL`].
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        report_error(&self.group_id, &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        report_log(&self.group_id, level, facility, message);
    }

    /// Keeps each assigned partition's consumer lag for the `herald.consumer.lag` gauge, and
    /// raises readiness again once a broker is up.
    fn stats(&self, statistics: rdkafka::Statistics) {
        report_brokers(&statistics);
        crate::telemetry::record_client_statistics(&self.group_id, &statistics, false);
        for (topic, details) in &statistics.topics {
            for (partition, state) in &details.partitions {
                // Partition -1 is librdkafka's own, and lag is -1 where it is not known yet.
                if *partition >= 0 && state.fetch_state == "active" && state.consumer_lag >= 0 {
                    crate::telemetry::record_lag(
                        &self.group_id,
                        topic,
                        *partition,
                        state.consumer_lag,
                    );
                }
            }
        }
    }
}

impl ConsumerContext for GenerationContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        use rdkafka::consumer::Consumer;

        if let Rebalance::Revoke(partitions) = rebalance {
            let lost = consumer.assignment_lost();
            tracing::info!(group_id = %self.group_id, partitions = partitions.count(), lost, "partitions revoked");
            if lost {
                crate::telemetry::mark_assignment_lost();
            }
            for element in partitions.elements() {
                crate::telemetry::forget_lag(&self.group_id, element.topic(), element.partition());
            }
            if let Some(handler) = self.on_revoke.get() {
                let revoked: Vec<TopicPartition> = partitions
                    .elements()
                    .iter()
                    .map(|element| (element.topic().to_owned(), element.partition()))
                    .collect();
                handler.revoked(consumer, &revoked, lost);
            }
            self.advance(partitions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(group_id = %self.group_id, partitions = partitions.count(), "partitions assigned");
                crate::telemetry::mark_started();
                self.advance(partitions);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(group_id = %self.group_id, %error, "rebalance failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_log_limits_repeated_errors() {
        let errors = ErrorLog::default();
        let start = std::time::Instant::now();
        assert_eq!(errors.due_at("producer: down", start), Some(0));
        for second in 1..=5 {
            let now = start + std::time::Duration::from_secs(second);
            assert_eq!(errors.due_at("producer: down", now), None);
        }
        assert_eq!(
            errors.due_at("consumer: down", start),
            Some(0),
            "each client and error has its own interval"
        );
        assert_eq!(
            errors.due_at("producer: down", start + ERROR_LOG_INTERVAL),
            Some(5)
        );
        assert_eq!(
            errors.due_at("producer: down", start + ERROR_LOG_INTERVAL),
            None
        );
    }

    #[test]
    fn consumer_settings_bound_waits_and_set_static_membership() {
        let kafka = KafkaConfig {
            group_instance_id: Some("herald-sender-0".into()),
            ..KafkaConfig::default()
        };
        let config = consumer_config(&kafka, "herald-sender");
        assert_eq!(config.get("group.instance.id"), Some("herald-sender-0"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );

        let dynamic = consumer_config(&KafkaConfig::default(), "herald-sender");
        assert_eq!(dynamic.get("group.instance.id"), None);
    }

    #[test]
    fn operator_settings_override_herald_choices() {
        let mut kafka = KafkaConfig::default();
        kafka
            .consumer
            .insert("fetch.wait.max.ms".into(), "500".into());
        kafka
            .producer
            .insert("queue.buffering.max.kbytes".into(), "1024".into());
        assert_eq!(
            consumer_config(&kafka, "g").get("fetch.wait.max.ms"),
            Some("500")
        );
        assert_eq!(
            producer_config(&kafka).get("queue.buffering.max.kbytes"),
            Some("1024")
        );
    }
}
