//! The sender's metrics: attempts by outcome and status class, attempt time, end-to-end latency,
//! retries by tier, dead letters by reason, parked deliveries and open circuits.

use std::sync::LazyLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

use herald_core::telemetry::subscription_attribute;

use crate::attempt::{AttemptError, AttemptResult};

struct Instruments {
    http_duration: Histogram<f64>,
    attempts: Counter<u64>,
    attempt_duration: Histogram<f64>,
    latency: Histogram<f64>,
    retries: Counter<u64>,
    dead_letters: Counter<u64>,
    parked: Counter<u64>,
    open_circuits: UpDownCounter<i64>,
}

/// Bucket bounds in seconds, from a fast loopback response to a minute-long timeout.
const SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter(herald_core::telemetry::METER);
    Instruments {
        http_duration: meter
            .f64_histogram("http.client.request.duration")
            .with_unit("s")
            .with_description("Duration of webhook requests, by the HTTP semantic conventions")
            .with_boundaries(SECONDS.to_vec())
            .build(),
        attempts: meter
            .u64_counter("herald.sender.attempts")
            .with_unit("{attempt}")
            .with_description("Attempts by outcome and status class (2xx to 5xx, or the error class)")
            .build(),
        attempt_duration: meter
            .f64_histogram("herald.sender.attempt.duration")
            .with_unit("s")
            .with_description("Time from sending a request to its status, or to its error")
            .with_boundaries(SECONDS.to_vec())
            .build(),
        latency: meter
            .f64_histogram("herald.sender.delivery.latency")
            .with_unit("s")
            .with_description(
                "Time from an event's publication to its delivery, for deliveries that needed no retry",
            )
            .with_boundaries(SECONDS.to_vec())
            .build(),
        retries: meter
            .u64_counter("herald.sender.retries")
            .with_unit("{delivery}")
            .with_description("Deliveries scheduled on a retry tier, by tier")
            .build(),
        dead_letters: meter
            .u64_counter("herald.sender.dead_letters")
            .with_unit("{delivery}")
            .with_description("Deliveries written to the dead-letter topic, by reason")
            .build(),
        parked: meter
            .u64_counter("herald.sender.parked")
            .with_unit("{delivery}")
            .with_description("Deliveries parked on the first tier because their subscription was busy")
            .build(),
        open_circuits: meter
            .i64_up_down_counter("herald.sender.circuits.open")
            .with_unit("{circuit}")
            .with_description("Subscriptions whose circuit is open")
            .build(),
    }
});

/// Creates every instrument with a zero, so dashboards and alerts find each series from the
/// start rather than after its first event.
pub fn register() {
    let instruments = &*INSTRUMENTS;
    instruments.attempts.add(0, &[]);
    instruments.retries.add(0, &[]);
    instruments.dead_letters.add(0, &[]);
    instruments.parked.add(0, &[]);
    instruments.open_circuits.add(0, &[]);
}

/// Returns `2xx` to `5xx` for a response, or the error class for an attempt without one.
fn status_class(result: &AttemptResult) -> String {
    match result {
        Ok(response) => format!("{}xx", response.status.as_u16() / 100),
        Err(error) => error.class().to_owned(),
    }
}

fn with_subscription(mut attributes: Vec<KeyValue>, subscription_id: &str) -> Vec<KeyValue> {
    attributes.extend(subscription_attribute(subscription_id));
    attributes
}

/// Records one attempt with its outcome (`delivered`, `retry`, `dead_letter`, `disabled`).
pub fn attempt(
    subscription_id: &str,
    result: &AttemptResult,
    outcome: &'static str,
    took: Duration,
) {
    let instruments = &*INSTRUMENTS;
    let attributes = with_subscription(
        vec![
            KeyValue::new("outcome", outcome),
            KeyValue::new("status_class", status_class(result)),
        ],
        subscription_id,
    );
    instruments.attempts.add(1, &attributes);
    // Only attempts that made a request count as HTTP client requests.
    let request_made = !matches!(
        result,
        Err(AttemptError::CircuitOpen | AttemptError::BlockedAddress(_))
    );
    if request_made {
        let mut http = vec![KeyValue::new("http.request.method", "POST")];
        match result {
            Ok(response) => {
                let status = response.status.as_u16();
                http.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                // As the HTTP conventions ask: a client's error.type is the status code from 400.
                if status >= 400 {
                    http.push(KeyValue::new("error.type", status.to_string()));
                }
            }
            Err(error) => http.push(KeyValue::new("error.type", error.class())),
        }
        instruments.http_duration.record(took.as_secs_f64(), &http);
    }
    instruments.attempt_duration.record(
        took.as_secs_f64(),
        &with_subscription(vec![KeyValue::new("outcome", outcome)], subscription_id),
    );
}

/// Records the time from an event's publication to its delivery.
pub fn delivered_after(latency: Duration) {
    INSTRUMENTS.latency.record(latency.as_secs_f64(), &[]);
}

/// Records a delivery scheduled on `tier`.
pub fn retry(tier: &str) {
    INSTRUMENTS
        .retries
        .add(1, &[KeyValue::new("tier", tier.to_owned())]);
}

/// Records a dead letter with its reason.
pub fn dead_letter(subscription_id: &str, reason: &'static str) {
    INSTRUMENTS.dead_letters.add(
        1,
        &with_subscription(vec![KeyValue::new("reason", reason)], subscription_id),
    );
}

/// Records a parked delivery.
pub fn parked(subscription_id: &str) {
    INSTRUMENTS
        .parked
        .add(1, &with_subscription(Vec::new(), subscription_id));
}

/// Records a circuit opening (`+1`) or closing (`-1`).
pub fn circuit(change: i64) {
    INSTRUMENTS.open_circuits.add(change, &[]);
}
