//! A Kafka outage, on a broker of this test's own. While the broker is down every service stays
//! alive (`/healthz` 200) but reports not ready (`/readyz` 503), and logs each repeated Kafka
//! error a bounded number of times instead of many times a second. When the broker returns they
//! become ready again and deliver. With the broker down, SIGTERM still stops them within their
//! shutdown timeout.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_tests::api::AdminApi;
use herald_tests::broker::OwnBroker;
use herald_tests::http::get;
use herald_tests::kafka::publish_to;
use herald_tests::process::HeraldProcess;
use herald_tests::samples::synthetic_payments;
use herald_tests::scenario::{Scenario, ScenarioOptions, remove_folder};
use herald_tests::wait;

const TIMEOUT: Duration = Duration::from_secs(120);
const LISTENING: &str = "metrics and health endpoints listening";
const KEYS: &str = "test-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Log lines that report a failing Kafka connection.
const KAFKA_ERRORS: [&str; 3] = [
    "librdkafka",
    "consumer error",
    "reading the subscriptions topic failed",
];
/// The maximum number of such warnings and errors one process may write during this test's
/// outages, which last about half a minute in all. Each distinct error of each Kafka client (up
/// to four in a process) is logged at most every 30 s, and about 20 lines were seen. Without the
/// limit, every reconnection of every client logs three lines, over a hundred in all.
const MAX_ERROR_LINES: usize = 40;

/// Returns the `/readyz` status of each address.
async fn readiness(addresses: &[String]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for address in addresses {
        statuses.push(
            get(address, "/readyz")
                .await
                .map_or(0, |(status, _)| status),
        );
    }
    statuses
}

async fn wait_readiness(addresses: &[String], status: u16, condition: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let statuses = readiness(addresses).await;
        if statuses.iter().all(|found| *found == status) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{condition}: /readyz gave {statuses:?} for {addresses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn error_lines(process: &HeraldProcess) -> usize {
    process
        .log_text()
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .filter(|line| KAFKA_ERRORS.iter().any(|marker| line.contains(marker)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_report_a_kafka_outage_and_recover() -> anyhow::Result<()> {
    let folder = std::env::temp_dir()
        .join("herald-tests")
        .join(herald_tests::kafka::unique_name("outage-broker-"));
    let broker = OwnBroker::start(&folder)?;
    let bootstrap = broker.bootstrap_servers();
    let scenario = Scenario::with_options(
        "outage",
        &[("ledger", &["payment.*"])],
        ScenarioOptions {
            bootstrap_servers: Some(bootstrap.clone()),
            ..ScenarioOptions::default()
        },
    )
    .await?;
    let ledger = scenario.endpoint("ledger");
    let environment = [
        ("HERALD__SUBSCRIPTIONS__SOURCE", "topic"),
        ("HERALD__ENCRYPTION__KEYS", KEYS),
        ("HERALD__TELEMETRY__LISTEN", "127.0.0.1:0"),
        ("HERALD__ROUTER__SHUTDOWN_TIMEOUT_MS", "2000"),
        ("HERALD__SENDER__SHUTDOWN_TIMEOUT_MS", "2000"),
        // The stages produce a record again after each timeout, however long Kafka is away.
        ("HERALD__KAFKA__PRODUCE_TIMEOUT_MS", "2000"),
    ];
    let api = AdminApi::start(&scenario, &environment[..3]).await?;
    let created = api
        .admin(
            "POST",
            "/v1/subscriptions",
            Some(serde_json::json!({
                "id": "ledger",
                "url": format!("http://{}/webhooks/ledger", ledger.receiver.address()),
                "event_types": ["payment.*"],
                "secret": ledger.secret.expose(),
            })),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    // The admin API reports its requests by route, without subscription ids.
    let admin_telemetry = api
        .process
        .logged_address(LISTENING)
        .ok_or_else(|| anyhow::anyhow!("no telemetry address in the admin log"))?;
    let (_, admin_metrics) = get(&admin_telemetry, "/metrics").await?;
    assert_eq!(
        herald_tests::http::sample_sum(
            &admin_metrics,
            "http_server_request_duration_seconds_count",
            &[
                ("http_route", "/v1/subscriptions"),
                ("http_request_method", "POST"),
                ("http_response_status_code", "201"),
            ],
        ),
        1.0,
        "{admin_metrics}"
    );
    let mut router = scenario.start_with("router", &environment)?;
    let mut sender = scenario.start_with("sender", &environment)?;
    wait::until("router and sender listen for probes", TIMEOUT, || {
        router.log_contains(LISTENING) && sender.log_contains(LISTENING)
    })
    .await?;
    let mut addresses = Vec::new();
    for process in [&router, &sender] {
        addresses.push(
            process
                .logged_address(LISTENING)
                .ok_or_else(|| anyhow::anyhow!("no address in the {} log", process.role()))?,
        );
    }
    // The admin API serves probes on its own port and on the telemetry listener.
    addresses.push(api.base.trim_start_matches("http://").to_owned());
    addresses.push(admin_telemetry.clone());
    wait_readiness(&addresses, 200, "ready before the outage").await?;

    // Two deliveries are in flight, held by a slow endpoint, when the broker stops.
    let counts = ledger.receiver.counts();
    ledger.receiver.delay_responses(Duration::from_secs(3));
    publish_to(
        &bootstrap,
        &scenario.topics.domain,
        &synthetic_payments("pre", 2),
    )
    .await?;
    wait::until("the endpoint holds a request", TIMEOUT, || {
        counts.in_progress.load(Ordering::Acquire) >= 1
    })
    .await?;
    broker.stop()?;
    wait_readiness(&addresses, 503, "not ready while Kafka is down").await?;
    for address in &addresses {
        assert_eq!(
            get(address, "/healthz").await?.0,
            200,
            "alive during the outage"
        );
    }
    wait::until("the endpoint answered both", TIMEOUT, || {
        counts.in_progress.load(Ordering::Acquire) == 0 && ledger.verified() >= 2
    })
    .await?;
    ledger.receiver.delay_responses(Duration::ZERO);
    // The outcomes of those attempts now wait for Kafka. Waiting past twice the produce timeout
    // shows that a timed-out produce is tried again instead of stopping the sender.
    tokio::time::sleep(Duration::from_secs(4)).await;
    router.check_running()?;
    sender.check_running()?;
    assert!(
        sender.log_contains("produce timed out: trying again"),
        "the sender tells the operator that a produce waits for Kafka:\n{}",
        sender.log_tail()
    );

    broker.resume()?;
    wait_readiness(&addresses, 200, "ready again once Kafka is back").await?;
    publish_to(
        &bootstrap,
        &scenario.topics.domain,
        &synthetic_payments("out", 3),
    )
    .await?;
    wait::until("events published after the outage arrive", TIMEOUT, || {
        ledger.verified() >= 5
    })
    .await?;
    // Every attempt's outcome reached Kafka, those held through the outage included.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (_, metrics) = get(&addresses[1], "/metrics").await?;
        let delivered = herald_tests::http::sample_sum(
            &metrics,
            "herald_sender_attempts_total",
            &[("outcome", "delivered")],
        );
        if delivered >= 5.0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the sender counted {delivered} delivered attempts, not 5:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    broker.stop()?;
    wait_readiness(&addresses, 503, "not ready in the second outage").await?;
    let mut api = api;
    for process in [&mut router, &mut sender, &mut api.process] {
        let lines = error_lines(process);
        assert!(
            lines <= MAX_ERROR_LINES,
            "herald {} logged {lines} Kafka error lines:\n{}",
            process.role(),
            process.log_tail()
        );
        // Shutdown timeouts are 2 s here; the bound leaves room for a slow machine.
        let stopping = std::time::Instant::now();
        assert!(
            process.terminate(Duration::from_secs(20))?,
            "herald {} did not exit cleanly with Kafka down:\n{}",
            process.role(),
            process.log_tail()
        );
        eprintln!(
            "herald {}: {lines} Kafka error lines, stopped in {:?}",
            process.role(),
            stopping.elapsed()
        );
    }
    drop(broker);
    remove_folder(&scenario.folder);
    remove_folder(&folder);
    Ok(())
}

/// A command that cannot reach Kafka at start-up prints the address it tried.
#[test]
fn startup_error_names_bootstrap_address() -> anyhow::Result<()> {
    // A loopback port that nothing listens on once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bootstrap = format!("127.0.0.1:{port}");
    let output = std::process::Command::new(herald_tests::process::workspace_binary("herald")?)
        .args(["subscriptions", "list"])
        .env("HERALD__KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env("HERALD__ENCRYPTION__KEYS", KEYS)
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("kafka.bootstrap_servers = {bootstrap}")),
        "{stderr}"
    );
    Ok(())
}

/// A misspelled librdkafka setting points at the configuration sections that pass them through.
#[test]
fn client_setting_error_names_section() -> anyhow::Result<()> {
    let output = std::process::Command::new(herald_tests::process::workspace_binary("herald")?)
        .args(["subscriptions", "list"])
        .env("HERALD__KAFKA__CLIENT__SESSION_TIMOUT_MS", "6000")
        .env("HERALD__ENCRYPTION__KEYS", KEYS)
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("session.timout.ms"), "{stderr}");
    assert!(
        stderr.contains("check kafka.client, kafka.consumer and kafka.producer"),
        "{stderr}"
    );
    Ok(())
}
