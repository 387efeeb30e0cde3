//! The router's metrics: events read by outcome, deliveries produced, and fan-out per event.

use std::sync::LazyLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use crate::route::RoutedRecord;

struct Instruments {
    events: Counter<u64>,
    deliveries: Counter<u64>,
    fanout: Histogram<u64>,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter(herald_core::telemetry::METER);
    Instruments {
        events: meter
            .u64_counter("herald.router.events")
            .with_unit("{event}")
            .with_description("Events read from the domain topics, by outcome")
            .build(),
        deliveries: meter
            .u64_counter("herald.router.deliveries")
            .with_unit("{delivery}")
            .with_description("Deliveries produced, one per matching subscription")
            .build(),
        fanout: meter
            .u64_histogram("herald.router.fanout")
            .with_unit("{delivery}")
            .with_description("Deliveries produced per routed event")
            .with_boundaries(vec![0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0])
            .build(),
    }
});

/// Creates every instrument with a zero, so dashboards and alerts find each series from the
/// start rather than after its first event.
pub fn register() {
    let instruments = &*INSTRUMENTS;
    instruments.events.add(0, &[]);
    instruments.deliveries.add(0, &[]);
}

/// Records what routing one event produced: deliveries, a rejection (with its kind), or
/// nothing when no subscription wants it.
pub fn record(routed: &[RoutedRecord]) {
    let instruments = &*INSTRUMENTS;
    let deliveries = routed
        .iter()
        .filter(|record| matches!(record, RoutedRecord::Delivery { .. }))
        .count() as u64;
    let rejection = routed.iter().find_map(|record| match record {
        RoutedRecord::Rejected { reason, .. } => Some(reason.kind()),
        RoutedRecord::Delivery { .. } => None,
    });
    match rejection {
        Some(kind) => instruments.events.add(
            1,
            &[
                KeyValue::new("outcome", "rejected"),
                KeyValue::new("reason", kind),
            ],
        ),
        None if deliveries == 0 => instruments
            .events
            .add(1, &[KeyValue::new("outcome", "unmatched")]),
        None => {
            instruments
                .events
                .add(1, &[KeyValue::new("outcome", "routed")]);
            instruments.deliveries.add(deliveries, &[]);
            instruments.fanout.record(deliveries, &[]);
        }
    }
}
