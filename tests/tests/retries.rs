//! Retries on the real broker with a short schedule (1s, 2s, 4s). The tests cover recovery through
//! the tiers, dead letters with their history and redrive, Retry-After and 410 Gone. They also
//! cover a forwarder holding a tier longer than max.poll.interval.ms, SIGKILL during retries, and
//! healthy subscriptions flowing while another fails.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_tests::kafka::{header, publish, read_topic};
use herald_tests::samples::{SampleRecord, banking_events};
use herald_tests::scenario::{Scenario, remove_folder};
use herald_tests::wait;
use herald_verify::receiver::ReceivedRequest;
use http::StatusCode;

const TIMEOUT: Duration = Duration::from_secs(120);
const SUBSCRIPTIONS: &[(&str, &[&str])] = &[("ledger", &["payment.*"]), ("audit", &["*"])];

fn payments(count: usize) -> anyhow::Result<Vec<SampleRecord>> {
    Ok(banking_events()?
        .into_iter()
        .filter(|record| {
            record
                .id_and_type()
                .is_some_and(|(_, event_type)| event_type.starts_with("payment."))
        })
        .take(count)
        .collect())
}

/// Groups requests by webhook id, in arrival order.
fn by_id(requests: Vec<ReceivedRequest>) -> BTreeMap<String, Vec<ReceivedRequest>> {
    let mut grouped: BTreeMap<String, Vec<ReceivedRequest>> = BTreeMap::new();
    for request in requests {
        let id = request.headers["webhook-id"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        grouped.entry(id).or_default().push(request);
    }
    grouped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_endpoint_recovers_on_third_attempt() -> anyhow::Result<()> {
    let scenario = Scenario::new("flaky", SUBSCRIPTIONS).await?;
    let ledger = scenario.endpoint("ledger");
    ledger
        .receiver
        .fail_first(2, StatusCode::SERVICE_UNAVAILABLE, None);
    let events = payments(20)?;
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let arrived = wait::until("every payment reached the ledger", TIMEOUT, || {
        ledger.verified() >= 20
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;

    let mut worst_lateness = Duration::ZERO;
    for (id, attempts) in by_id(ledger.receiver.requests()) {
        let statuses: Vec<u16> = attempts.iter().map(|a| a.status.as_u16()).collect();
        assert_eq!(
            statuses,
            [503, 503, 204],
            "{id}: delivered on the third attempt"
        );
        for attempt in &attempts {
            assert_eq!(
                attempt.verification.as_ref().ok(),
                Some(&id),
                "{id}: every attempt verifies with the same webhook-id"
            );
        }
        let timestamps: Vec<&str> = attempts
            .iter()
            .map(|a| a.headers["webhook-timestamp"].to_str().unwrap_or_default())
            .collect();
        assert!(
            timestamps.windows(2).all(|pair| pair[0] < pair[1]),
            "{id}: each retry is signed afresh: {timestamps:?}"
        );
        let signatures: Vec<&str> = attempts
            .iter()
            .map(|a| a.headers["webhook-signature"].to_str().unwrap_or_default())
            .collect();
        assert!(
            signatures.windows(2).all(|pair| pair[0] != pair[1]),
            "{id}: signatures change with the timestamp"
        );

        for (pair, tier) in attempts
            .windows(2)
            .zip([Duration::from_secs(1), Duration::from_secs(2)])
        {
            let gap = pair[1].received_at - pair[0].received_at;
            assert!(
                gap >= tier,
                "{id}: retried after {gap:?}, before its {tier:?} tier was due"
            );
            worst_lateness = worst_lateness.max(gap - tier);
        }
    }
    // Reported, not asserted: lateness includes the 10% jitter and the forwarder's polling.
    println!("latest retry arrived {worst_lateness:?} after its tier delay");

    let some_id = events[0]
        .id_and_type()
        .map(|(id, _)| id)
        .unwrap_or_default();
    let (found, history) = scenario.command(&["history", &format!("ledger:{some_id}")], &[])?;
    assert!(found, "history found nothing:\n{history}");
    assert_eq!(
        history.lines().count(),
        3,
        "three attempts in the log:\n{history}"
    );
    assert!(
        history
            .lines()
            .next()
            .is_some_and(|line| line.contains("503") && line.contains("tier 1s")),
        "{history}"
    );
    assert!(
        history
            .lines()
            .last()
            .is_some_and(|line| line.contains("delivered")),
        "{history}"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redriven_once_healthy() -> anyhow::Result<()> {
    let scenario = Scenario::new("redrive", SUBSCRIPTIONS).await?;
    let ledger = scenario.endpoint("ledger");
    ledger
        .receiver
        .respond_with(StatusCode::INTERNAL_SERVER_ERROR);
    let events = payments(5)?;
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let dead_letters = read_topic(&scenario.topics.dlq, 5, TIMEOUT)?;
    router.check_running()?;
    sender.check_running()?;
    assert_eq!(dead_letters.len(), 5);
    for message in &dead_letters {
        assert_eq!(
            header(message, "herald-dead-letter-reason").as_deref(),
            Some("retries_exhausted")
        );
        assert_eq!(header(message, "herald-attempt").as_deref(), Some("4"));
        assert_eq!(
            header(message, "herald-last-status").as_deref(),
            Some("500")
        );
        let first = header(message, "herald-first-attempt-at").unwrap_or_default();
        let last = header(message, "herald-last-attempt-at").unwrap_or_default();
        assert!(first < last, "first attempt {first} before last {last}");
        assert!(header(message, "herald-source").is_some());
        assert!(
            header(message, "herald-tier").is_none(),
            "no tier header on a dead letter"
        );
    }
    assert_eq!(
        ledger
            .receiver
            .counts()
            .failed
            .load(std::sync::atomic::Ordering::Relaxed),
        20,
        "four attempts each"
    );

    let (listed, output) =
        scenario.command(&["dlq", "list", "--subscription", "ledger", "--json"], &[])?;
    assert!(listed);
    assert_eq!(output.lines().count(), 5, "{output}");
    let (_, none) = scenario.command(&["dlq", "list", "--subscription", "audit"], &[])?;
    assert!(none.contains("0 dead letters"), "{none}");
    let (dry, dry_output) = scenario.command(
        &["dlq", "redrive", "--subscription", "ledger", "--dry-run"],
        &[],
    )?;
    assert!(
        dry && dry_output.contains("5 dead letters would be redriven"),
        "{dry_output}"
    );

    ledger.receiver.respond_with(StatusCode::NO_CONTENT);
    let (redriven, redrive_output) = scenario.command(
        &[
            "dlq",
            "redrive",
            "--subscription",
            "ledger",
            "--reason",
            "retries_exhausted",
        ],
        &[],
    )?;
    assert!(
        redriven && redrive_output.contains("5 dead letters redriven"),
        "{redrive_output}"
    );
    let arrived = wait::until("redriven deliveries arrived", TIMEOUT, || {
        ledger.verified() >= 5
    })
    .await;
    sender.check_running()?;
    arrived?;
    assert_eq!(ledger.verified(), 5);
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() -> anyhow::Result<()> {
    let scenario = Scenario::new("retry-after", SUBSCRIPTIONS).await?;
    let ledger = scenario.endpoint("ledger");
    ledger
        .receiver
        .fail_first(1, StatusCode::TOO_MANY_REQUESTS, Some("3"));
    let events = payments(3)?;
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let arrived = wait::until("payments delivered after 429", TIMEOUT, || {
        ledger.verified() >= 3
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    for (id, attempts) in by_id(ledger.receiver.requests()) {
        assert_eq!(attempts.len(), 2, "{id}");
        let gap = attempts[1].received_at - attempts[0].received_at;
        assert!(
            gap >= Duration::from_secs(3),
            "{id}: retried after {gap:?}, before Retry-After: 3"
        );
    }
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription() -> anyhow::Result<()> {
    let scenario = Scenario::new("gone", SUBSCRIPTIONS).await?;
    let ledger = scenario.endpoint("ledger");
    ledger.receiver.respond_with(StatusCode::GONE);
    let events = payments(5)?;
    let mut router = scenario.start("router")?;
    // One attempt at a time, so the first 410 disables the subscription before the next attempt.
    let mut sender = scenario.start_with("sender", &[("HERALD__SENDER__MAX_IN_FLIGHT", "1")])?;

    publish(&scenario.topics.domain, &events).await?;
    let dead_letters = read_topic(&scenario.topics.dlq, 5, TIMEOUT)?;
    router.check_running()?;
    sender.check_running()?;
    let reasons: Vec<String> = dead_letters
        .iter()
        .filter_map(|m| header(m, "herald-dead-letter-reason"))
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| *r == "gone").count(),
        1,
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "subscription_disabled")
            .count(),
        4,
        "{reasons:?}"
    );
    assert_eq!(
        ledger.receiver.requests().len(),
        1,
        "no request after the 410"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_stays_in_group_through_long_tier() -> anyhow::Result<()> {
    let scenario = Scenario::new("long-tier", SUBSCRIPTIONS).await?;
    // A 12 s tier, longer than a max.poll.interval.ms of 7 s.
    let environment = [
        ("HERALD__RETRY__TIERS", "12s"),
        ("HERALD__KAFKA__CONSUMER__MAX_POLL_INTERVAL_MS", "7000"),
    ];
    let (applied, output) = scenario.command(&["topics", "apply"], &environment)?;
    assert!(applied, "{output}");
    let ledger = scenario.endpoint("ledger");
    ledger
        .receiver
        .fail_first(1, StatusCode::SERVICE_UNAVAILABLE, None);
    let events = payments(2)?;
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start_with("sender", &environment)?;

    publish(&scenario.topics.domain, &events).await?;
    let arrived = wait::until("payments delivered through the 12 s tier", TIMEOUT, || {
        ledger.verified() >= 2
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    let log = sender.log_tail();
    assert!(
        !log.contains("partitions revoked"),
        "a consumer left its group:\n{log}"
    );
    // librdkafka logs "Application maximum poll interval (…ms) exceeded" when a consumer polls too rarely.
    assert!(
        !log.contains("maximum poll interval"),
        "a consumer exceeded max.poll.interval.ms:\n{log}"
    );
    assert_eq!(
        log.matches("partitions assigned").count(),
        2,
        "one assignment per consumer:\n{log}"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_during_retries_loses_nothing() -> anyhow::Result<()> {
    let scenario = Scenario::new("retry-kill", SUBSCRIPTIONS).await?;
    let ledger = scenario.endpoint("ledger");
    ledger
        .receiver
        .fail_first(2, StatusCode::SERVICE_UNAVAILABLE, None);
    let events = payments(200)?;
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let failed = || {
        ledger
            .receiver
            .counts()
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait::until("retries are under way", TIMEOUT, || failed() >= 250).await?;
    sender.kill()?;
    assert!(
        ledger.verified() < 200,
        "every payment arrived before the sender was killed"
    );

    let mut sender = scenario.start("sender")?;
    let arrived = wait::until("every payment arrived", TIMEOUT, || {
        ledger.verified() >= 200
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    assert_eq!(scenario.endpoint("audit").verified(), 200);
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_subscriptions_flow_while_another_fails() -> anyhow::Result<()> {
    let scenario = Scenario::new("isolation", SUBSCRIPTIONS).await?;
    scenario
        .endpoint("ledger")
        .receiver
        .respond_with(StatusCode::SERVICE_UNAVAILABLE);
    let events: Vec<SampleRecord> = banking_events()?.into_iter().take(500).collect();
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events).await?;
    let audit = scenario.endpoint("audit");
    let arrived = wait::until("audit received every event", TIMEOUT, || {
        audit.verified() >= 500
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    // Every failing delivery needs 7 s of tiers before its dead letter; audit finished first.
    let dead_letters = read_topic(&scenario.topics.dlq, 1, Duration::from_millis(500))?;
    assert!(
        dead_letters.is_empty(),
        "audit waited for the failing subscription's retries"
    );
    remove_folder(&scenario.folder);
    Ok(())
}
