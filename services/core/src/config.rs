//! Configuration of every Herald service: defaults, then an optional TOML or YAML file, then
//! `HERALD__SECTION__KEY` environment variables. Everything is checked at start-up and every
//! problem is reported at once with the key it belongs to.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "127.0.0.1:19092";
pub const DEFAULT_PRODUCE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_DELIVERIES_TOPIC: &str = "herald.deliveries";
pub const DEFAULT_REJECTED_TOPIC: &str = "herald.rejected";
pub const DEFAULT_DLQ_TOPIC: &str = "herald.dlq";
/// Generous, because it bounds how many sender pods can share the work and should not change later.
pub const DEFAULT_DELIVERIES_PARTITIONS: i32 = 12;
pub const DEFAULT_SIDE_TOPIC_PARTITIONS: i32 = 3;
pub const DEFAULT_ROUTER_GROUP: &str = "herald-router";
pub const DEFAULT_SENDER_GROUP: &str = "herald-sender";
pub const DEFAULT_ROUTER_MAX_IN_FLIGHT_EVENTS: usize = 1_000;
/// Below librdkafka's default `message.max.bytes` of 1,000,000, leaving room for key and headers.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 900_000;
pub const DEFAULT_SENDER_MAX_IN_FLIGHT: usize = 1_024;
pub const DEFAULT_SENDER_MAX_IN_FLIGHT_PER_PARTITION: usize = 512;
/// Payload bytes a stage may hold in unfinished work.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 1_000;
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 100;
pub const DEFAULT_MAX_CONCURRENCY: u32 = 50;
pub const DEFAULT_PARK_AFTER_MS: u64 = 1_000;
pub const DEFAULT_MAX_WAITING_PER_SUBSCRIPTION: usize = 1_000;
pub const DEFAULT_CIRCUIT_FAILURE_THRESHOLD: u32 = 10;
pub const DEFAULT_CIRCUIT_OPEN_MS: u64 = 30_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024;
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_SUBSCRIPTIONS_FILE: &str = "config/subscriptions.yaml";
pub const DEFAULT_ATTEMPTS_TOPIC: &str = "herald.attempts";
pub const DEFAULT_SUBSCRIPTIONS_TOPIC: &str = "herald.subscriptions";
pub const DEFAULT_RETRY_TIERS: [&str; 8] = ["10s", "1m", "5m", "30m", "2h", "6h", "12h", "24h"];
pub const DEFAULT_RETRY_TOPIC_PREFIX: &str = "herald.retry.";
pub const DEFAULT_RETRY_PARTITIONS: i32 = 6;
pub const DEFAULT_JITTER_PERCENT: u32 = 10;
pub const DEFAULT_MAX_RETRY_AFTER_S: u64 = 24 * 60 * 60;
pub const DEFAULT_FORWARDER_GROUP: &str = "herald-forwarder";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8088";
pub const DEFAULT_ADMIN_MAX_BODY_BYTES: usize = 256 * 1024;
/// The shortest bearer token accepted, so that no token can be guessed.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// The whole configuration; each service reads the sections it needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeraldConfig {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub router: RouterConfig,
    pub sender: SenderConfig,
    pub subscriptions: SubscriptionsConfig,
    pub retry: RetryConfig,
    pub log: LogConfig,
    pub encryption: EncryptionConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
}

/// How to reach Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// How long a produce may keep retrying before it times out, in milliseconds. The admin API
    /// and the commands then fail; the pipeline's stages produce the record again.
    pub produce_timeout_ms: u64,
    /// Static group membership: a name that stays the same when this instance restarts, such as
    /// the pod name of a StatefulSet. Every consumer of the process joins its group with it as
    /// `group.instance.id`, so a restart within `session.timeout.ms` moves no partitions. Two
    /// running instances must never share it.
    pub group_instance_id: Option<String>,
    /// librdkafka settings for every client, passed through unchanged, such as
    /// `security.protocol`. In environment variables write underscores for the dots:
    /// `HERALD__KAFKA__CLIENT__SECURITY_PROTOCOL`.
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for consumers only, such as `session.timeout.ms`
    /// (`HERALD__KAFKA__CONSUMER__SESSION_TIMEOUT_MS`).
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for producers only, such as `linger.ms`
    /// (`HERALD__KAFKA__PRODUCER__LINGER_MS`).
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: DEFAULT_BOOTSTRAP_SERVERS.to_owned(),
            produce_timeout_ms: DEFAULT_PRODUCE_TIMEOUT_MS,
            group_instance_id: None,
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// Herald's topics, and the domain topics that `herald topics apply` creates for convenience.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub deliveries: String,
    /// Fixed once deliveries flow: changing it moves subscriptions between sender pods.
    pub deliveries_partitions: i32,
    pub rejected: String,
    pub rejected_partitions: i32,
    pub dlq: String,
    pub dlq_partitions: i32,
    /// The attempt log: one record per attempt, keyed by delivery id.
    pub attempts: String,
    pub attempts_partitions: i32,
    /// Subscriptions, compacted: key = subscription id, value = the subscription as JSON with
    /// sealed secrets, a tombstone to delete.
    pub subscriptions: String,
    pub subscriptions_partitions: i32,
    /// Replication factor of topics Herald creates; -1 takes the broker's default.
    pub replication_factor: i32,
    /// Domain topics to create with Herald's, for local runs and demos.
    pub domain: Vec<DomainTopic>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            deliveries: DEFAULT_DELIVERIES_TOPIC.to_owned(),
            deliveries_partitions: DEFAULT_DELIVERIES_PARTITIONS,
            rejected: DEFAULT_REJECTED_TOPIC.to_owned(),
            rejected_partitions: DEFAULT_SIDE_TOPIC_PARTITIONS,
            dlq: DEFAULT_DLQ_TOPIC.to_owned(),
            dlq_partitions: DEFAULT_SIDE_TOPIC_PARTITIONS,
            attempts: DEFAULT_ATTEMPTS_TOPIC.to_owned(),
            attempts_partitions: DEFAULT_RETRY_PARTITIONS,
            subscriptions: DEFAULT_SUBSCRIPTIONS_TOPIC.to_owned(),
            subscriptions_partitions: 1,
            replication_factor: -1,
            domain: Vec::new(),
        }
    }
}

/// A domain topic for `herald topics apply`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainTopic {
    pub name: String,
    pub partitions: i32,
    /// Topic settings such as `max.message.bytes`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// The router: domain topics in, deliveries out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    pub group_id: String,
    /// Domain topics to consume.
    pub source_topics: Vec<String>,
    /// Events whose deliveries may be waiting for Kafka's acknowledgement at once.
    pub max_in_flight_events: usize,
    /// Bytes of those events; partitions pause when either limit is reached.
    pub max_in_flight_bytes: usize,
    /// Larger events are rejected; keep it below the producer's `message.max.bytes`.
    pub max_event_bytes: usize,
    /// Time allowed on shutdown for events in flight, in milliseconds.
    pub shutdown_timeout_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            group_id: DEFAULT_ROUTER_GROUP.to_owned(),
            source_topics: Vec::new(),
            max_in_flight_events: DEFAULT_ROUTER_MAX_IN_FLIGHT_EVENTS,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
        }
    }
}

/// The sender: deliveries in, HTTP requests out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    pub group_id: String,
    /// Deliveries in flight at once across all partitions, waiting ones included.
    pub max_in_flight: usize,
    /// Deliveries in flight at once in one partition of the deliveries topic.
    pub max_in_flight_per_partition: usize,
    /// Payload bytes of the deliveries in flight; partitions pause when any limit is reached.
    pub max_in_flight_bytes: usize,
    /// Requests per second to one subscription, unless the subscription sets its own; 0 for
    /// no limit.
    pub default_rate_limit_per_second: u32,
    /// Requests that may go at once above the steady rate, unless the subscription sets its own.
    pub default_rate_limit_burst: u32,
    /// Requests open at once to one subscription, unless the subscription sets its own.
    pub default_max_concurrency: u32,
    /// A delivery that would wait longer than this for its subscription's limits is parked on the
    /// first retry tier, without counting as an attempt, so that it does not hold the window.
    pub park_after_ms: u64,
    /// Deliveries that may wait for one subscription's limits; more are parked at once.
    pub max_waiting_per_subscription: usize,
    /// Failed attempts in a row that open a subscription's circuit.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit sends deliveries straight to the next tier before one probe
    /// attempt is let through, in milliseconds.
    pub circuit_open_ms: u64,
    /// Time allowed to open a TCP connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Allow `http://` endpoints. Only for local testing: requests and signatures travel in clear.
    pub allow_plain_http: bool,
    /// Networks webhooks may reach although they are loopback, private, link-local or otherwise
    /// not public, as `10.1.0.0/16` or a single address. Empty: only public addresses.
    pub allowed_networks: Vec<String>,
    /// A PEM file of certificate authorities trusted beside the public ones, such as a bank's own.
    pub extra_ca_file: Option<PathBuf>,
    /// Response bytes read before the rest is discarded.
    pub max_response_bytes: usize,
    /// Time allowed on shutdown for attempts in flight, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Write every attempt to the attempt log topic.
    pub attempt_log: bool,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            group_id: DEFAULT_SENDER_GROUP.to_owned(),
            max_in_flight: DEFAULT_SENDER_MAX_IN_FLIGHT,
            max_in_flight_per_partition: DEFAULT_SENDER_MAX_IN_FLIGHT_PER_PARTITION,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            default_rate_limit_per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
            default_rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            default_max_concurrency: DEFAULT_MAX_CONCURRENCY,
            park_after_ms: DEFAULT_PARK_AFTER_MS,
            max_waiting_per_subscription: DEFAULT_MAX_WAITING_PER_SUBSCRIPTION,
            circuit_failure_threshold: DEFAULT_CIRCUIT_FAILURE_THRESHOLD,
            circuit_open_ms: DEFAULT_CIRCUIT_OPEN_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            allow_plain_http: false,
            allowed_networks: Vec::new(),
            extra_ca_file: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            attempt_log: true,
        }
    }
}

/// Retries: the tiers, their topics and the delay forwarder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delays in rising order, such as `10s`, `5m`, `2h`; one topic per delay.
    pub tiers: Vec<String>,
    /// Tier topics are named `<topic_prefix><delay>`.
    pub topic_prefix: String,
    pub partitions: i32,
    /// Random extra delay, up to this percentage of the tier's delay, so that deliveries to an
    /// endpoint that comes back do not all arrive in the same second.
    pub jitter_percent: u32,
    /// The longest `Retry-After` honoured, in seconds; longer requests are cut to it.
    pub max_retry_after_s: u64,
    /// Consumer group of the delay forwarder.
    pub forwarder_group_id: String,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            tiers: DEFAULT_RETRY_TIERS
                .iter()
                .map(|tier| (*tier).to_owned())
                .collect(),
            topic_prefix: DEFAULT_RETRY_TOPIC_PREFIX.to_owned(),
            partitions: DEFAULT_RETRY_PARTITIONS,
            jitter_percent: DEFAULT_JITTER_PERCENT,
            max_retry_after_s: DEFAULT_MAX_RETRY_AFTER_S,
            forwarder_group_id: DEFAULT_FORWARDER_GROUP.to_owned(),
        }
    }
}

impl RetryConfig {
    /// Builds the schedule; configuration that passed [`HeraldConfig::problems`] always builds.
    pub fn schedule(&self) -> Result<crate::retry::RetrySchedule, String> {
        crate::retry::RetrySchedule::try_new(&self.tiers, &self.topic_prefix)
    }
}

/// The source of subscriptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// The source the router and the sender read subscriptions from.
    pub source: SubscriptionSource,
    /// YAML file listing subscriptions when `source` is `file`; relative paths start at the
    /// working directory.
    pub file: PathBuf,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            source: SubscriptionSource::Topic,
            file: PathBuf::from(DEFAULT_SUBSCRIPTIONS_FILE),
        }
    }
}

/// The source of subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionSource {
    /// `subscriptions.file`, read once at start-up: for small set-ups without the admin API.
    File,
    /// `topics.subscriptions`, read at start-up and followed while running (the default).
    Topic,
}

/// Keys that seal signing secrets on the subscriptions topic.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Entries `<id>:<base64 of 32 bytes>`; the first seals, every one opens. Give them through
    /// the environment from the deployment's secrets: `HERALD__ENCRYPTION__KEYS=id2:…,id1:…`.
    pub keys: Vec<String>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self
            .keys
            .iter()
            .map(|entry| entry.split_once(':').map_or("?", |(id, _)| id))
            .collect();
        formatter
            .debug_struct("EncryptionConfig")
            .field("key_ids", &ids)
            .finish()
    }
}

impl EncryptionConfig {
    /// True when no key is given; an empty environment variable counts as none.
    pub fn is_empty(&self) -> bool {
        self.keys.iter().all(|entry| entry.trim().is_empty())
    }

    /// Builds the key ring; configuration that passed [`HeraldConfig::problems`] builds when
    /// keys are given.
    pub fn key_ring(
        &self,
    ) -> Result<crate::encryption::KeyRing, crate::encryption::EncryptionError> {
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .cloned()
            .collect();
        crate::encryption::KeyRing::parse(&keys)
    }
}

/// Metrics and health endpoints of the router and the sender.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Address for `/metrics` (Prometheus), `/healthz` and `/readyz`, such as `0.0.0.0:9464`;
    /// none serves nothing.
    pub listen: Option<String>,
    /// OTLP/HTTP endpoint that metrics are pushed to, such as `http://collector:4318`; none
    /// pushes nothing.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP, in milliseconds.
    pub export_interval_ms: u64,
    /// The share of new traces recorded, from 0 to 1; a trace the publisher sampled is always
    /// continued.
    pub trace_sample_ratio: f64,
    /// Add `subscription_id` to per-subscription metrics. Each subscription is then its own time
    /// series, so turn it on only for a bounded number of subscriptions.
    pub subscription_attribute: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: None,
            otlp_endpoint: None,
            export_interval_ms: 60_000,
            trace_sample_ratio: 1.0,
            subscription_attribute: false,
        }
    }
}

/// The admin HTTP API (`herald admin`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address and port the API listens on.
    pub listen: String,
    /// Bearer tokens as `<role>:<token>`, where the role is `admin` (every operation) or `read`
    /// (reads only). Give them through the environment from the deployment's secrets:
    /// `HERALD__ADMIN__TOKENS=admin:…,read:…`.
    pub tokens: Vec<String>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.to_owned(),
            tokens: Vec::new(),
            max_body_bytes: DEFAULT_ADMIN_MAX_BODY_BYTES,
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<&str> = self
            .tokens
            .iter()
            .map(|entry| entry.split_once(':').map_or("?", |(role, _)| role))
            .collect();
        formatter
            .debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token_roles", &roles)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The permission a bearer token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdminRole {
    /// Reads only.
    Read,
    /// Every operation.
    Admin,
}

impl AdminConfig {
    /// Returns each configured token with its role; an empty entry counts as none.
    pub fn roles(&self) -> Result<Vec<(AdminRole, String)>, Problems> {
        let mut problems = Problems::default();
        let mut tokens = Vec::new();
        for (position, entry) in self.tokens.iter().enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let key = format!("admin.tokens[{position}]");
            let (role, token) = match entry.split_once(':') {
                Some(("admin", token)) => (AdminRole::Admin, token),
                Some(("read", token)) => (AdminRole::Read, token),
                _ => {
                    problems.add(key, "must be admin:<token> or read:<token>");
                    continue;
                }
            };
            if token.chars().count() < MIN_ADMIN_TOKEN_CHARS
                || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                problems.add(
                    key,
                    format!("the token must be at least {MIN_ADMIN_TOKEN_CHARS} printable ASCII characters without spaces, such as the output of `openssl rand -hex 32`"),
                );
                continue;
            }
            tokens.push((role, token.to_owned()));
        }
        if problems.is_empty() {
            Ok(tokens)
        } else {
            Err(problems)
        }
    }
}

/// Log output. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `herald_sender=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One problem with the configuration, under the key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found; shown one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, problem) in self.0.iter().enumerate() {
            if position > 0 {
                writeln!(formatter)?;
            }
            write!(formatter, "  {}: {}", problem.key, problem.message)?;
        }
        Ok(())
    }
}

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration")]
    Load(#[source] config::ConfigError),
    #[error("invalid configuration:\n{0}")]
    Invalid(Problems),
}

impl HeraldConfig {
    /// Loads defaults, then `file` if given, then the process environment, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_environment(file, std::env::vars().collect())
    }

    /// Like [`HeraldConfig::load`], with the environment given as a map so tests need no real one.
    pub fn load_with_environment(
        file: Option<&Path>,
        environment: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let (client_settings, environment) = split_client_settings(environment);
        let [client_settings, consumer_settings, producer_settings] = client_settings;
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HERALD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("router.source_topics")
                .with_list_parse_key("retry.tiers")
                .with_list_parse_key("encryption.keys")
                .with_list_parse_key("admin.tokens")
                .with_list_parse_key("sender.allowed_networks")
                .source(Some(environment)),
        );
        let mut loaded: Self = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(ConfigError::Load)?;
        loaded.kafka.client.extend(client_settings);
        loaded.kafka.consumer.extend(consumer_settings);
        loaded.kafka.producer.extend(producer_settings);
        let problems = loaded.problems();
        if problems.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Lists every problem with the values as loaded.
    pub fn problems(&self) -> Problems {
        let mut problems = Problems::default();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            problems.add("kafka.bootstrap_servers", "must not be empty");
        }
        require_positive(
            &mut problems,
            "kafka.produce_timeout_ms",
            self.kafka.produce_timeout_ms,
        );

        let topics = &self.topics;
        for (key, name) in [
            ("topics.deliveries", &topics.deliveries),
            ("topics.rejected", &topics.rejected),
            ("topics.dlq", &topics.dlq),
            ("topics.subscriptions", &topics.subscriptions),
        ] {
            check_topic_name(&mut problems, key, name);
        }
        for (key, count) in [
            ("topics.deliveries_partitions", topics.deliveries_partitions),
            ("topics.rejected_partitions", topics.rejected_partitions),
            ("topics.dlq_partitions", topics.dlq_partitions),
            ("topics.attempts_partitions", topics.attempts_partitions),
            (
                "topics.subscriptions_partitions",
                topics.subscriptions_partitions,
            ),
            ("retry.partitions", self.retry.partitions),
        ] {
            if count < 1 {
                problems.add(key, "must be at least 1");
            }
        }
        if topics.replication_factor == 0 || topics.replication_factor < -1 {
            problems.add(
                "topics.replication_factor",
                "must be -1 (broker default) or at least 1",
            );
        }
        for (position, topic) in topics.domain.iter().enumerate() {
            check_topic_name(
                &mut problems,
                &format!("topics.domain[{position}].name"),
                &topic.name,
            );
            if topic.partitions < 1 {
                problems.add(
                    format!("topics.domain[{position}].partitions"),
                    "must be at least 1",
                );
            }
        }

        if self.router.group_id.is_empty() {
            problems.add("router.group_id", "must not be empty");
        }
        for (position, topic) in self.router.source_topics.iter().enumerate() {
            check_topic_name(
                &mut problems,
                &format!("router.source_topics[{position}]"),
                topic,
            );
        }
        require_positive(
            &mut problems,
            "router.max_in_flight_events",
            self.router.max_in_flight_events as u64,
        );
        require_positive(
            &mut problems,
            "router.max_event_bytes",
            self.router.max_event_bytes as u64,
        );

        if self.sender.group_id.is_empty() {
            problems.add("sender.group_id", "must not be empty");
        }
        require_positive(
            &mut problems,
            "sender.max_in_flight",
            self.sender.max_in_flight as u64,
        );
        require_positive(
            &mut problems,
            "sender.connect_timeout_ms",
            self.sender.connect_timeout_ms,
        );
        for (key, value) in [
            (
                "sender.max_in_flight_per_partition",
                self.sender.max_in_flight_per_partition as u64,
            ),
            (
                "sender.max_in_flight_bytes",
                self.sender.max_in_flight_bytes as u64,
            ),
            (
                "sender.default_rate_limit_burst",
                u64::from(self.sender.default_rate_limit_burst),
            ),
            (
                "sender.default_max_concurrency",
                u64::from(self.sender.default_max_concurrency),
            ),
            ("sender.park_after_ms", self.sender.park_after_ms),
            (
                "sender.max_waiting_per_subscription",
                self.sender.max_waiting_per_subscription as u64,
            ),
            (
                "sender.circuit_failure_threshold",
                u64::from(self.sender.circuit_failure_threshold),
            ),
            ("sender.circuit_open_ms", self.sender.circuit_open_ms),
            (
                "router.max_in_flight_bytes",
                self.router.max_in_flight_bytes as u64,
            ),
        ] {
            require_positive(&mut problems, key, value);
        }
        // A subscription may fill its concurrency and an equal waiting line: that must leave room
        // in its partition's window for the other subscriptions there.
        if self.sender.max_in_flight_per_partition as u64
            <= 2 * u64::from(self.sender.default_max_concurrency)
        {
            problems.add(
                "sender.max_in_flight_per_partition",
                "must be more than twice sender.default_max_concurrency, so that one subscription cannot fill a partition's window",
            );
        }
        if !self.encryption.is_empty()
            && let Err(error) = self.encryption.key_ring()
        {
            problems.add("encryption.keys", error.to_string());
        }
        for (position, entry) in self.sender.allowed_networks.iter().enumerate() {
            if !entry.trim().is_empty()
                && let Err(message) = crate::address::Network::parse(entry)
            {
                problems.add(format!("sender.allowed_networks[{position}]"), message);
            }
        }
        if let Err(token_problems) = self.admin.roles() {
            for problem in token_problems.iter() {
                problems.add(problem.key.clone(), problem.message.clone());
            }
        }
        if self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.add(
                "admin.listen",
                "must be an address and port, such as 127.0.0.1:8088 or 0.0.0.0:8088",
            );
        }
        if let Some(listen) = &self.telemetry.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            problems.add(
                "telemetry.listen",
                "must be an address and port, such as 0.0.0.0:9464",
            );
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.add(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// URL, such as http://collector:4318",
            );
        }
        if !(0.0..=1.0).contains(&self.telemetry.trace_sample_ratio) {
            problems.add("telemetry.trace_sample_ratio", "must be from 0 to 1");
        }
        require_positive(
            &mut problems,
            "telemetry.export_interval_ms",
            self.telemetry.export_interval_ms,
        );
        require_positive(
            &mut problems,
            "admin.max_body_bytes",
            self.admin.max_body_bytes as u64,
        );
        if let Some(name) = &self.kafka.group_instance_id
            && name.trim().is_empty()
        {
            problems.add(
                "kafka.group_instance_id",
                "must not be empty; leave it out for dynamic membership",
            );
        }

        match self.retry.schedule() {
            Ok(schedule) => {
                for (position, tier) in schedule.tiers().iter().enumerate() {
                    check_topic_name(
                        &mut problems,
                        &format!("retry.tiers[{position}]"),
                        &tier.topic,
                    );
                }
            }
            Err(message) => problems.add("retry.tiers", message),
        }
        if self.retry.jitter_percent > 100 {
            problems.add("retry.jitter_percent", "must be between 0 and 100");
        }
        if self.retry.forwarder_group_id.is_empty() {
            problems.add("retry.forwarder_group_id", "must not be empty");
        }

        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            problems.add(
                "log.level",
                format!("{:?} is not a valid tracing filter", self.log.level),
            );
        }
        problems
    }
}

/// Takes the `HERALD__KAFKA__{CLIENT,CONSUMER,PRODUCER}__*` variables out of the environment.
/// Their keys are librdkafka settings whose dots cannot appear in variable names, so
/// `HERALD__KAFKA__CLIENT__SECURITY_PROTOCOL` stands for `security.protocol`.
fn split_client_settings(
    environment: HashMap<String, String>,
) -> ([BTreeMap<String, String>; 3], HashMap<String, String>) {
    const PREFIXES: [&str; 3] = [
        "HERALD__KAFKA__CLIENT__",
        "HERALD__KAFKA__CONSUMER__",
        "HERALD__KAFKA__PRODUCER__",
    ];
    let mut settings: [BTreeMap<String, String>; 3] = Default::default();
    let mut rest = HashMap::new();
    'variables: for (name, value) in environment {
        for (prefix, target) in PREFIXES.iter().zip(settings.iter_mut()) {
            if let Some(key) = name.strip_prefix(prefix) {
                target.insert(key.to_lowercase().replace('_', "."), value);
                continue 'variables;
            }
        }
        rest.insert(name, value);
    }
    (settings, rest)
}

fn require_positive(problems: &mut Problems, key: &str, value: u64) {
    if value == 0 {
        problems.add(key, "must be greater than 0");
    }
}

/// Kafka topic names: 1 to 249 characters of ASCII letters, digits, '.', '_' and '-'.
fn check_topic_name(problems: &mut Problems, key: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        problems.add(key, format!("{name:?} is not a valid Kafka topic name"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config =
            HeraldConfig::load_with_environment(None, HashMap::new()).expect("defaults load");
        assert_eq!(config.kafka.bootstrap_servers, DEFAULT_BOOTSTRAP_SERVERS);
        assert_eq!(config.topics.deliveries, DEFAULT_DELIVERIES_TOPIC);
        assert!(!config.sender.allow_plain_http);
    }

    #[test]
    fn environment_overrides_nested_keys_and_lists() {
        let config = HeraldConfig::load_with_environment(
            None,
            environment(&[
                ("HERALD__KAFKA__BOOTSTRAP_SERVERS", "broker:9092"),
                (
                    "HERALD__ROUTER__SOURCE_TOPICS",
                    "banking.events,cards.events",
                ),
                ("HERALD__SENDER__MAX_IN_FLIGHT", "7"),
                ("HERALD__KAFKA__CLIENT__SECURITY_PROTOCOL", "ssl"),
                ("HERALD__KAFKA__CONSUMER__SESSION_TIMEOUT_MS", "6000"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid environment");
        assert_eq!(config.kafka.bootstrap_servers, "broker:9092");
        assert_eq!(
            config.router.source_topics,
            ["banking.events", "cards.events"]
        );
        assert_eq!(config.sender.max_in_flight, 7);
        assert_eq!(
            config
                .kafka
                .client
                .get("security.protocol")
                .map(String::as_str),
            Some("ssl")
        );
        assert_eq!(
            config
                .kafka
                .consumer
                .get("session.timeout.ms")
                .map(String::as_str),
            Some("6000")
        );
        assert!(config.kafka.producer.is_empty());
    }

    #[test]
    fn example_configuration_loads() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/herald.example.toml"
        );
        let config = HeraldConfig::load_with_environment(Some(Path::new(example)), HashMap::new())
            .expect("example loads");
        assert_eq!(config.router.source_topics, ["banking.events"]);
        assert_eq!(config.retry.schedule().map(|s| s.tiers().len()), Ok(8));
    }

    #[test]
    fn admin_tokens_parse_with_roles() {
        let admin_token = "a".repeat(32);
        let read_token = "r".repeat(32);
        let config = HeraldConfig::load_with_environment(
            None,
            environment(&[(
                "HERALD__ADMIN__TOKENS",
                &format!("admin:{admin_token},read:{read_token}"),
            )]),
        )
        .expect("valid tokens");
        assert_eq!(
            config.admin.roles(),
            Ok(vec![
                (AdminRole::Admin, admin_token.clone()),
                (AdminRole::Read, read_token)
            ])
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains(&admin_token), "tokens stay out of Debug");
    }

    #[test]
    fn bad_admin_tokens_are_named() {
        let error = HeraldConfig::load_with_environment(
            None,
            environment(&[
                (
                    "HERALD__ADMIN__TOKENS",
                    "owner:0123456789abcdef0123456789,read:short",
                ),
                ("HERALD__ADMIN__LISTEN", "localhost"),
            ]),
        )
        .expect_err("bad tokens");
        let ConfigError::Invalid(problems) = error else {
            panic!("expected invalid values, got {error:?}");
        };
        assert_eq!(
            problems.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["admin.tokens[0]", "admin.tokens[1]", "admin.listen"]
        );
        assert!(!problems.to_string().contains("0123456789abcdef"));
    }

    #[test]
    fn invalid_retry_schedule_is_named() {
        let error = HeraldConfig::load_with_environment(
            None,
            environment(&[("HERALD__RETRY__TIERS", "1m,30s")]),
        )
        .expect_err("falling delays");
        let ConfigError::Invalid(problems) = error else {
            panic!("expected invalid values, got {error:?}");
        };
        assert_eq!(
            problems.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["retry.tiers"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let error = HeraldConfig::load_with_environment(
            None,
            environment(&[("HERALD__SENDER__MAX_INFLIGHT", "7")]),
        )
        .expect_err("unknown key");
        assert!(
            format!("{:#}", anyhow_chain(&error)).contains("max_inflight"),
            "{error:?}"
        );
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_key() {
        let error = HeraldConfig::load_with_environment(
            None,
            environment(&[
                ("HERALD__SENDER__MAX_IN_FLIGHT", "0"),
                ("HERALD__TOPICS__DELIVERIES", "bad topic"),
                ("HERALD__TOPICS__DELIVERIES_PARTITIONS", "0"),
                ("HERALD__SENDER__MAX_WAITING_PER_SUBSCRIPTION", "0"),
                ("HERALD__SENDER__MAX_IN_FLIGHT_PER_PARTITION", "100"),
                ("HERALD__KAFKA__GROUP_INSTANCE_ID", " "),
            ]),
        )
        .expect_err("invalid values");
        let ConfigError::Invalid(problems) = error else {
            panic!("expected invalid values, got {error:?}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "topics.deliveries",
                "topics.deliveries_partitions",
                "sender.max_in_flight",
                "sender.max_waiting_per_subscription",
                "sender.max_in_flight_per_partition",
                "kafka.group_instance_id"
            ]
        );
    }

    fn anyhow_chain(error: &ConfigError) -> String {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}
