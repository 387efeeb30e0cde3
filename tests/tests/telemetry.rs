//! Metrics and health on the real broker: after a short run, the router's and the sender's
//! Prometheus endpoints report what happened (events by outcome, deliveries, fan-out, attempts by
//! outcome and status class, attempt time, latency, dead letters, subscriptions), and `/readyz`
//! and `/healthz` respond.

use std::time::Duration;

use http::StatusCode;

use herald_tests::http::{get, sample_sum};
use herald_tests::kafka::publish;
use herald_tests::samples::{SampleRecord, synthetic_payments};
use herald_tests::scenario::{Scenario, remove_folder};
use herald_tests::wait;

const TIMEOUT: Duration = Duration::from_secs(120);
const LISTENING: &str = "metrics and health endpoints listening";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_export_metrics_and_health() -> anyhow::Result<()> {
    const EVENTS: usize = 20;
    let scenario = Scenario::new(
        "telemetry",
        &[
            ("ledger", &["payment.*"]),
            ("audit", &["*"]),
            ("gone", &["payment.*"]),
        ],
    )
    .await?;
    let ledger = scenario.endpoint("ledger");
    let audit = scenario.endpoint("audit");
    scenario
        .endpoint("gone")
        .receiver
        .respond_with(StatusCode::GONE);
    let environment = [("HERALD__TELEMETRY__LISTEN", "127.0.0.1:0")];
    let mut router = scenario.start_with("router", &environment)?;
    let mut sender = scenario.start_with("sender", &environment)?;
    wait::until("both services listen for scrapes", TIMEOUT, || {
        router.log_contains(LISTENING) && sender.log_contains(LISTENING)
    })
    .await?;
    let router_address = router
        .logged_address(LISTENING)
        .ok_or_else(|| anyhow::anyhow!("no address in the router's log"))?;
    let sender_address = sender
        .logged_address(LISTENING)
        .ok_or_else(|| anyhow::anyhow!("no address in the sender's log"))?;

    let mut records = synthetic_payments("tm", EVENTS);
    records.push(SampleRecord {
        key: "CUST_0".into(),
        value: None,
        expect_delivery: false,
        why: "a record without a value".into(),
    });
    publish(&scenario.topics.domain, &records).await?;
    wait::until("every payment reached ledger and audit", TIMEOUT, || {
        ledger.verified() >= EVENTS as u64 && audit.verified() >= EVENTS as u64
    })
    .await?;

    for address in [&router_address, &sender_address] {
        assert_eq!(get(address, "/healthz").await?.0, 200);
        let (status, body) = get(address, "/readyz").await?;
        assert_eq!(status, 200, "{body}");
    }

    // Counters are read until they settle: the sender counts an attempt after its outcome is
    // written, a moment after the receiver has it.
    let delivered_all = || async {
        let (_, metrics) = get(&sender_address, "/metrics").await?;
        let delivered = sample_sum(
            &metrics,
            "herald_sender_attempts_total",
            &[("outcome", "delivered"), ("status_class", "2xx")],
        );
        let gone = sample_sum(
            &metrics,
            "herald_sender_dead_letters_total",
            &[("reason", "gone")],
        );
        anyhow::Ok((delivered >= 2.0 * EVENTS as f64 && gone >= 1.0, metrics))
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let sender_metrics = loop {
        let (settled, metrics) = delivered_all().await?;
        if settled || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, router_metrics) = get(&router_address, "/metrics").await?;

    let routed = sample_sum(
        &router_metrics,
        "herald_router_events_total",
        &[("outcome", "routed")],
    );
    assert_eq!(routed, EVENTS as f64, "{router_metrics}");
    let rejected = sample_sum(
        &router_metrics,
        "herald_router_events_total",
        &[("outcome", "rejected"), ("reason", "no_value")],
    );
    assert_eq!(rejected, 1.0, "{router_metrics}");
    assert_eq!(
        sample_sum(&router_metrics, "herald_router_deliveries_total", &[]),
        3.0 * EVENTS as f64
    );
    assert_eq!(
        sample_sum(&router_metrics, "herald_router_fanout_count", &[]),
        EVENTS as f64
    );
    assert_eq!(
        sample_sum(&router_metrics, "herald_subscriptions", &[]),
        3.0
    );

    assert_eq!(
        sample_sum(
            &sender_metrics,
            "herald_sender_attempts_total",
            &[("outcome", "delivered"), ("status_class", "2xx")]
        ),
        2.0 * EVENTS as f64,
        "{sender_metrics}"
    );
    assert!(
        sample_sum(
            &sender_metrics,
            "herald_sender_attempts_total",
            &[("outcome", "disabled"), ("status_class", "4xx")]
        ) >= 1.0,
        "{sender_metrics}"
    );
    assert!(
        sample_sum(
            &sender_metrics,
            "herald_sender_attempt_duration_seconds_count",
            &[]
        ) >= 2.0 * EVENTS as f64
    );
    assert_eq!(
        sample_sum(
            &sender_metrics,
            "herald_sender_delivery_latency_seconds_count",
            &[]
        ),
        2.0 * EVENTS as f64
    );
    assert!(sender_metrics.contains("# TYPE herald_sender_attempt_duration_seconds histogram"));
    assert!(
        !sender_metrics.contains("subscription_id="),
        "subscription ids are off by default"
    );
    router.check_running()?;
    sender.check_running()?;
    remove_folder(&scenario.folder);
    Ok(())
}
