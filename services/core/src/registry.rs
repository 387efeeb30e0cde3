//! The subscriptions topic and the live table built from it.
//!
//! `topics.subscriptions` is compacted: key = subscription id, value = a [`StoredSubscription`]
//! as JSON with every secret sealed (see [`crate::encryption`]), and a tombstone (no value)
//! deletes. With `subscriptions.source = "topic"` the router and the sender read the topic to its
//! end before they start, then follow it: a change applies to the next record they handle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::{HeraldConfig, Problems};
use crate::encryption::{EncryptionError, KeyRing};
use crate::kafka;
use crate::subscription::{
    RetiringSecret, Subscription, SubscriptionSpec, SubscriptionTable, check_spec,
};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long start-up may take to read the topic to its end.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// A subscription as stored on the topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoredSubscription {
    /// The subscription, its secrets sealed.
    pub subscription: SubscriptionSpec,
    /// RFC 3339 times.
    pub created_at: String,
    pub updated_at: String,
}

impl StoredSubscription {
    /// Reads a record value.
    pub fn decode(value: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(value).map_err(|error| format!("not a stored subscription: {error}"))
    }

    /// Writes the record value.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Returns `spec` with every secret sealed for its subscription id.
pub fn seal(spec: &SubscriptionSpec, keys: &KeyRing) -> Result<SubscriptionSpec, EncryptionError> {
    convert(spec, |secret| keys.seal(secret, &spec.id))
}

/// Returns `spec` with every secret opened.
pub fn open(spec: &SubscriptionSpec, keys: &KeyRing) -> Result<SubscriptionSpec, EncryptionError> {
    convert(spec, |secret| keys.open(secret, &spec.id))
}

/// Applies `change` to every secret of `spec`, retiring ones and the client key included.
fn convert(
    spec: &SubscriptionSpec,
    change: impl Fn(&str) -> Result<String, EncryptionError>,
) -> Result<SubscriptionSpec, EncryptionError> {
    let secrets = spec
        .secrets
        .iter()
        .map(|secret| change(secret))
        .collect::<Result<_, _>>()?;
    let retiring_secrets = spec
        .retiring_secrets
        .iter()
        .map(|retiring| {
            Ok(RetiringSecret {
                secret: change(&retiring.secret)?,
                until: retiring.until.clone(),
            })
        })
        .collect::<Result<_, EncryptionError>>()?;
    let client_key = spec.client_key.as_deref().map(&change).transpose()?;
    Ok(SubscriptionSpec {
        secrets,
        retiring_secrets,
        client_key,
        ..spec.clone()
    })
}

/// The current subscription table, replaced as a whole when subscriptions change.
#[derive(Clone, Default)]
pub struct Subscriptions {
    current: Arc<RwLock<Arc<SubscriptionTable>>>,
    /// Set when the table follows the topic, which can then record a disable.
    topic: Option<Arc<TopicWriter>>,
}

/// The producer and state for writing a change back to the subscriptions topic.
struct TopicWriter {
    topic: String,
    producer: kafka::Producer,
    produce_timeout: Duration,
    /// The latest record of each subscription, as stored (secrets sealed).
    stored: Mutex<BTreeMap<String, StoredSubscription>>,
    /// The offset of the next record to apply, per partition, and a signal when it moves.
    applied: Mutex<HashMap<i32, i64>>,
    advanced: tokio::sync::Notify,
}

/// The error of writing a change to the subscriptions topic.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("subscriptions come from a file and cannot be changed while running")]
    NotFollowing,
    #[error("writing to {topic} failed")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("the change was written to {topic} but not read back within {timeout:?}")]
    NotApplied { topic: String, timeout: Duration },
}

impl Subscriptions {
    /// Returns a table that never changes, for subscriptions read from a file.
    pub fn fixed(table: SubscriptionTable) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(table))),
            topic: None,
        }
    }

    /// Disables a subscription on the topic, so that it stays disabled across restarts and in
    /// every process. Returns `Ok(false)` when subscriptions come from a file, which cannot be
    /// changed from here.
    pub async fn disable_on_topic(&self, id: &str) -> Result<bool, WriteError> {
        let Some(mut disabled) = self.stored(id) else {
            return Ok(false);
        };
        disabled.subscription.enabled = false;
        disabled.updated_at = crate::time::rfc3339(std::time::SystemTime::now());
        self.write(id, Some(&disabled)).await.map(|()| true)
    }

    /// Returns the latest record of each subscription on the topic, secrets sealed; empty when
    /// subscriptions come from a file.
    pub fn stored_all(&self) -> BTreeMap<String, StoredSubscription> {
        match &self.topic {
            Some(writer) => writer.stored_records().clone(),
            None => BTreeMap::new(),
        }
    }

    /// Returns the latest record of one subscription on the topic, secrets sealed.
    pub fn stored(&self, id: &str) -> Option<StoredSubscription> {
        self.topic
            .as_ref()
            .and_then(|writer| writer.stored_records().get(id).cloned())
    }

    /// Writes a subscription's record (`None` writes a tombstone) and waits until this process
    /// has read it back, so the next read and the next routed record see the change.
    pub async fn write(
        &self,
        id: &str,
        record: Option<&StoredSubscription>,
    ) -> Result<(), WriteError> {
        let Some(writer) = &self.topic else {
            return Err(WriteError::NotFollowing);
        };
        let value = record.map(StoredSubscription::encode);
        let mut message: rdkafka::producer::FutureRecord<'_, str, [u8]> =
            rdkafka::producer::FutureRecord::to(&writer.topic).key(id);
        if let Some(value) = &value {
            message = message.payload(value);
        }
        let delivered = writer
            .producer
            .send(message, writer.produce_timeout)
            .await
            .map_err(|(source, _)| WriteError::Kafka {
                topic: writer.topic.clone(),
                source,
            })?;
        writer
            .wait_applied(delivered.partition, delivered.offset)
            .await
    }

    /// Returns the table as it is now; hold it for the whole of one record's work.
    pub fn current(&self) -> Arc<SubscriptionTable> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn replace(&self, table: SubscriptionTable) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
    }
}

impl TopicWriter {
    fn stored_records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredSubscription>> {
        self.stored
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that the record at `offset` of `partition` has been applied.
    fn mark_applied(&self, partition: i32, offset: i64) {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(partition, offset + 1);
        self.advanced.notify_waiters();
    }

    /// Waits until the record at `offset` of `partition` has been applied.
    async fn wait_applied(&self, partition: i32, offset: i64) -> Result<(), WriteError> {
        let applied = || {
            self.applied
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(&partition)
                .is_some_and(|&next| next > offset)
        };
        let deadline = tokio::time::Instant::now() + self.produce_timeout;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if applied() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return Err(WriteError::NotApplied {
                    topic: self.topic.clone(),
                    timeout: self.produce_timeout,
                });
            }
        }
    }
}

/// The error that keeps the subscriptions topic from being read at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "encryption.keys is empty: secrets on the subscriptions topic are sealed with them. Set HERALD__ENCRYPTION__KEYS=<id>:<base64 of 32 bytes>, or set subscriptions.source = \"file\" to read a YAML file instead"
    )]
    NoKeys,
    #[error("invalid encryption.keys")]
    Keys(#[source] EncryptionError),
    #[error("cannot read the subscriptions topic {topic}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("the subscriptions topic {0} does not exist: run `herald topics apply`")]
    NoSuchTopic(String),
    #[error("the subscriptions topic {topic} was not read to its end within {CATCH_UP_TIMEOUT:?}")]
    CatchUp { topic: String },
}

/// The subscriptions read so far, by id, checked once as each record arrives. An invalid one is
/// left out of the table.
struct Followed {
    checked: BTreeMap<String, Subscription>,
    /// The same records as stored, for writing a change back.
    stored: Arc<TopicWriter>,
    keys: KeyRing,
    allow_plain_http: bool,
}

impl Followed {
    /// Applies one record; returns what changed, for the log.
    fn apply(&mut self, message: &BorrowedMessage<'_>) -> Option<(&'static str, String)> {
        let Some(id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
            tracing::warn!(
                offset = message.offset(),
                "subscription record without a UTF-8 key ignored"
            );
            return None;
        };
        let Some(value) = message.payload() else {
            self.checked.remove(id);
            return self
                .stored_records()
                .remove(id)
                .map(|_| ("subscription deleted", id.to_owned()));
        };
        let opened = StoredSubscription::decode(value).and_then(|stored| {
            let spec = open(&stored.subscription, &self.keys).map_err(|error| error.to_string())?;
            Ok((stored, spec))
        });
        match opened {
            Ok((stored, spec)) if spec.id == id => {
                let change = match self.stored_records().insert(id.to_owned(), stored) {
                    Some(_) => "subscription updated",
                    None => "subscription created",
                };
                let mut problems = Problems::default();
                match check_spec(&spec, id, self.allow_plain_http, &mut problems) {
                    Some(subscription) => {
                        self.checked.insert(id.to_owned(), subscription);
                    }
                    None => {
                        tracing::warn!(subscription_id = id, %problems, "subscription left out: invalid");
                        self.checked.remove(id);
                    }
                }
                Some((change, id.to_owned()))
            }
            Ok((_, spec)) => {
                tracing::warn!(subscription_id = id, body_id = %spec.id, "subscription record ignored: its key and its id differ");
                None
            }
            Err(reason) => {
                tracing::warn!(subscription_id = id, %reason, "subscription record ignored");
                None
            }
        }
    }

    fn stored_records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredSubscription>> {
        self.stored.stored_records()
    }

    /// Builds the table from the valid subscriptions.
    fn table(&self) -> SubscriptionTable {
        SubscriptionTable::from_checked(self.checked.values().cloned())
    }
}

/// Reads `topics.subscriptions` to its end, then keeps the returned table current in a
/// background task for as long as the process runs.
pub async fn follow(config: &HeraldConfig) -> Result<Subscriptions, RegistryError> {
    let topic = config.topics.subscriptions.clone();
    let kafka_error = |source| RegistryError::Kafka {
        topic: topic.clone(),
        source,
    };
    if config.encryption.is_empty() {
        return Err(RegistryError::NoKeys);
    }
    let keys = config.encryption.key_ring().map_err(RegistryError::Keys)?;
    let mut client = kafka::admin_config(&config.kafka);
    client
        .set("group.id", "herald-subscriptions-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Statistics show when a broker is up again after an outage, for readiness.
        .set("statistics.interval.ms", "5000");
    let consumer: StreamConsumer<kafka::HealthContext> = client
        .create_with_context(kafka::HealthContext::new("subscriptions-reader"))
        .map_err(kafka_error)?;

    let partitions =
        kafka::topic_partitions(&consumer, &topic, METADATA_TIMEOUT).map_err(kafka_error)?;
    if partitions.is_empty() {
        return Err(RegistryError::NoSuchTopic(topic));
    }
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = kafka::watermarks(&consumer, &topic, partition, METADATA_TIMEOUT)
            .map_err(kafka_error)?;
        if high > low {
            ends.insert(partition, high);
        }
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .map_err(kafka_error)?;
    }
    consumer.assign(&assignment).map_err(kafka_error)?;

    let writer = Arc::new(TopicWriter {
        topic: topic.clone(),
        producer: kafka::producer(&config.kafka).map_err(kafka_error)?,
        produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
        stored: Mutex::new(BTreeMap::new()),
        applied: Mutex::new(HashMap::new()),
        advanced: tokio::sync::Notify::new(),
    });
    let mut followed = Followed {
        checked: BTreeMap::new(),
        stored: Arc::clone(&writer),
        keys,
        allow_plain_http: config.sender.allow_plain_http,
    };
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    while !ends.is_empty() {
        let received = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| RegistryError::CatchUp {
                topic: topic.clone(),
            })?;
        let message = received.map_err(kafka_error)?;
        followed.apply(&message);
        writer.mark_applied(message.partition(), message.offset());
        if ends
            .get(&message.partition())
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            ends.remove(&message.partition());
        }
    }
    let subscriptions = Subscriptions {
        topic: Some(writer),
        ..Subscriptions::fixed(followed.table())
    };
    tracing::info!(
        %topic,
        subscriptions = subscriptions.current().len(),
        "subscriptions read from the topic"
    );

    let live = subscriptions.clone();
    tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(message) => {
                    if let Some((change, id)) = followed.apply(&message) {
                        live.replace(followed.table());
                        tracing::info!(subscription_id = %id, "{change}");
                    }
                    followed
                        .stored
                        .mark_applied(message.partition(), message.offset());
                }
                Err(error) => {
                    if let Some(repeats) =
                        kafka::error_log().due(&format!("subscriptions reader: {error}"))
                    {
                        tracing::warn!(%topic, %error, repeats, "reading the subscriptions topic failed, continuing (logged at most every 30 s)");
                    }
                }
            }
        }
    });
    Ok(subscriptions)
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn keys() -> KeyRing {
        let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        KeyRing::parse(&[format!("k1:{key}")]).expect("valid ring")
    }

    const SCHEMA: &str = include_str!("../../../schemas/subscription.schema.json");

    fn keys_of(value: &serde_json::Value) -> std::collections::BTreeSet<String> {
        value
            .as_object()
            .map(|object| object.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn stored_subscription_matches_its_published_schema() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("valid schema");
        let condition: crate::filter::ConditionSpec = serde_json::from_value(serde_json::json!({
            "path": "/data/amount", "equals": 1, "in": [1], "exists": true,
            "gt": 1, "gte": 1, "lt": 2, "lte": 2
        }))
        .expect("a condition with every test");
        let spec = SubscriptionSpec {
            description: "every field set".into(),
            timeout_ms: Some(5_000),
            rate_limit_per_second: Some(10),
            rate_limit_burst: Some(2),
            max_concurrency: Some(3),
            filter: vec![condition],
            retiring_secrets: vec![RetiringSecret {
                secret: "y".into(),
                until: "2026-12-05T10:00:00Z".into(),
            }],
            headers: [("X-Tenant".to_owned(), "acme".to_owned())].into(),
            client_certificate: Some("pem".into()),
            client_key: Some("sealed".into()),
            ..SubscriptionSpec::new("ledger", "https://a.example.com/", &["*"], vec!["x".into()])
        };
        let stored = StoredSubscription {
            subscription: spec,
            created_at: "2026-12-04T10:00:00Z".into(),
            updated_at: "2026-12-04T10:00:00Z".into(),
        };
        let value = serde_json::to_value(&stored).expect("serializable");
        assert_eq!(keys_of(&value), keys_of(&schema["properties"]));
        let subscription = &value["subscription"];
        let described = &schema["$defs"]["subscription"];
        assert_eq!(keys_of(subscription), keys_of(&described["properties"]));
        for required in described["required"].as_array().expect("required") {
            let name = required.as_str().expect("a name");
            assert!(!subscription[name].is_null(), "{name} is required");
        }
        assert_eq!(
            keys_of(&subscription["filter"][0]),
            keys_of(&schema["$defs"]["condition"]["properties"])
        );
        assert_eq!(
            keys_of(&subscription["retiring_secrets"][0]),
            keys_of(&schema["$defs"]["retiringSecret"]["properties"])
        );
    }

    #[test]
    fn stored_subscription_round_trips_with_sealed_secrets() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        let spec = SubscriptionSpec {
            client_certificate: Some("-----BEGIN CERTIFICATE-----\n...".into()),
            client_key: Some("-----BEGIN PRIVATE KEY-----\nPLAINKEYBYTES".into()),
            ..SubscriptionSpec::new(
                "ledger",
                "https://ledger.example.com/hooks",
                &["payment.*"],
                vec![secret.clone()],
            )
        };
        let keys = keys();
        let stored = StoredSubscription {
            subscription: seal(&spec, &keys).expect("sealed"),
            created_at: "2026-12-04T10:00:00Z".into(),
            updated_at: "2026-12-04T10:00:00Z".into(),
        };
        let value = stored.encode();
        let text = String::from_utf8(value.clone()).expect("JSON text");
        assert!(
            !text.contains("MfKQ9r8G"),
            "the plain secret is on the topic: {text}"
        );
        assert!(
            !text.contains("PLAINKEYBYTES"),
            "the plain client key is on the topic: {text}"
        );
        let read = StoredSubscription::decode(&value).expect("decodes");
        assert_eq!(read, stored);
        assert_eq!(open(&read.subscription, &keys).expect("opens"), spec);
    }
}
