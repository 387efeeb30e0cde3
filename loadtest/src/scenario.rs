//! A load-test scenario, read from a TOML file in `loadtest/scenarios/`.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The origin of the published events: `synthetic` or `samples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", expecting = "\"synthetic\" or \"samples\"")]
pub enum Source {
    /// Generated events of `payload_bytes` bytes each.
    Synthetic,
    /// The sample banking events, replayed in a loop with ids made unique.
    Samples,
}

/// One scenario: what to publish, how the endpoints behave, and the pass thresholds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadScenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Events to publish.
    pub events: usize,
    /// Events per second in open loop; 0 publishes as fast as possible.
    #[serde(default)]
    pub rate_per_s: u64,
    pub source: Source,
    /// Size of each synthetic event, in bytes.
    #[serde(default = "default_payload_bytes")]
    pub payload_bytes: usize,
    /// When set, synthetic event sizes are spread uniformly from `payload_bytes` to this.
    #[serde(default)]
    pub payload_bytes_max: Option<usize>,
    /// Event types of synthetic events, used in turn; every subscription takes them all.
    #[serde(default = "default_event_types")]
    pub event_types: Vec<String>,
    /// Subscriptions that match every event: deliveries per event.
    pub fanout: usize,
    /// Of those, endpoints that respond 503 to everything (their deliveries end as dead letters).
    #[serde(default)]
    pub failing_endpoints: usize,
    /// Of those, endpoints that accept the connection and never respond.
    #[serde(default)]
    pub hanging_endpoints: usize,
    /// Of those, endpoints that respond 429 with `Retry-After: 1` to each first attempt.
    #[serde(default)]
    pub rate_limited_endpoints: usize,
    /// Of those, endpoints that respond 410 Gone, which disables their subscription.
    #[serde(default)]
    pub gone_endpoints: usize,
    /// Of those, endpoints that accept at once but send their 64-byte body one byte per 100 ms.
    #[serde(default)]
    pub slow_body_endpoints: usize,
    /// Fraction of requests every other endpoint fails with 503 (they are retried).
    #[serde(default)]
    pub endpoint_error_rate: f64,
    /// Latency every endpoint adds before responding, in milliseconds.
    #[serde(default)]
    pub endpoint_latency_ms: u64,
    /// When set, endpoint latency is spread uniformly from `endpoint_latency_ms` to this.
    #[serde(default)]
    pub endpoint_latency_max_ms: Option<u64>,
    /// Also measure the bare HTTP path to the same receivers (the ceiling).
    #[serde(default = "enabled")]
    pub ceiling: bool,
    /// The run fails if the expected deliveries have not all arrived by then, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Fail the run if Herald's throughput is below this fraction of the ceiling.
    #[serde(default)]
    pub min_ceiling_ratio: Option<f64>,
    /// Fail the run if the p99 end-to-end latency is above this, in milliseconds.
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    /// `HERALD__…` settings for the router and sender, such as `HERALD__SENDER__MAX_IN_FLIGHT`.
    #[serde(default)]
    pub herald_environment: std::collections::BTreeMap<String, String>,
}

fn default_payload_bytes() -> usize {
    1024
}

fn default_event_types() -> Vec<String> {
    vec!["loadtest.synthetic".to_owned()]
}

fn default_timeout_s() -> u64 {
    300
}

fn enabled() -> bool {
    true
}

impl LoadScenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let scenario: Self = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        scenario
            .check()
            .with_context(|| format!("invalid scenario {}", path.display()))?;
        Ok(scenario)
    }

    fn check(&self) -> anyhow::Result<()> {
        // The name becomes part of topic names and of the report folder.
        anyhow::ensure!(
            !self.name.is_empty()
                && self.name.len() <= 100
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !self.name.starts_with('.'),
            "name must be 1 to 100 characters of A-Z, a-z, 0-9, '-', '_' or '.', not starting with '.'"
        );
        for event_type in &self.event_types {
            anyhow::ensure!(
                !event_type.is_empty()
                    && event_type.len() <= herald_core::envelope::MAX_ID_BYTES
                    && event_type.bytes().all(|b| b.is_ascii_graphic()),
                "event type {event_type:?} would be rejected by the router: use printable ASCII without spaces"
            );
        }
        anyhow::ensure!(
            self.endpoint_latency_max_ms
                .is_none_or(|max| max >= self.endpoint_latency_ms),
            "endpoint_latency_max_ms must be at least endpoint_latency_ms"
        );
        anyhow::ensure!(self.events > 0, "events must be greater than 0");
        anyhow::ensure!(
            (1..=1000).contains(&self.fanout),
            "fanout must be between 1 and 1000"
        );
        let unhealthy = self.failing_endpoints
            + self.hanging_endpoints
            + self.rate_limited_endpoints
            + self.gone_endpoints
            + self.slow_body_endpoints;
        anyhow::ensure!(
            unhealthy <= self.fanout,
            "failing, hanging, rate-limited, gone and slow-body endpoints ({unhealthy}) must not exceed fanout ({})",
            self.fanout
        );
        anyhow::ensure!(
            !self.event_types.is_empty(),
            "event_types must name at least one type"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.endpoint_error_rate),
            "endpoint_error_rate must be at least 0 and below 1"
        );
        anyhow::ensure!(
            self.payload_bytes_max
                .is_none_or(|max| max >= self.payload_bytes),
            "payload_bytes_max must be at least payload_bytes"
        );
        anyhow::ensure!(
            self.payload_bytes >= 128,
            "payload_bytes must be at least 128"
        );
        Ok(())
    }

    /// Endpoints that eventually accept every delivery: the healthy and the rate-limited ones.
    pub fn accepting_endpoints(&self) -> usize {
        self.fanout - self.failing_endpoints - self.hanging_endpoints - self.gone_endpoints
    }

    /// Deliveries that must arrive for the run to be complete.
    pub fn expected_deliveries(&self) -> u64 {
        (self.events * self.accepting_endpoints()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_loads() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&folder).expect("scenarios folder") {
            let path = entry.expect("entry").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "toml")
            {
                let scenario = LoadScenario::load(&path).expect("valid scenario");
                assert!(scenario.expected_deliveries() > 0, "{}", path.display());
                loaded += 1;
            }
        }
        assert!(loaded >= 8, "only {loaded} scenarios");
    }

    #[test]
    fn expected_deliveries_exclude_failing_and_hanging_endpoints() {
        let scenario = LoadScenario {
            name: "x".into(),
            description: String::new(),
            events: 100,
            rate_per_s: 0,
            source: Source::Synthetic,
            payload_bytes: 1024,
            payload_bytes_max: None,
            event_types: default_event_types(),
            fanout: 10,
            failing_endpoints: 1,
            hanging_endpoints: 1,
            rate_limited_endpoints: 2,
            gone_endpoints: 1,
            slow_body_endpoints: 1,
            endpoint_error_rate: 0.1,
            endpoint_latency_ms: 0,
            endpoint_latency_max_ms: None,
            ceiling: true,
            timeout_s: 60,
            min_ceiling_ratio: None,
            max_p99_ms: None,
            herald_environment: Default::default(),
        };
        assert_eq!(scenario.accepting_endpoints(), 7);
        assert_eq!(scenario.expected_deliveries(), 700);
        assert!(scenario.check().is_ok());
    }
}
