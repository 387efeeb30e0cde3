//! Outbound safety on the real broker: with `sender.allowed_networks` empty, deliveries to
//! loopback endpoints, whether named by an IPv4 address, an IPv4-mapped IPv6 address or a host
//! name, are refused before any connection. Each ends in the dead-letter topic with the reason
//! `blocked_address`, its attempt is logged with that error class, and no request arrives.

use std::time::Duration;

use herald_tests::kafka::{header, publish, read_topic};
use herald_tests::samples::synthetic_payments;
use herald_tests::scenario::{Scenario, remove_folder};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_endpoints_are_refused_without_an_allow_list() -> anyhow::Result<()> {
    let scenario = Scenario::new("guard", &[("target", &["payment.*"])]).await?;
    let target = scenario.endpoint("target");
    let port = target.receiver.address().port();
    let secret = target.secret.expose();
    let hosts = [
        ("ipv4", "127.0.0.1".to_owned()),
        ("mapped", "[::ffff:127.0.0.1]".to_owned()),
        ("name", "localhost".to_owned()),
    ];
    let mut yaml = String::from("subscriptions:\n");
    for (id, host) in &hosts {
        yaml.push_str(&format!(
            "  - id: {id}\n    url: http://{host}:{port}/webhooks\n    event_types: [\"payment.*\"]\n    secrets: [\"{secret}\"]\n"
        ));
    }
    let file = scenario.folder.join("guarded.yaml");
    std::fs::write(&file, yaml)?;
    let file_text = file.display().to_string();
    let environment = [
        ("HERALD__SUBSCRIPTIONS__FILE", file_text.as_str()),
        ("HERALD__SENDER__ALLOWED_NETWORKS", ""),
    ];
    let mut router = scenario.start_with("router", &environment)?;
    let mut sender = scenario.start_with("sender", &environment)?;

    const EVENTS: usize = 5;
    publish(
        &scenario.topics.domain,
        &synthetic_payments("guard", EVENTS),
    )
    .await?;
    let dead_letters = read_topic(&scenario.topics.dlq, EVENTS * hosts.len(), TIMEOUT)?;
    router.check_running()?;
    sender.check_running()?;

    assert_eq!(dead_letters.len(), EVENTS * hosts.len());
    for dead_letter in &dead_letters {
        assert_eq!(
            header(dead_letter, "herald-dead-letter-reason").as_deref(),
            Some("blocked_address")
        );
        assert_eq!(header(dead_letter, "herald-attempt").as_deref(), Some("1"));
        let error = header(dead_letter, "herald-last-error").unwrap_or_default();
        assert!(error.contains("loopback"), "{error}");
    }
    let attempts = read_topic(&scenario.topics.attempts, EVENTS * hosts.len(), TIMEOUT)?;
    for attempt in &attempts {
        let record: serde_json::Value =
            serde_json::from_slice(rdkafka::Message::payload(attempt).unwrap_or_default())?;
        assert_eq!(record["errorClass"], "blocked_address", "{record}");
        assert_eq!(record["outcome"], "dead_letter", "{record}");
    }
    assert_eq!(
        target.receiver.requests().len(),
        0,
        "a request reached the loopback receiver"
    );
    assert!(sender.log_contains("delivery dead-lettered without retries"));
    remove_folder(&scenario.folder);
    Ok(())
}
