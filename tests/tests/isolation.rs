//! Per-subscription limits and isolation on the real broker: the rate limit and the concurrency
//! limit hold at the receiver, an endpoint that never answers does not hold up the others, and a
//! failing endpoint's circuit stops requests to it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald_tests::kafka::{header, publish, read_topic};
use herald_tests::samples::synthetic_payments as events;
use herald_tests::scenario::{Scenario, ScenarioOptions, remove_folder};
use herald_tests::wait;
use http::StatusCode;

const TIMEOUT: Duration = Duration::from_secs(120);

fn options(settings: &[(&str, &[(&str, &str)])]) -> ScenarioOptions {
    ScenarioOptions {
        subscription_settings: settings
            .iter()
            .map(|(name, pairs)| {
                (
                    (*name).to_owned(),
                    pairs
                        .iter()
                        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                        .collect(),
                )
            })
            .collect(),
        ..ScenarioOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_at_the_receiver() -> anyhow::Result<()> {
    const RATE: usize = 20;
    const BURST: usize = 5;
    const EVENTS: usize = 120;
    let rate = RATE.to_string();
    let burst = BURST.to_string();
    let scenario = Scenario::with_options(
        "rate",
        &[("limited", &["payment.*"])],
        options(&[(
            "limited",
            &[
                ("rate_limit_per_second", rate.as_str()),
                ("rate_limit_burst", burst.as_str()),
            ],
        )]),
    )
    .await?;
    let limited = scenario.endpoint("limited");
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events("rate", EVENTS)).await?;
    let arrived = wait::until("every event reached the limited endpoint", TIMEOUT, || {
        limited.verified() >= EVENTS as u64
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;

    // The maximum number of requests within any one second, measured at the receiver.
    let mut arrivals: Vec<Instant> = limited
        .receiver
        .requests()
        .iter()
        .map(|request| request.received_at)
        .collect();
    arrivals.sort();
    let busiest = (0..arrivals.len())
        .map(|first| {
            arrivals[first..]
                .iter()
                .take_while(|at| **at - arrivals[first] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    println!("busiest second: {busiest} requests (limit {RATE}/s, burst {BURST})");
    // The window starts at an arrival, and arrivals lag their departures by a varying few
    // milliseconds, so one request more than the limit can fall inside it without a breach.
    assert!(
        busiest <= RATE + BURST + 1,
        "{busiest} requests within one second exceed {RATE}/s plus a burst of {BURST}"
    );
    // 120 events at 20 per second wait longer than park_after: some were parked and came back.
    assert!(parked(&scenario), "no delivery was parked");
    remove_folder(&scenario.folder);
    Ok(())
}

/// True when a parked delivery is on the first tier.
fn parked(scenario: &Scenario) -> bool {
    read_topic(&scenario.topics.first_tier, 1, Duration::from_secs(10)).is_ok_and(|records| {
        records
            .iter()
            .any(|record| header(record, "herald-parked").is_some())
    })
}

fn sender_log_mentions(scenario: &Scenario, text: &str) -> bool {
    std::fs::read_to_string(scenario.folder.join("sender.log")).is_ok_and(|log| log.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_is_never_exceeded() -> anyhow::Result<()> {
    const LIMIT: u64 = 3;
    const EVENTS: usize = 60;
    let limit = LIMIT.to_string();
    let scenario = Scenario::with_options(
        "concurrency",
        &[("narrow", &["payment.*"])],
        options(&[("narrow", &[("max_concurrency", limit.as_str())])]),
    )
    .await?;
    let narrow = scenario.endpoint("narrow");
    narrow.receiver.delay_responses(Duration::from_millis(100));
    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    publish(&scenario.topics.domain, &events("conc", EVENTS)).await?;
    let arrived = wait::until("every event reached the endpoint", TIMEOUT, || {
        narrow.verified() >= EVENTS as u64
    })
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;

    let max_open = narrow
        .receiver
        .counts()
        .max_in_progress
        .load(Ordering::Acquire);
    println!("at most {max_open} requests open at once (limit {LIMIT})");
    assert!(
        max_open <= LIMIT,
        "{max_open} requests were open at once, over {LIMIT}"
    );
    assert_eq!(
        max_open, LIMIT,
        "the limit was never reached: the test proves nothing"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

/// Latencies from publishing to arrival, per endpoint, for endpoints that answer.
fn arrival_percentiles(
    scenario: &Scenario,
    published: Instant,
    names: &[&str],
) -> (Duration, Duration) {
    let mut latencies: Vec<Duration> = names
        .iter()
        .flat_map(|name| scenario.endpoint(name).receiver.requests())
        .map(|request| request.received_at.saturating_duration_since(published))
        .collect();
    latencies.sort();
    let at = |fraction: f64| {
        latencies
            .get(
                ((latencies.len() as f64 * fraction) as usize)
                    .min(latencies.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or_default()
    };
    (at(0.5), at(0.99))
}

const HEALTHY: [&str; 9] = ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"];

/// Publishes `events` to nine healthy endpoints and, when `with_hanging`, a tenth that never
/// answers; returns the nine's median and 99th percentile latency.
async fn run_nine(with_hanging: bool, events_count: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut subscriptions: Vec<(&str, &[&str])> =
        HEALTHY.iter().map(|name| (*name, &["*"][..])).collect();
    if with_hanging {
        subscriptions.push(("hanging", &["*"]));
    }
    // The hanging endpoint's attempts time out only after a minute: the others must get
    // everything before that, while its requests are still open.
    let scenario = Scenario::with_options(
        if with_hanging { "hanging" } else { "baseline" },
        &subscriptions,
        options(&[(
            "hanging",
            &[("timeout_ms", "60000"), ("max_concurrency", "5")],
        )]),
    )
    .await?;
    if with_hanging {
        scenario
            .endpoint("hanging")
            .receiver
            .delay_responses(Duration::from_secs(600));
    }
    let mut router = scenario.start("router")?;
    // A window of 64 deliveries: without per-subscription limits, the hanging endpoint fills it.
    let mut sender = scenario.start_with("sender", &[("HERALD__SENDER__MAX_IN_FLIGHT", "64")])?;

    let published = Instant::now();
    publish(
        &scenario.topics.domain,
        &events(if with_hanging { "hang" } else { "base" }, events_count),
    )
    .await?;
    let arrived = wait::until(
        "the nine healthy endpoints got every event",
        TIMEOUT,
        || {
            HEALTHY
                .iter()
                .all(|name| scenario.endpoint(name).verified() >= events_count as u64)
        },
    )
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    if with_hanging {
        let hanging = scenario.endpoint("hanging").receiver.counts();
        let open = hanging.in_progress.load(Ordering::Acquire);
        assert!(open > 0, "the hanging endpoint had no request open");
        assert!(
            hanging.max_in_progress.load(Ordering::Acquire) <= 5,
            "the hanging endpoint's concurrency limit was exceeded"
        );
        assert_eq!(
            hanging.requests.load(Ordering::Acquire),
            0,
            "the hanging endpoint answered"
        );
        assert!(
            parked(&scenario),
            "no delivery to the hanging endpoint was parked"
        );
    }
    let percentiles = arrival_percentiles(&scenario, published, &HEALTHY);
    remove_folder(&scenario.folder);
    Ok(percentiles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_endpoint_does_not_hold_up_the_others() -> anyhow::Result<()> {
    const EVENTS: usize = 300;
    let (base_p50, base_p99) = run_nine(false, EVENTS).await?;
    let (p50, p99) = run_nine(true, EVENTS).await?;
    // Reported, not asserted: the comparison of speed belongs to the load-test harness.
    println!(
        "nine healthy endpoints, {EVENTS} events each: p50 {p50:?} and p99 {p99:?} beside a hanging endpoint, \
         p50 {base_p50:?} and p99 {base_p99:?} without it"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_circuit_stops_requests_to_a_failing_endpoint() -> anyhow::Result<()> {
    const EVENTS: usize = 20;
    const THRESHOLD: u64 = 3;
    let scenario = Scenario::with_options(
        "circuit",
        &[("down", &["payment.*"]), ("up", &["payment.*"])],
        // One request at a time, so the circuit opens after exactly three failures.
        ScenarioOptions {
            circuit_failure_threshold: Some(3),
            ..options(&[("down", &[("max_concurrency", "1")])])
        },
    )
    .await?;
    let down = scenario.endpoint("down");
    let up = scenario.endpoint("up");
    down.receiver
        .respond_with(StatusCode::INTERNAL_SERVER_ERROR);
    let mut router = scenario.start("router")?;
    let mut sender =
        scenario.start_with("sender", &[("HERALD__SENDER__CIRCUIT_OPEN_MS", "600000")])?;

    publish(&scenario.topics.domain, &events("circ", EVENTS)).await?;
    let dead_letters = read_topic(&scenario.topics.dlq, EVENTS, TIMEOUT)?;
    router.check_running()?;
    sender.check_running()?;
    assert_eq!(
        dead_letters.len(),
        EVENTS,
        "every delivery to the failing endpoint is dead-lettered"
    );
    wait::until("the healthy endpoint got every event", TIMEOUT, || {
        up.verified() >= EVENTS as u64
    })
    .await?;

    // The open circuit holds back every attempt but the last: a delivery out of tiers makes one
    // real request, so its dead letter carries the endpoint's own status.
    let requests = down.receiver.counts().failed.load(Ordering::Acquire);
    assert_eq!(
        requests,
        THRESHOLD + EVENTS as u64,
        "requests reached the endpoint between the first failures and the last attempts"
    );
    let mut last_statuses: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &dead_letters {
        assert_eq!(
            header(letter, "herald-subscription-id").as_deref(),
            Some("down")
        );
        *last_statuses
            .entry(header(letter, "herald-last-status").unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        last_statuses,
        BTreeMap::from([("500".to_owned(), EVENTS)]),
        "each dead letter's last attempt reached the endpoint"
    );
    assert!(sender_log_mentions(&scenario, "circuit opened"));
    remove_folder(&scenario.folder);
    Ok(())
}
