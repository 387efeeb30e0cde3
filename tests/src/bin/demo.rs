//! `herald-demo`: Herald end to end on the sample events against a local Kafka. It starts the
//! admin API, one reference receiver per example subscription, and creates the subscriptions
//! through the API. Then it starts the router and the sender, publishes the banking events as a
//! core banking system would, and waits for every expected delivery. One receiver
//! fails the first two attempts of each webhook and recovers through the retry tiers. Another
//! always fails, so its deliveries end in the dead-letter topic. Then it publishes the hostile
//! records and shows what was rejected and why. Exits non-zero if anything is missing.
//!
//! Run it through `scripts/demo.sh`, which builds Herald and starts and stops the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_tests::api::AdminApi;
use herald_tests::kafka::{header, publish, read_topic};
use herald_tests::samples::{bad_events, banking_events};
use herald_tests::scenario::{Scenario, ScenarioOptions};
use herald_tests::wait;
use http::StatusCode;

const TIMEOUT: Duration = Duration::from_secs(300);
/// A demo key for sealing secrets on the subscriptions topic; a deployment takes its keys from its
/// secrets store.
const DEMO_KEYS: &str = "demo-1:ZGVtby1vbmx5LWtleS1kby1ub3QtdXNlLWluLXByb2Q=";

const SUBSCRIPTIONS: &[(&str, &[&str])] = &[
    ("compliance", &["kyc.*", "aml.*"]),
    ("ledger", &["payment.*"]),
    ("crm", &["client.*"]),
    ("audit", &["*"]),
    ("risk", &["fraud.*", "portfolio.risk.*"]),
    ("archive", &["document.*"]),
];
/// Fails the first two attempts of every webhook, then accepts: it recovers through the tiers.
const FLAKY: &str = "risk";
/// Responds 503 to everything, so its deliveries end in the dead-letter topic.
const DEAD: &str = "archive";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    // Subscriptions come from the topic, where the admin API writes them.
    let options = ScenarioOptions {
        topic_keys: Some(DEMO_KEYS.to_owned()),
        ..ScenarioOptions::default()
    };
    let scenario = Scenario::with_options("demo", SUBSCRIPTIONS, options)
        .await
        .context("setting up topics and receivers")?;
    scenario
        .endpoint(FLAKY)
        .receiver
        .fail_first(2, StatusCode::SERVICE_UNAVAILABLE, None);
    scenario
        .endpoint(DEAD)
        .receiver
        .respond_with(StatusCode::SERVICE_UNAVAILABLE);
    println!("Retry tiers: 1s, 2s, 4s (short, for the demo; the default runs from 10s to 24h)");
    println!("Service logs: {}", scenario.folder.display());
    for endpoint in &scenario.endpoints {
        let behaviour = match endpoint.name.as_str() {
            FLAKY => "  (fails twice per webhook, then recovers)",
            DEAD => "  (always answers 503)",
            _ => "",
        };
        println!(
            "  receiver {:<11} http://{}  wants {}{behaviour}",
            endpoint.name,
            endpoint.receiver.address(),
            endpoint.event_types.join(", ")
        );
    }

    let mut api = AdminApi::start(&scenario, &[])
        .await
        .context("starting the admin API")?;
    println!(
        "\nCreating the subscriptions through the admin API at {} ...",
        api.base
    );
    for endpoint in &scenario.endpoints {
        let body = serde_json::json!({
            "id": endpoint.name,
            "url": format!("http://{}/webhooks/{}", endpoint.receiver.address(), endpoint.name),
            "event_types": endpoint.event_types,
            "secret": endpoint.secret.expose(),
        });
        if endpoint.name == "ledger" {
            let mut printed = body.clone();
            printed["secret"] = "whsec_…".into();
            println!(
                "  curl -X POST {}/v1/subscriptions -H \"Authorization: Bearer $TOKEN\" -d '{printed}'",
                api.base
            );
        }
        let response = api.admin("POST", "/v1/subscriptions", Some(body)).await?;
        anyhow::ensure!(
            response.status == 201,
            "creating {} failed: {} {}",
            endpoint.name,
            response.status,
            response.body
        );
    }
    let listed = api.admin("GET", "/v1/subscriptions", None).await?;
    println!(
        "  GET /v1/subscriptions lists {} subscriptions",
        listed.body["data"].as_array().map_or(0, Vec::len)
    );
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
    let live = |wanted: &BTreeMap<String, BTreeSet<String>>| {
        scenario
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.name != DEAD)
            .all(|endpoint| endpoint.verified() >= wanted[&endpoint.name].len() as u64)
    };
    let banking_result =
        wait::until("every expected delivery arrived", TIMEOUT, || live(&wanted)).await;
    router.check_running()?;
    sender.check_running()?;
    let banking_elapsed = started.elapsed();

    let dead_expected = wanted[DEAD].len();
    println!("Waiting for {dead_expected} deliveries to {DEAD} to use up their retries ...");
    let dead_letters = read_topic(&scenario.topics.dlq, dead_expected, TIMEOUT)?;

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
        live(&wanted_all)
    })
    .await;

    let clean_stop =
        router.terminate(Duration::from_secs(30))? & sender.terminate(Duration::from_secs(30))?;
    api.process.check_running()?;

    println!("\n== Summary ==");
    println!(
        "events published:  {} banking + {} hostile",
        banking.len(),
        hostile.len()
    );
    println!(
        "banking events delivered in {:.1} s (retries included)",
        banking_elapsed.as_secs_f64()
    );
    println!(
        "\n{:<12} {:>9} {:>9} {:>11} {:>11} {:>9} {:>13}",
        "receiver", "expected", "received", "duplicates", "bad sigs", "failed", "dead letters"
    );
    let mut complete = true;
    for endpoint in &scenario.endpoints {
        let counts = endpoint.receiver.counts();
        let expected = wanted_all.get(&endpoint.name).map_or(0, BTreeSet::len);
        let received = endpoint.verified();
        let invalid = counts.invalid.load(Ordering::Relaxed);
        let dead = dead_letters
            .iter()
            .filter(|m| {
                header(m, "herald-subscription-id").as_deref() == Some(endpoint.name.as_str())
            })
            .count();
        let (expected_received, expected_dead) = if endpoint.name == DEAD {
            (0, dead_expected)
        } else {
            (expected as u64, 0)
        };
        complete &= received == expected_received && invalid == 0 && dead == expected_dead;
        println!(
            "{:<12} {:>9} {:>9} {:>11} {:>11} {:>9} {:>13}",
            endpoint.name,
            expected,
            received,
            counts.duplicates.load(Ordering::Relaxed),
            invalid,
            counts.failed.load(Ordering::Relaxed),
            dead
        );
    }
    println!(
        "(every request had its signature verified with its subscription's secret; a duplicate"
    );
    println!(
        " is a repeated webhook-id, acknowledged and dropped; failed counts the 503s answered)"
    );
    println!(
        "\n{DEAD}'s deliveries were dead-lettered after 4 attempts (reason {}).",
        dead_letters
            .first()
            .and_then(|m| header(m, "herald-dead-letter-reason"))
            .unwrap_or_default()
    );
    let listed_dead = api
        .admin(
            "GET",
            &format!("/v1/dead-letters?subscription_id={DEAD}&limit=1000"),
            None,
        )
        .await?;
    println!(
        "GET /v1/dead-letters?subscription_id={DEAD} lists {} of them.",
        listed_dead.body["data"].as_array().map_or(0, Vec::len)
    );
    println!("Once the endpoint is healthy, an operator redrives them with");
    println!("POST /v1/dead-letters/redrive {{\"subscription_id\": \"{DEAD}\"}}, or");
    println!("`herald dlq redrive --subscription {DEAD}` (see docs/retries.md).");

    let flaky_event = banking
        .iter()
        .filter_map(|record| record.id_and_type())
        .find(|(_, event_type)| event_type.starts_with("fraud."))
        .map(|(id, _)| id);
    if let Some(event_id) = flaky_event {
        println!("\nThe history of one delivery to {FLAKY} (herald history {FLAKY}:{event_id}):");
        let (_, history) = scenario.command(&["history", &format!("{FLAKY}:{event_id}")], &[])?;
        for line in history.lines() {
            println!("  {line}");
        }
    }

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
        "some receivers are missing deliveries, saw invalid signatures or lack dead letters"
    );
    anyhow::ensure!(
        by_offset.len() == expected_rejections,
        "some hostile records were not rejected"
    );
    anyhow::ensure!(clean_stop, "router or sender did not stop cleanly");
    anyhow::ensure!(
        api.process.terminate(Duration::from_secs(30))?,
        "the admin API did not stop cleanly"
    );
    println!("Demo passed: every expected delivery arrived with a valid signature.");
    Ok(())
}
