//! The Python publishing example in docs/examples works against the real broker: events it
//! publishes reach the subscription, signed, with their ids and the publisher's trace context.

use std::process::Command;
use std::time::Duration;

use herald_tests::kafka::bootstrap_servers;
use herald_tests::samples;
use herald_tests::scenario::{Scenario, remove_folder};
use herald_tests::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_events_are_delivered() -> anyhow::Result<()> {
    let scenario = Scenario::new("python", &[("ledger", &["payment.*"])]).await?;
    let events_path = scenario.folder.join("events.jsonl");
    let sample_text = std::fs::read_to_string(samples::folder().join("banking-events.jsonl"))?;
    let lines: Vec<&str> = sample_text.lines().take(50).collect();
    std::fs::write(&events_path, lines.join("\n") + "\n")?;
    let payments = lines
        .iter()
        .filter(|line| line.contains(r#""eventType": "payment."#))
        .count() as u64;

    let mut router = scenario.start("router")?;
    let mut sender = scenario.start("sender")?;

    // scripts/test.sh installs confluent-kafka into a virtual environment and names its Python here.
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/publish_events.py"
    );
    let output = Command::new(&python)
        .args([example, &bootstrap_servers(), &scenario.topics.domain])
        .arg(&events_path)
        .output()?;
    assert!(
        output.status.success(),
        "{python} {example} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let ledger = scenario.endpoint("ledger");
    let arrived = wait::until(
        "every payment event arrived",
        Duration::from_secs(120),
        || ledger.verified() >= payments,
    )
    .await;
    router.check_running()?;
    sender.check_running()?;
    arrived?;
    for request in ledger.receiver.requests() {
        let body: serde_json::Value = serde_json::from_slice(&request.body)?;
        let id = request
            .verification
            .as_ref()
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        assert_eq!(body["eventId"].as_str(), Some(id.as_str()));
        assert!(
            request.headers.contains_key("traceparent"),
            "traceparent was not carried to the webhook"
        );
    }
    remove_folder(&scenario.folder);
    Ok(())
}
