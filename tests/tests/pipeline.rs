//! End to end on the real broker: sample events in, signed webhooks out, bad events set aside.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herald_tests::kafka::{header, publish, read_topic};
use herald_tests::samples::{bad_events, banking_events};
use herald_tests::scenario::{Scenario, ScenarioOptions, remove_folder};
use herald_tests::wait;
use rdkafka::Message;

const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

const BANK: &[(&str, &[&str])] = &[
    ("compliance", &["kyc.*", "aml.*"]),
    ("ledger", &["payment.*"]),
    ("crm", &["client.*"]),
    ("audit", &["*"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_events_reach_every_matching_subscription() -> anyhow::Result<()> {
    let scenario = Scenario::new("samples", BANK).await?;
    let events = banking_events()?;
    let (wanted, bodies) = scenario.expected(&events);
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let arrived = wait::until("every expected delivery arrived", ARRIVAL_TIMEOUT, || {
        scenario.all_arrived(&wanted)
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;

    for endpoint in &scenario.endpoints {
        let expected_ids = &wanted[&endpoint.name];
        let mut received_ids = BTreeSet::new();
        for request in endpoint.receiver.requests() {
            let id = request.verification.as_ref().map_err(|error| {
                anyhow::anyhow!("{}: request failed verification: {error}", endpoint.name)
            })?;
            assert_eq!(
                request.body.as_ref(),
                bodies[id].as_slice(),
                "{}: body of {id} changed",
                endpoint.name
            );
            assert_eq!(request.headers["content-type"], "application/json");
            received_ids.insert(id.clone());
        }
        assert_eq!(
            &received_ids, expected_ids,
            "{}: received ids differ from the subscribed ones",
            endpoint.name
        );
    }
    assert_eq!(scenario.endpoint("audit").verified(), events.len() as u64);

    assert!(
        router.terminate(STOP_TIMEOUT)?,
        "router did not exit cleanly on SIGTERM"
    );
    assert!(
        sender.terminate(STOP_TIMEOUT)?,
        "sender did not exit cleanly on SIGTERM"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_and_the_stream_flows() -> anyhow::Result<()> {
    let scenario = Scenario::new("bad", &[("audit", &["*"])]).await?;
    let records = bad_events()?;
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &records).await?;
    // Every hostile record has the same key, so their offsets in one partition are their positions.
    let expected_rejected: BTreeSet<usize> = (0..records.len())
        .filter(|&i| !records[i].expect_delivery)
        .collect();
    let rejected = read_topic(
        &scenario.topics.rejected,
        expected_rejected.len(),
        ARRIVAL_TIMEOUT,
    )?;
    router.check_running()?;

    let mut rejected_positions = BTreeSet::new();
    for message in &rejected {
        let reason = header(message, "herald-reject-reason").unwrap_or_default();
        let source = header(message, "herald-source").unwrap_or_default();
        let position: usize = source.rsplit('/').next().unwrap_or_default().parse()?;
        assert!(
            !reason.is_empty(),
            "rejected record from {source} has no reason"
        );
        let why = &records[position].why;
        assert!(
            !records[position].expect_delivery,
            "{why:?} was rejected ({reason}) but must be delivered"
        );
        if why.starts_with("1.5 MB event") {
            assert!(
                reason.contains("1500120 bytes"),
                "oversized event's reason lacks its size: {reason}"
            );
            assert!(
                message.payload().is_none(),
                "oversized event was copied to the rejected topic"
            );
        }
        rejected_positions.insert(position);
    }
    assert_eq!(
        rejected_positions, expected_rejected,
        "rejected records differ from the expected ones"
    );

    let (wanted, bodies) = scenario.expected(&records);
    let arrived = wait::until(
        "the valid events among the bad ones arrived",
        ARRIVAL_TIMEOUT,
        || scenario.all_arrived(&wanted),
    )
    .await;
    sender.check_running()?;
    arrived?;
    let audit = scenario.endpoint("audit");
    let received: BTreeMap<String, usize> =
        audit
            .receiver
            .requests()
            .iter()
            .fold(BTreeMap::new(), |mut counts, request| {
                if let Ok(id) = &request.verification {
                    *counts.entry(id.clone()).or_default() += 1;
                }
                counts
            });
    assert_eq!(
        received.keys().cloned().collect::<BTreeSet<_>>(),
        wanted["audit"]
    );
    assert_eq!(
        received.get("evt_bad_000001"),
        Some(&2),
        "the repeated event is delivered again with the same webhook-id"
    );
    for request in audit.receiver.requests() {
        let Ok(id) = &request.verification else {
            continue;
        };
        assert_eq!(
            request.body.as_ref(),
            bodies[id].as_slice(),
            "body of {id} changed"
        );
    }
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_endpoint_is_dead_lettered() -> anyhow::Result<()> {
    let scenario = Scenario::new("dlq", &[("ledger", &["payment.*"]), ("audit", &["*"])]).await?;
    scenario
        .endpoint("ledger")
        .receiver
        .respond_with(http::StatusCode::SERVICE_UNAVAILABLE);
    let events: Vec<_> = banking_events()?.into_iter().take(100).collect();
    let (wanted, bodies) = scenario.expected(&events);
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let ledger_count = wanted["ledger"].len();
    let dead_letters = read_topic(&scenario.topics.dlq, ledger_count, ARRIVAL_TIMEOUT)?;
    router.check_running()?;
    sender.check_running()?;

    let mut dead_ids = BTreeSet::new();
    for message in &dead_letters {
        assert_eq!(
            header(message, "herald-dead-letter-reason").as_deref(),
            Some("retries_exhausted")
        );
        assert_eq!(
            header(message, "herald-last-status").as_deref(),
            Some("503")
        );
        assert_eq!(
            header(message, "herald-attempt").as_deref(),
            Some("4"),
            "one attempt and one per tier"
        );
        assert_eq!(
            header(message, "herald-subscription-id").as_deref(),
            Some("ledger")
        );
        assert!(header(message, "herald-first-attempt-at").is_some());
        let id = header(message, "herald-event-id").unwrap_or_default();
        assert_eq!(
            message.payload(),
            Some(bodies[&id].as_slice()),
            "dead letter body of {id} changed"
        );
        dead_ids.insert(id);
    }
    assert_eq!(dead_ids, wanted["ledger"]);

    let audit = scenario.endpoint("audit");
    let audit_count = wanted["audit"].len() as u64;
    wait::until("audit got every event", ARRIVAL_TIMEOUT, || {
        audit.verified() >= audit_count
    })
    .await?;
    assert_eq!(
        scenario.endpoint("ledger").verified(),
        0,
        "the failing endpoint accepted nothing"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

/// The sample payments a "CHF over 10,000" filter should select, decided here with floats,
/// independently of Herald's exact decimal comparison.
fn large_chf_payment_ids(events: &[herald_tests::samples::SampleRecord]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|record| {
            let event: serde_json::Value = serde_json::from_slice(record.value.as_deref()?).ok()?;
            let event_type = event["eventType"].as_str()?;
            let amount: f64 = event["data"]["amount"].as_str()?.parse().ok()?;
            (event_type.starts_with("payment.")
                && event["data"]["currency"] == "CHF"
                && amount > 10_000.0)
                .then(|| event["eventId"].as_str().map(str::to_owned))
                .flatten()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_filter_selects_large_chf_payments() -> anyhow::Result<()> {
    let filter = r#"[{path: "/data/currency", equals: "CHF"}, {path: "/data/amount", gt: 10000}]"#;
    let scenario = Scenario::with_options(
        "filter",
        &[("treasury", &["payment.*"]), ("audit", &["*"])],
        ScenarioOptions {
            subscription_settings: BTreeMap::from([(
                "treasury".to_owned(),
                vec![("filter".to_owned(), filter.to_owned())],
            )]),
            ..ScenarioOptions::default()
        },
    )
    .await?;
    let events = banking_events()?;
    let expected = large_chf_payment_ids(&events);
    assert!(!expected.is_empty(), "the samples hold large CHF payments");
    let (wanted, _) = scenario.expected(&events);
    let treasury = scenario.endpoint("treasury");
    let audit = scenario.endpoint("audit");
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let arrived = wait::until(
        "treasury and audit got their events",
        ARRIVAL_TIMEOUT,
        || {
            treasury.verified() >= expected.len() as u64
                && audit.verified() >= wanted["audit"].len() as u64
        },
    )
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;

    let received: BTreeSet<String> = treasury
        .receiver
        .requests()
        .into_iter()
        .filter_map(|request| request.verification.ok())
        .collect();
    println!(
        "{} of {} payment events matched the filter",
        received.len(),
        wanted["treasury"].len()
    );
    assert_eq!(
        received, expected,
        "treasury got exactly the large CHF payments"
    );
    remove_folder(&scenario.folder);
    Ok(())
}
