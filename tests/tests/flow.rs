//! The sender's window on the real broker: a second sender joining and leaving mid-run loses
//! nothing and sends nothing twice beyond what had no outcome, and a backlog of a million
//! deliveries does not grow the sender's memory.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use herald_tests::kafka::{bootstrap_servers, publish};
use herald_tests::samples::synthetic_payments as events;
use herald_tests::scenario::{Scenario, ScenarioOptions, remove_folder};
use herald_tests::wait;

const TIMEOUT: Duration = Duration::from_secs(120);
const SUBSCRIPTIONS: &[(&str, &[&str])] = &[("ledger", &["payment.*"]), ("audit", &["*"])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sender_joins_and_leaves_without_loss() -> anyhow::Result<()> {
    const BATCH: usize = 200;
    const WINDOW: &str = "64";
    let scenario = Scenario::with_options(
        "rebalance",
        SUBSCRIPTIONS,
        ScenarioOptions {
            deliveries_partitions: Some(6),
            ..ScenarioOptions::default()
        },
    )
    .await?;
    for endpoint in &scenario.endpoints {
        // Slow enough that deliveries are in flight whenever partitions move.
        endpoint
            .receiver
            .delay_responses_between(Duration::from_millis(5), Duration::from_millis(40));
    }
    let window = [("HERALD__SENDER__MAX_IN_FLIGHT", WINDOW)];
    let arrived = |count: usize| {
        scenario
            .endpoints
            .iter()
            .all(|endpoint| endpoint.verified() >= count as u64)
    };
    let mut router = scenario.start("router")?;
    let mut first = scenario.start_with("sender", &window)?;

    publish(&scenario.topics.domain, &events("one", BATCH)).await?;
    wait::until("the first sender delivered some", TIMEOUT, || {
        arrived(BATCH / 4)
    })
    .await?;
    let mut second = scenario.start_with("sender", &window)?;
    wait::until("the second sender got partitions", TIMEOUT, || {
        second.log_contains("partitions assigned group_id=")
            && first.log_contains("partitions revoked")
    })
    .await?;
    publish(&scenario.topics.domain, &events("two", BATCH)).await?;
    wait::until("half of the second batch arrived", TIMEOUT, || {
        arrived(BATCH + BATCH / 2)
    })
    .await?;
    publish(&scenario.topics.domain, &events("three", BATCH)).await?;
    // SIGTERM while deliveries flow: the second sender finishes its window and leaves.
    assert!(
        second.terminate(Duration::from_secs(30))?,
        "the second sender did not stop cleanly:\n{}",
        second.log_tail()
    );
    let all = wait::until("every delivery arrived", TIMEOUT, || arrived(3 * BATCH)).await;
    router.check_running()?;
    first.check_running()?;
    all?;

    let duplicates: u64 = scenario
        .endpoints
        .iter()
        .map(|endpoint| {
            endpoint
                .receiver
                .counts()
                .duplicates
                .load(Ordering::Acquire)
        })
        .sum();
    let unfinished_at_revocation =
        first.log_contains("unfinished") || second.log_contains("unfinished");
    println!(
        "duplicates after a join and a leave: {duplicates} (window {WINDOW} per sender; work unfinished at revocation: {unfinished_at_revocation})"
    );
    assert!(
        duplicates <= 2 * WINDOW.parse::<u64>()?,
        "{duplicates} duplicates exceed the two senders' windows"
    );
    if !unfinished_at_revocation {
        assert_eq!(
            duplicates, 0,
            "every revoked delivery finished and was committed, yet some were sent twice"
        );
    }
    remove_folder(&scenario.folder);
    Ok(())
}

/// Writes `count` deliveries for `subscription` straight to the deliveries topic.
async fn write_backlog(topic: &str, subscription: &str, count: usize) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .context("creating the backlog producer")?;
    let body = serde_json::json!({
        "eventId": "evt_backlog",
        "eventType": "payment.settled",
        "data": {"amount": "1.00", "currency": "CHF", "note": "x".repeat(120)}
    })
    .to_string();
    let mut pending = Vec::new();
    for n in 0..count {
        let event_id = format!("evt_backlog_{n:07}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: herald_core::headers::SUBSCRIPTION_ID,
                value: Some(subscription),
            })
            .insert(Header {
                key: herald_core::headers::EVENT_ID,
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: herald_core::headers::EVENT_TYPE,
                value: Some("payment.settled"),
            });
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .key(subscription)
            .payload(body.as_str())
            .headers(headers);
        pending.push(
            producer.send_result(record).map_err(|(error, _)| {
                anyhow::anyhow!("cannot enqueue a backlog record: {error}")
            })?,
        );
        // Wait for acknowledgements in slices, so the producer's queue never fills.
        if pending.len() == 100_000 {
            for future in pending.drain(..) {
                future
                    .await
                    .context("producer dropped a record")?
                    .map_err(|(error, _)| anyhow::anyhow!("writing the backlog failed: {error}"))?;
            }
        }
    }
    for future in pending {
        future
            .await
            .context("producer dropped a record")?
            .map_err(|(error, _)| anyhow::anyhow!("writing the backlog failed: {error}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_a_million_deliveries_waiting() -> anyhow::Result<()> {
    const BACKLOG: usize = 1_000_000;
    /// What the sender may hold: the 64 MiB window of payloads, the consumer's 16 MiB queue, the
    /// producer's buffer, and the process itself, with room to spare.
    const BOUND_BYTES: u64 = 256 * 1024 * 1024;
    const WATCH: Duration = Duration::from_secs(20);
    let scenario = Scenario::with_options(
        "backlog",
        &[("bulk", &["*"])],
        ScenarioOptions {
            forget_requests: true,
            deliveries_partitions: Some(12),
            ..ScenarioOptions::default()
        },
    )
    .await?;
    let bulk = scenario.endpoint("bulk");
    let written = Instant::now();
    write_backlog(&scenario.topics.deliveries, "bulk", BACKLOG).await?;
    println!("wrote {BACKLOG} deliveries in {:?}", written.elapsed());

    let mut sender = scenario.start_with(
        "sender",
        &[("HERALD__SENDER__DEFAULT_RATE_LIMIT_PER_SECOND", "0")],
    )?;
    let mut samples = Vec::new();
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        sender.check_running()?;
        if let Some(bytes) = sender.resident_bytes() {
            samples.push(bytes);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivered = bulk.verified();
    let highest = samples.iter().copied().max().unwrap_or(0);
    let half = samples.len() / 2;
    let first_half = samples[..half].iter().copied().max().unwrap_or(0);
    let second_half = samples[half..].iter().copied().max().unwrap_or(0);
    println!(
        "sender memory over {WATCH:?} with a backlog of {BACKLOG}: highest {} MiB (first half {} MiB, second half {} MiB); {delivered} delivered",
        highest >> 20,
        first_half >> 20,
        second_half >> 20
    );
    assert!(!samples.is_empty(), "no memory reading of the sender");
    assert!(
        delivered > 1_000,
        "the sender made no progress: {delivered} delivered"
    );
    assert!(
        delivered < BACKLOG as u64,
        "the backlog was gone before the watch ended: the test proves nothing"
    );
    assert!(
        highest <= BOUND_BYTES,
        "the sender held {} MiB, over the {} MiB bound",
        highest >> 20,
        BOUND_BYTES >> 20
    );
    remove_folder(&scenario.folder);
    Ok(())
}
