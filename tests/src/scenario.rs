//! One isolated Herald set-up on the real broker: unique topics and groups, a configuration file,
//! one reference receiver per subscription, and what each receiver should get.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::Context;

use herald_core::config::HeraldConfig;
use herald_core::topics;
use herald_verify::receiver::{Receiver, ReceiverOptions};
use herald_verify::{Secret, Verifier};

use crate::kafka::{bootstrap_servers, unique_name};
use crate::process::HeraldProcess;
use crate::samples::SampleRecord;

/// Choices for [`Scenario::with_options`]; the defaults suit functional tests.
#[derive(Default, Clone)]
pub struct ScenarioOptions {
    /// Keep no request in memory (a load test gets each one through `hook` instead).
    pub forget_requests: bool,
    pub hook: Option<herald_verify::receiver::RequestHook>,
    /// Partitions of the deliveries topic (4 unless set).
    pub deliveries_partitions: Option<i32>,
    /// More settings of one subscription, by endpoint name, as YAML `key: value` pairs such as
    /// `("rate_limit_per_second", "20")`.
    pub subscription_settings: BTreeMap<String, Vec<(String, String)>>,
    /// Keys for `encryption.keys`: when given, router and sender read subscriptions from the
    /// topic, and no subscriptions file is written (the test creates them through the admin API
    /// or the CLI).
    pub topic_keys: Option<String>,
    /// `sender.circuit_failure_threshold`. Functional tests keep circuits closed (a million
    /// failures), so that every retry they expect is a real request. Circuit and load tests set it.
    pub circuit_failure_threshold: Option<u32>,
    /// Another broker than the shared one, such as a [`crate::broker::OwnBroker`] that a test
    /// stops and starts.
    pub bootstrap_servers: Option<String>,
}

/// A subscription of the scenario and the receiver behind it.
pub struct Endpoint {
    pub name: String,
    pub event_types: Vec<String>,
    pub secret: Secret,
    pub receiver: Receiver,
}

impl Endpoint {
    /// Returns whether this endpoint wants `event_type`, decided independently of Herald's index.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some("") => true,
                Some(prefix) => event_type.starts_with(prefix) && event_type.len() > prefix.len(),
                None => pattern == event_type,
            })
    }

    /// Distinct verified webhook ids received.
    pub fn verified(&self) -> u64 {
        self.receiver.counts().verified.load(Ordering::Relaxed)
    }

    /// Returns the webhook ids of the requests whose signature verified.
    pub fn received(&self) -> BTreeSet<String> {
        received(&self.receiver)
    }
}

/// Returns the webhook ids of the requests to `receiver` whose signature verified.
pub fn received(receiver: &Receiver) -> BTreeSet<String> {
    receiver
        .requests()
        .into_iter()
        .filter_map(|request| request.verification.ok())
        .collect()
}

/// Names of the scenario's topics.
pub struct Topics {
    pub domain: String,
    pub deliveries: String,
    pub rejected: String,
    pub dlq: String,
    pub attempts: String,
    /// The first retry tier (1s), where parked deliveries wait too.
    pub first_tier: String,
    pub subscriptions: String,
}

/// A configured set-up whose services are started on demand.
pub struct Scenario {
    pub folder: PathBuf,
    pub config_path: PathBuf,
    pub topics: Topics,
    pub endpoints: Vec<Endpoint>,
}

impl Scenario {
    /// Creates topics, receivers and configuration for subscriptions given as
    /// `(name, event types)`.
    pub async fn new(name: &str, subscriptions: &[(&str, &[&str])]) -> anyhow::Result<Self> {
        Self::with_options(name, subscriptions, ScenarioOptions::default()).await
    }

    /// Like [`Scenario::new`], with receiver and topic options for load tests.
    pub async fn with_options(
        name: &str,
        subscriptions: &[(&str, &[&str])],
        options: ScenarioOptions,
    ) -> anyhow::Result<Self> {
        let prefix = unique_name(&format!("{name}-"));
        let folder = std::env::temp_dir().join("herald-tests").join(&prefix);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        let topics = Topics {
            domain: format!("{prefix}.banking"),
            deliveries: format!("{prefix}.deliveries"),
            rejected: format!("{prefix}.rejected"),
            dlq: format!("{prefix}.dlq"),
            attempts: format!("{prefix}.attempts"),
            first_tier: format!("{prefix}.retry.1s"),
            subscriptions: format!("{prefix}.subscriptions"),
        };

        let mut endpoints = Vec::new();
        for (position, (endpoint_name, event_types)) in subscriptions.iter().enumerate() {
            let secret =
                Secret::from_bytes((0..32).map(|byte| byte ^ position as u8 ^ 0x5a).collect())?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let receiver = Receiver::start(
                listener,
                ReceiverOptions {
                    name: (*endpoint_name).to_owned(),
                    verifier: Verifier::new(vec![secret.clone()])?,
                    keep_requests: !options.forget_requests,
                    log_file: None,
                    hook: options.hook.clone(),
                },
            )?;
            endpoints.push(Endpoint {
                name: (*endpoint_name).to_owned(),
                event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
                secret,
                receiver,
            });
        }

        let subscriptions_path = folder.join("subscriptions.yaml");
        let subscriptions_source = match &options.topic_keys {
            Some(keys) => format!("source = \"topic\"\n\n[encryption]\nkeys = [\"{keys}\"]"),
            None => {
                std::fs::write(
                    &subscriptions_path,
                    subscriptions_yaml(
                        &endpoints.iter().collect::<Vec<_>>(),
                        &options.subscription_settings,
                    ),
                )?;
                "source = \"file\"".to_owned()
            }
        };
        let config_path = folder.join("herald.toml");
        let config_text = format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[topics]
deliveries = "{deliveries}"
deliveries_partitions = {deliveries_partitions}
rejected = "{rejected}"
dlq = "{dlq}"
attempts = "{attempts}"
subscriptions = "{subscriptions_topic}"
replication_factor = 1

[[topics.domain]]
name = "{domain}"
partitions = 3
config = {{ "max.message.bytes" = "2097152" }}

[router]
group_id = "{prefix}-router"
source_topics = ["{domain}"]

[sender]
group_id = "{prefix}-sender"
allow_plain_http = true
# The reference receivers listen on loopback, which the address guard refuses unless listed.
allowed_networks = ["127.0.0.0/8", "::1/128"]
circuit_failure_threshold = {circuit_failure_threshold}

[subscriptions]
file = "{subscriptions}"
{subscriptions_source}

[retry]
tiers = ["1s", "2s", "4s"]
topic_prefix = "{prefix}.retry."
forwarder_group_id = "{prefix}-forwarder"
"#,
            bootstrap = options
                .bootstrap_servers
                .clone()
                .unwrap_or_else(bootstrap_servers),
            deliveries = topics.deliveries,
            rejected = topics.rejected,
            dlq = topics.dlq,
            attempts = topics.attempts,
            subscriptions_topic = topics.subscriptions,
            deliveries_partitions = options.deliveries_partitions.unwrap_or(4),
            circuit_failure_threshold = options.circuit_failure_threshold.unwrap_or(1_000_000),
            domain = topics.domain,
            subscriptions = subscriptions_path.display(),
        );
        std::fs::write(&config_path, config_text)?;

        let config = HeraldConfig::load_with_environment(Some(&config_path), Default::default())?;
        topics::apply(&config.kafka, &topics::plan(&config)).await?;
        Ok(Self {
            folder,
            config_path,
            topics,
            endpoints,
        })
    }

    /// Starts `herald router` or `herald sender` with this scenario's configuration.
    pub fn start(&self, role: &str) -> anyhow::Result<HeraldProcess> {
        HeraldProcess::start(role, &self.config_path, &self.folder, &[])
    }

    /// Like [`Scenario::start`], with `HERALD__…` overrides such as a smaller in-flight window.
    pub fn start_with(
        &self,
        role: &str,
        environment: &[(&str, &str)],
    ) -> anyhow::Result<HeraldProcess> {
        HeraldProcess::start(role, &self.config_path, &self.folder, environment)
    }

    /// Stops `process` with SIGTERM and starts the same command again from nothing.
    pub fn restart(
        &self,
        mut process: HeraldProcess,
        environment: &[(&str, &str)],
    ) -> anyhow::Result<HeraldProcess> {
        process.terminate(std::time::Duration::from_secs(30))?;
        self.start_with(process.role(), environment)
    }

    /// Runs a `herald` command with this scenario's configuration and extra `HERALD__…`
    /// variables; returns whether it succeeded and its standard output, followed by its standard
    /// error when it failed.
    pub fn command(
        &self,
        arguments: &[&str],
        environment: &[(&str, &str)],
    ) -> anyhow::Result<(bool, String)> {
        let output = std::process::Command::new(crate::process::workspace_binary("herald")?)
            .args(arguments)
            .arg("--config")
            .arg(&self.config_path)
            .envs(environment.iter().copied())
            .output()?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            eprintln!("herald {arguments:?} failed:\n{text}");
        }
        Ok((output.status.success(), text))
    }

    pub fn endpoint(&self, name: &str) -> &Endpoint {
        self.endpoints
            .iter()
            .find(|endpoint| endpoint.name == name)
            .unwrap_or_else(|| panic!("no endpoint named {name}"))
    }

    /// Returns, per endpoint, the event ids it should receive from `records`, and the body of
    /// each id as published.
    pub fn expected(
        &self,
        records: &[SampleRecord],
    ) -> (
        BTreeMap<String, BTreeSet<String>>,
        BTreeMap<String, Vec<u8>>,
    ) {
        let mut wanted: BTreeMap<String, BTreeSet<String>> = self
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.name.clone(), BTreeSet::new()))
            .collect();
        let mut bodies = BTreeMap::new();
        for record in records.iter().filter(|record| record.expect_delivery) {
            let Some((id, event_type)) = record.id_and_type() else {
                continue;
            };
            for endpoint in self
                .endpoints
                .iter()
                .filter(|endpoint| endpoint.wants(&event_type))
            {
                wanted
                    .entry(endpoint.name.clone())
                    .or_default()
                    .insert(id.clone());
            }
            if let Some(value) = &record.value {
                bodies.insert(id, value.clone());
            }
        }
        (wanted, bodies)
    }

    /// Counts the lines of one process log in the scenario folder, such as `router.log`, that
    /// contain `text`.
    pub fn log_count(&self, log: &str, text: &str) -> usize {
        std::fs::read_to_string(self.folder.join(log))
            .map(|content| content.lines().filter(|line| line.contains(text)).count())
            .unwrap_or(0)
    }

    /// Checks that no secret's encoded bytes appear in `records` of a topic or in any process
    /// log of the scenario.
    pub fn assert_secrets_absent(
        &self,
        records: &[rdkafka::message::OwnedMessage],
        secrets: &[String],
    ) -> anyhow::Result<()> {
        use rdkafka::Message;

        let mut logs = String::new();
        for entry in std::fs::read_dir(&self.folder)? {
            let path = entry?.path();
            if path.extension().is_some_and(|extension| extension == "log") {
                logs.push_str(&std::fs::read_to_string(&path)?);
            }
        }
        for secret in secrets {
            let encoded = secret.trim_start_matches("whsec_");
            for record in records {
                let value = String::from_utf8_lossy(record.payload().unwrap_or_default());
                anyhow::ensure!(!value.contains(encoded), "a plain secret is on the topic");
            }
            anyhow::ensure!(!logs.contains(encoded), "a plain secret is in a log");
        }
        Ok(())
    }

    /// True once every endpoint has at least as many verified ids as `wanted` lists for it.
    pub fn all_arrived(&self, wanted: &BTreeMap<String, BTreeSet<String>>) -> bool {
        self.endpoints.iter().all(|endpoint| {
            endpoint.verified() >= wanted.get(&endpoint.name).map_or(0, |ids| ids.len() as u64)
        })
    }
}

/// Returns the YAML of a subscriptions file for `endpoints`, with extra settings by name.
pub fn subscriptions_yaml(
    endpoints: &[&Endpoint],
    settings: &BTreeMap<String, Vec<(String, String)>>,
) -> String {
    let mut yaml = String::from("subscriptions:\n");
    for endpoint in endpoints {
        let types: Vec<String> = endpoint
            .event_types
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect();
        yaml.push_str(&format!(
            "  - id: {name}\n    url: http://{address}/webhooks/{name}\n    event_types: [{types}]\n    secrets: [\"{secret}\"]\n",
            name = endpoint.name,
            address = endpoint.receiver.address(),
            types = types.join(", "),
            secret = endpoint.secret.expose(),
        ));
        for (key, value) in settings.get(&endpoint.name).into_iter().flatten() {
            yaml.push_str(&format!("    {key}: {value}\n"));
        }
    }
    yaml
}

/// Removes a scenario's folder; logs are kept when a test fails, so call it only on success.
pub fn remove_folder(folder: &Path) {
    let _ = std::fs::remove_dir_all(folder);
}
