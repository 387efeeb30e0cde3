//! `herald-demo`: Herald end to end on the sample events against a local Kafka. It starts the
//! router, the sender and one reference receiver per example subscription, publishes the banking
//! events as a core banking system would, waits for every expected delivery, then publishes the
//! hostile events and shows what was rejected and why. Exits non-zero if anything is missing.
//!
//! Run it through `scripts/demo.sh`, which builds Herald and starts and stops the broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_tests::kafka::{header, publish, read_topic};
use herald_tests::samples::{bad_events, banking_events};
use herald_tests::scenario::Scenario;
use herald_tests::wait;

const TIMEOUT: Duration = Duration::from_secs(300);

const SUBSCRIPTIONS: &[(&str, &[&str])] = &[
    ("compliance", &["kyc.*", "aml.*"]),
    ("ledger", &["payment.*"]),
    ("crm", &["client.*"]),
    ("audit", &["*"]),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let scenario = Scenario::new("demo", SUBSCRIPTIONS)
        .await
        .context("setting up topics and receivers")?;
    println!(
        "Topics created with prefix {}",
        scenario.topics.domain.trim_end_matches(".banking")
    );
    println!("Service logs: {}", scenario.folder.display());
    for endpoint in &scenario.endpoints {
        println!(
            "  receiver {:<11} http://{}  wants {}",
            endpoint.name,
            endpoint.receiver.address(),
            endpoint.event_types.join(", ")
        );
    }
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    let banking = banking_events()?;
    println!(
        "\nPublishing {} banking events to {} ...",
        banking.len(),
        scenario.topics.domain
    );
    publish(&scenario.topics.domain, &banking).await?;
    let (wanted, _) = scenario.expected(&banking);
    let banking_result = wait::until("every expected delivery arrived", TIMEOUT, || {
        scenario.all_arrived(&wanted)
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    let banking_elapsed = started.elapsed();

    let hostile = bad_events()?;
    println!("Publishing {} hostile records ...", hostile.len());
    publish(&scenario.topics.domain, &hostile).await?;
    let mut all = banking.clone();
    all.extend(hostile.iter().cloned());
    let (wanted_all, _) = scenario.expected(&all);
    let expected_rejections = hostile
        .iter()
        .filter(|record| !record.expect_delivery)
        .count();
    let rejected = read_topic(&scenario.topics.rejected, expected_rejections, TIMEOUT)?;
    let hostile_result = wait::until("the valid hostile records arrived", TIMEOUT, || {
        scenario.all_arrived(&wanted_all)
    })
    .await;

    let clean_stop =
        router.terminate(Duration::from_secs(30))? & sender.terminate(Duration::from_secs(30))?;

    println!("\n== Summary ==");
    println!(
        "events published:  {} banking + {} hostile",
        banking.len(),
        hostile.len()
    );
    println!(
        "banking events delivered in {:.1} s",
        banking_elapsed.as_secs_f64()
    );
    println!(
        "\n{:<12} {:>9} {:>9} {:>11} {:>11}",
        "receiver", "expected", "received", "duplicates", "bad sigs"
    );
    let mut complete = true;
    for endpoint in &scenario.endpoints {
        let counts = endpoint.receiver.counts();
        let expected = wanted_all.get(&endpoint.name).map_or(0, |ids| ids.len());
        let received = endpoint.verified();
        let invalid = counts.invalid.load(std::sync::atomic::Ordering::Relaxed);
        complete &= received == expected as u64 && invalid == 0;
        println!(
            "{:<12} {:>9} {:>9} {:>11} {:>11}",
            endpoint.name,
            expected,
            received,
            counts.duplicates.load(std::sync::atomic::Ordering::Relaxed),
            invalid
        );
    }
    println!("(every received request had its signature verified with its subscription's secret;");
    println!(" a duplicate is a repeated webhook-id, which the receiver acknowledged and dropped)");

    println!(
        "\nrejected events: {} of {} expected",
        rejected.len(),
        expected_rejections
    );
    // All hostile records share one key, so they sit in one partition in the order published,
    // and the rejected records, sorted by source offset, follow that order.
    let mut by_offset: BTreeMap<i64, String> = BTreeMap::new();
    for message in &rejected {
        let source = header(message, "herald-source").unwrap_or_default();
        let offset = source
            .rsplit('/')
            .next()
            .and_then(|offset| offset.parse::<i64>().ok())
            .unwrap_or(-1);
        by_offset.insert(
            offset,
            header(message, "herald-reject-reason").unwrap_or_default(),
        );
    }
    let refused = hostile.iter().filter(|record| !record.expect_delivery);
    for (record, reason) in refused.zip(by_offset.values()) {
        println!("  {:<62} -> {reason}", record.why);
    }
    let accepted: Vec<&str> = hostile
        .iter()
        .filter(|r| r.expect_delivery)
        .map(|r| r.why.as_str())
        .collect();
    println!(
        "hostile records delivered as valid events: {}",
        accepted.len()
    );
    for why in accepted {
        println!("  {why}");
    }
    println!("\ntime taken: {:.1} s", started.elapsed().as_secs_f64());

    banking_result?;
    hostile_result?;
    anyhow::ensure!(
        complete,
        "some receivers are missing deliveries or saw invalid signatures"
    );
    anyhow::ensure!(
        by_offset.len() == expected_rejections,
        "some hostile records were not rejected"
    );
    anyhow::ensure!(clean_stop, "router or sender did not stop cleanly");
    println!("Demo passed: every expected delivery arrived with a valid signature.");
    Ok(())
}
