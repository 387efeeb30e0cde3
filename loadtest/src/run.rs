//! One load-test run: a Herald set-up with one reference receiver per subscription, events
//! published at the scenario's rate, every delivery accounted for as it arrives, then the
//! ceiling on the bare HTTP path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use herald_tests::kafka::bootstrap_servers;
use herald_tests::samples::banking_events;
use herald_tests::scenario::{Scenario, ScenarioOptions};
use herald_verify::receiver::{RequestHook, RequestSummary};

use crate::ceiling::{self, CeilingResult};
use crate::procstat::{self, ProcessUsage};
use crate::report::{Accounting, Report};
use crate::scenario::{LoadScenario, Source};
use crate::stats::LatencyRecorder;

/// Time the services get to stop on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Sender settings every scenario gets unless it sets them: no rate limit per subscription, and
/// room for 100 requests open at once to each one, enough for one subscription to take the
/// whole load of a fan-out 1 run while a hanging endpoint still cannot fill a partition's window.
const HARNESS_LIMITS: [(&str, &str); 2] = [
    ("HERALD__SENDER__DEFAULT_RATE_LIMIT_PER_SECOND", "0"),
    ("HERALD__SENDER__DEFAULT_MAX_CONCURRENCY", "100"),
];

/// A hanging endpoint responds after this long, which is longer than any attempt timeout.
const HANG: Duration = Duration::from_secs(3600);
/// A slow endpoint's body: 64 bytes, one per 100 ms, 6.4 s in all.
const SLOW_BODY_BYTES: usize = 64;
const SLOW_BODY_INTERVAL: Duration = Duration::from_millis(100);

/// The counts the receivers' hook keeps, shared with the monitor loop.
struct Ledger {
    started: Instant,
    /// Intended send time of each event, in nanoseconds since `started`; `u64::MAX` until set.
    intended_ns: Vec<AtomicU64>,
    recorder: Mutex<LatencyRecorder>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    invalid: AtomicU64,
    refused: AtomicU64,
    unknown: AtomicU64,
    last_delivery_ns: AtomicU64,
    /// When publishing began, in nanoseconds since `started`: the run's time zero.
    publish_start_ns: AtomicU64,
}

impl Ledger {
    fn observe(&self, summary: RequestSummary<'_>) {
        if summary.status == StatusCode::UNAUTHORIZED {
            self.invalid.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !summary.status.is_success() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if summary.duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let index = summary
            .webhook_id
            .and_then(|id| id.rsplit('-').next())
            .and_then(|number| number.parse::<usize>().ok());
        let intended = index
            .and_then(|i| self.intended_ns.get(i))
            .map(|ns| ns.load(Ordering::Relaxed));
        let Some(intended) = intended.filter(|&ns| ns != u64::MAX) else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = self.started.elapsed();
        let latency = now.saturating_sub(Duration::from_nanos(intended));
        let since_publish_start = now.saturating_sub(Duration::from_nanos(
            self.publish_start_ns.load(Ordering::Relaxed),
        ));
        self.recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(since_publish_start, latency);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns
            .fetch_max(since_publish_start.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Builds the events: `(key, value)` with ids `lt-<tag>-<index>`.
fn build_events(scenario: &LoadScenario, tag: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut events = Vec::with_capacity(scenario.events);
    match scenario.source {
        Source::Synthetic => {
            let sizes = SizeSpread::new(scenario.payload_bytes, scenario.payload_bytes_max);
            for index in 0..scenario.events {
                let event_type = &scenario.event_types[index % scenario.event_types.len()];
                let head = format!(
                    r#"{{"eventId":"lt-{tag}-{index}","eventType":"{event_type}","timestamp":"2026-12-04T00:00:00Z","data":{{"pad":""#
                );
                let tail = r#""}}"#;
                let padding = sizes.size(index).saturating_sub(head.len() + tail.len());
                let value = format!("{head}{}{tail}", "x".repeat(padding));
                events.push((format!("CUST_{:05}", index % 5000), value.into_bytes()));
            }
        }
        Source::Samples => {
            let samples = banking_events()?;
            anyhow::ensure!(!samples.is_empty(), "no sample events");
            for index in 0..scenario.events {
                let sample = &samples[index % samples.len()];
                let mut value: serde_json::Value =
                    serde_json::from_slice(sample.value.as_deref().unwrap_or_default())?;
                value["eventId"] = serde_json::Value::String(format!("lt-{tag}-{index}"));
                events.push((sample.key.clone(), serde_json::to_vec(&value)?));
            }
        }
    }
    Ok(events)
}

/// Runs `scenario` against a fresh Herald set-up on the local broker.
pub async fn run(scenario: &LoadScenario, commit: &str) -> anyhow::Result<Report> {
    let tag = format!("{}", std::process::id());
    let ledger = Arc::new(Ledger {
        started: Instant::now(),
        intended_ns: (0..scenario.events)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
        recorder: Mutex::new(LatencyRecorder::default()),
        delivered: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        invalid: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        publish_start_ns: AtomicU64::new(0),
    });
    let hook_ledger = Arc::clone(&ledger);
    let hook: RequestHook = Arc::new(move |summary| hook_ledger.observe(summary));

    let names: Vec<String> = (0..scenario.fanout)
        .map(|index| format!("ep{index:03}"))
        .collect();
    let subscriptions: Vec<(&str, &[&str])> = names
        .iter()
        .map(|name| (name.as_str(), &["*"][..]))
        .collect();
    let options = ScenarioOptions {
        forget_requests: true,
        hook: Some(hook),
        deliveries_partitions: Some(12),
        circuit_failure_threshold: Some(herald_core::config::DEFAULT_CIRCUIT_FAILURE_THRESHOLD),
        ..ScenarioOptions::default()
    };
    let setup =
        Scenario::with_options(&format!("lt-{}", scenario.name), &subscriptions, options).await?;
    configure_endpoints(scenario, &setup);

    // The harness measures capacity: per-subscription limits are raised above Herald's defaults
    // unless the scenario sets them itself.
    let mut environment: Vec<(&str, &str)> = HARNESS_LIMITS
        .iter()
        .filter(|(key, _)| !scenario.herald_environment.contains_key(*key))
        .copied()
        .collect();
    environment.extend(
        scenario
            .herald_environment
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
    );
    let mut router = setup.start_with("router", &environment)?;
    let mut sender = setup.start_with("sender", &environment)?;

    // Measure Herald at work, not starting: wait until the router's consumer and the sender's
    // two consumers (deliveries and tiers) have their partitions.
    let ready = herald_tests::wait::until(
        "Herald's consumers have their partitions",
        Duration::from_secs(60),
        || {
            router.log_tail().matches("partitions assigned").count() >= 1
                && sender.log_tail().matches("partitions assigned").count() >= 2
        },
    )
    .await;
    router.check_running()?;
    sender.check_running()?;
    ready?;

    let events = build_events(scenario, &tag)?;
    let expected = scenario.expected_deliveries();
    eprintln!(
        "{}: {} events, fan-out {}, {} deliveries expected; service logs in {}",
        scenario.name,
        events.len(),
        scenario.fanout,
        expected,
        setup.folder.display()
    );
    let publisher = tokio::spawn(publish(
        setup.topics.domain.clone(),
        events,
        scenario.rate_per_s,
        Arc::clone(&ledger),
    ));

    let deadline = Instant::now() + Duration::from_secs(scenario.timeout_s);
    let mut usage = (ProcessUsage::default(), ProcessUsage::default());
    let mut last_count = 0;
    let mut complete = false;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        router.check_running()?;
        sender.check_running()?;
        usage = (procstat::usage(router.id()), procstat::usage(sender.id()));
        let delivered = ledger.delivered.load(Ordering::Relaxed);
        let p99 = ledger
            .recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .overall()
            .p99_ms;
        eprintln!(
            "[{:>4}s] delivered {delivered}/{expected}  {}/s  p99 {p99:.1} ms  sender cpu {:.1}s",
            // Seconds since the first publish, the same time base as the report's series.
            ledger
                .started
                .elapsed()
                .saturating_sub(Duration::from_nanos(
                    ledger.publish_start_ns.load(Ordering::Relaxed)
                ))
                .as_secs(),
            delivered - last_count,
            usage.1.cpu_seconds
        );
        last_count = delivered;
        if delivered >= expected {
            complete = true;
            break;
        }
    }
    let published = publisher.await??;
    router.terminate(STOP_TIMEOUT)?;
    sender.terminate(STOP_TIMEOUT)?;

    let herald_duration = Duration::from_nanos(ledger.last_delivery_ns.load(Ordering::Relaxed));
    let ceiling = if scenario.ceiling {
        eprintln!(
            "{}: measuring the ceiling (the same requests without Kafka)",
            scenario.name
        );
        Some(measure_ceiling(scenario).await?)
    } else {
        None
    };

    let recorder = ledger
        .recorder
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let accounting = Accounting {
        published,
        expected,
        delivered: ledger.delivered.load(Ordering::Relaxed),
        duplicates: ledger.duplicates.load(Ordering::Relaxed),
        invalid_signatures: ledger.invalid.load(Ordering::Relaxed),
        refused_by_endpoints: ledger.refused.load(Ordering::Relaxed),
        unknown_ids: ledger.unknown.load(Ordering::Relaxed),
        complete,
    };
    let report = Report::new(
        scenario,
        commit,
        accounting,
        herald_duration,
        &recorder,
        ceiling,
        usage,
    );
    // The service logs are kept when the run is incomplete.
    if complete {
        herald_tests::scenario::remove_folder(&setup.folder);
    }
    Ok(report)
}

/// Synthetic event sizes: fixed, or spread over a range by a fixed stride so runs repeat.
struct SizeSpread {
    min: usize,
    max: usize,
}

impl SizeSpread {
    fn new(min: usize, max: Option<usize>) -> Self {
        Self {
            min,
            max: max.unwrap_or(min),
        }
    }

    fn size(&self, index: usize) -> usize {
        let range = self.max - self.min + 1;
        // 7919 is prime, so for ranges it does not divide the stride visits every size in turn.
        self.min + (index.wrapping_mul(7919) % range)
    }
}

/// The behaviour of one endpoint, assigned in the order the scenario lists the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Failing,
    Hanging,
    RateLimited,
    Gone,
    SlowBody,
    Healthy,
}

fn behaviour(scenario: &LoadScenario, index: usize) -> Behaviour {
    let groups = [
        (scenario.failing_endpoints, Behaviour::Failing),
        (scenario.hanging_endpoints, Behaviour::Hanging),
        (scenario.rate_limited_endpoints, Behaviour::RateLimited),
        (scenario.gone_endpoints, Behaviour::Gone),
        (scenario.slow_body_endpoints, Behaviour::SlowBody),
    ];
    let mut end = 0;
    for (count, behaviour) in groups {
        end += count;
        if index < end {
            return behaviour;
        }
    }
    Behaviour::Healthy
}

fn configure_endpoints(scenario: &LoadScenario, setup: &Scenario) {
    let latency = Duration::from_millis(scenario.endpoint_latency_ms);
    let latency_max = Duration::from_millis(
        scenario
            .endpoint_latency_max_ms
            .unwrap_or(scenario.endpoint_latency_ms),
    );
    for (index, endpoint) in setup.endpoints.iter().enumerate() {
        let receiver = &endpoint.receiver;
        receiver.delay_responses_between(latency, latency_max);
        match behaviour(scenario, index) {
            Behaviour::Failing => receiver.respond_with(StatusCode::SERVICE_UNAVAILABLE),
            Behaviour::Hanging => receiver.delay_responses(HANG),
            Behaviour::RateLimited => {
                receiver.fail_first(1, StatusCode::TOO_MANY_REQUESTS, Some("1"));
            }
            Behaviour::Gone => receiver.respond_with(StatusCode::GONE),
            Behaviour::SlowBody => receiver.respond_slowly(SLOW_BODY_BYTES, SLOW_BODY_INTERVAL),
            Behaviour::Healthy => {
                receiver.fail_randomly(
                    scenario.endpoint_error_rate,
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            }
        }
    }
}

async fn measure_ceiling(scenario: &LoadScenario) -> anyhow::Result<CeilingResult> {
    let concurrency = scenario
        .herald_environment
        .get("HERALD__SENDER__MAX_IN_FLIGHT")
        .and_then(|value| value.parse().ok())
        .unwrap_or(herald_core::config::DEFAULT_SENDER_MAX_IN_FLIGHT);
    let body = Bytes::from(vec![b'x'; scenario.payload_bytes]);
    let endpoints = scenario.accepting_endpoints();
    ceiling::measure(
        endpoints.max(1),
        scenario.expected_deliveries(),
        concurrency,
        (
            Duration::from_millis(scenario.endpoint_latency_ms),
            Duration::from_millis(
                scenario
                    .endpoint_latency_max_ms
                    .unwrap_or(scenario.endpoint_latency_ms),
            ),
        ),
        body,
    )
    .await
}

/// Publishes every event, at `rate_per_s` in open loop when it is above zero, and records each
/// event's intended send time before sending it. Returns how many the broker acknowledged.
async fn publish(
    topic: String,
    events: Vec<(String, Vec<u8>)>,
    rate_per_s: u64,
    ledger: Arc<Ledger>,
) -> anyhow::Result<u64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.max.bytes", "3000000")
        .create()?;
    let mut pending = Vec::with_capacity(events.len());
    let publish_start = ledger.started.elapsed();
    ledger
        .publish_start_ns
        .store(publish_start.as_nanos() as u64, Ordering::Relaxed);
    for (index, (key, value)) in events.iter().enumerate() {
        let intended = if rate_per_s > 0 {
            // Open loop: each event has its slot, and a late send keeps its slot's time.
            let offset = publish_start + Duration::from_secs_f64(index as f64 / rate_per_s as f64);
            tokio::time::sleep_until((ledger.started + offset).into()).await;
            offset
        } else {
            ledger.started.elapsed()
        };
        ledger.intended_ns[index].store(intended.as_nanos() as u64, Ordering::Relaxed);
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
            .key(key.as_str())
            .payload(value.as_slice());
        loop {
            match producer.send_result(record) {
                Ok(future) => {
                    pending.push(future);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((error, _)) => anyhow::bail!("publishing to {topic} failed: {error}"),
            }
        }
    }
    let mut acknowledged = 0;
    for future in pending {
        if matches!(future.await, Ok(Ok(_))) {
            acknowledged += 1;
        }
    }
    Ok(acknowledged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_in_range_and_vary() {
        let spread = SizeSpread::new(1000, Some(2000));
        let sizes: Vec<usize> = (0..500).map(|index| spread.size(index)).collect();
        assert!(sizes.iter().all(|size| (1000..=2000).contains(size)));
        assert!(
            sizes
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 400
        );
        assert_eq!(SizeSpread::new(512, None).size(17), 512);
    }
}
