//! Subscriptions kept on the compacted topic, on the real broker: `herald subscriptions apply`
//! converges the topic to a YAML file, the router and the sender follow changes without a
//! restart, secrets never appear in plain text on the topic or in a log, and restarted services
//! rebuild the same table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::Message;

use herald_tests::kafka::{publish, read_topic};
use herald_tests::samples::{ids, synthetic_events as events};
use herald_tests::scenario::{Endpoint, Scenario, remove_folder, subscriptions_yaml};
use herald_tests::wait;

const TIMEOUT: Duration = Duration::from_secs(120);
/// A test key; real keys come from the deployment's secrets.
const KEYS: &str = "test-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// A second test key, for key rotation.
const NEW_KEY: &str = "test-2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const TOPIC_SOURCE: [(&str, &str); 2] = [
    ("HERALD__SUBSCRIPTIONS__SOURCE", "topic"),
    ("HERALD__ENCRYPTION__KEYS", KEYS),
];

/// Writes a subscriptions file for `endpoints` with the event types given by name.
fn write_file(
    scenario: &Scenario,
    name: &str,
    entries: &[(&Endpoint, &str)],
) -> anyhow::Result<std::path::PathBuf> {
    let endpoints: Vec<&Endpoint> = entries.iter().map(|(endpoint, _)| *endpoint).collect();
    let mut yaml = subscriptions_yaml(&endpoints, &BTreeMap::new());
    for (endpoint, types) in entries {
        let declared: Vec<String> = endpoint
            .event_types
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect();
        yaml = yaml.replacen(
            &format!("event_types: [{}]", declared.join(", ")),
            &format!("event_types: [\"{types}\"]"),
            1,
        );
    }
    let path = scenario.folder.join(name);
    std::fs::write(&path, yaml)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_subscriptions_change_without_restart() -> anyhow::Result<()> {
    // Both endpoints start out wanting "placeholder" types; each file below sets the real ones.
    let scenario = Scenario::new(
        "live",
        &[("ledger", &["placeholder"]), ("audit", &["placeholder"])],
    )
    .await?;
    let ledger = scenario.endpoint("ledger");
    let audit = scenario.endpoint("audit");
    let environment = TOPIC_SOURCE;
    let apply = |file: &std::path::Path, dry_run: bool| {
        let file = file.display().to_string();
        let mut arguments = vec!["subscriptions", "apply", file.as_str()];
        if dry_run {
            arguments.push("--dry-run");
        }
        scenario.command(&arguments, &environment)
    };

    // 1. Only the ledger, for payments.
    let first = write_file(&scenario, "first.yaml", &[(ledger, "payment.*")])?;
    let (dry_ok, dry_run) = apply(&first, true)?;
    assert!(dry_ok);
    assert!(dry_run.contains("create  ledger"), "{dry_run}");
    assert!(dry_run.contains("dry run: nothing written"), "{dry_run}");
    let (ok, output) = apply(&first, false)?;
    assert!(ok, "{output}");
    assert!(output.contains("1 to create"), "{output}");
    let (ok, again) = apply(&first, true)?;
    assert!(ok, "{again}");
    assert!(
        again.contains("0 to create, 0 to update, 0 to delete, 1 unchanged"),
        "{again}"
    );

    let router = scenario.start_with("router", &environment)?;
    let sender = scenario.start_with("sender", &environment)?;
    let payments_1 = events("p1", "payment.settled", 20);
    let kyc_1 = events("k1", "kyc.approved", 10);
    publish(&scenario.topics.domain, &payments_1).await?;
    publish(&scenario.topics.domain, &kyc_1).await?;
    wait::until("the ledger got the first payments", TIMEOUT, || {
        ledger.verified() >= 20
    })
    .await?;

    // 2. The ledger moves to KYC events, and the audit endpoint joins for everything.
    let second = write_file(&scenario, "second.yaml", &[(ledger, "kyc.*"), (audit, "*")])?;
    let (ok, output) = apply(&second, false)?;
    assert!(ok, "{output}");
    assert!(output.contains("update  ledger: event_types"), "{output}");
    assert!(output.contains("create  audit"), "{output}");
    wait::until("router and sender applied the change", TIMEOUT, || {
        router.log_contains("subscription created") && sender.log_contains("subscription created")
    })
    .await?;
    let payments_2 = events("p2", "payment.settled", 20);
    let kyc_2 = events("k2", "kyc.approved", 10);
    publish(&scenario.topics.domain, &payments_2).await?;
    publish(&scenario.topics.domain, &kyc_2).await?;
    wait::until("audit and ledger got the second batch", TIMEOUT, || {
        audit.verified() >= 30 && ledger.verified() >= 30
    })
    .await?;

    // 3. The ledger is deleted: a tombstone, and it gets nothing more.
    let third = write_file(&scenario, "third.yaml", &[(audit, "*")])?;
    let (ok, output) = apply(&third, false)?;
    assert!(ok, "{output}");
    assert!(output.contains("delete  ledger"), "{output}");
    wait::until("router and sender deleted the ledger", TIMEOUT, || {
        router.log_contains("subscription deleted") && sender.log_contains("subscription deleted")
    })
    .await?;
    let kyc_3 = events("k3", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_3).await?;
    wait::until("audit got the third batch", TIMEOUT, || {
        audit.verified() >= 35
    })
    .await?;

    // 4. Restarted from nothing, both services rebuild the same table: one subscription.
    let mut router = scenario.restart(router, &environment)?;
    let mut sender = scenario.restart(sender, &environment)?;
    let kyc_4 = events("k4", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_4).await?;
    wait::until("audit got the fourth batch", TIMEOUT, || {
        audit.verified() >= 40
    })
    .await?;
    router.check_table_read(1)?;
    sender.check_table_read(1)?;

    let ledger_expected: BTreeSet<String> =
        ids(&payments_1).into_iter().chain(ids(&kyc_2)).collect();
    assert_eq!(
        ledger.received(),
        ledger_expected,
        "the ledger got exactly what it subscribed to at the time"
    );
    let audit_expected: BTreeSet<String> = [&payments_2, &kyc_2, &kyc_3, &kyc_4]
        .into_iter()
        .flat_map(|batch| ids(batch))
        .collect();
    assert_eq!(audit.received(), audit_expected);

    // The secrets' plain text is nowhere on the topic and in no log line.
    let records = read_topic(&scenario.topics.subscriptions, 4, Duration::from_secs(20))?;
    assert_eq!(records.len(), 4, "create, update and create, delete");
    assert!(
        records
            .last()
            .is_some_and(|record| record.payload().is_none()),
        "a tombstone"
    );
    scenario.assert_secrets_absent(&records, &[ledger.secret.expose(), audit.secret.expose()])?;
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_endpoint_is_disabled_on_the_topic() -> anyhow::Result<()> {
    let scenario =
        Scenario::new("gone-topic", &[("gone", &["payment.*"]), ("audit", &["*"])]).await?;
    let gone = scenario.endpoint("gone");
    let audit = scenario.endpoint("audit");
    gone.receiver.respond_with(http::StatusCode::GONE);
    let environment = TOPIC_SOURCE;
    let file = write_file(&scenario, "both.yaml", &[(gone, "payment.*"), (audit, "*")])?;
    let file_text = file.display().to_string();
    let (ok, output) = scenario.command(&["subscriptions", "apply", &file_text], &environment)?;
    assert!(ok, "{output}");
    let mut router = scenario.start_with("router", &environment)?;
    let mut sender = scenario.start_with("sender", &environment)?;

    publish(&scenario.topics.domain, &events("g1", "payment.settled", 5)).await?;
    wait::until("the router saw the subscription disabled", TIMEOUT, || {
        router.log_contains("subscription updated")
    })
    .await?;
    let refused_before = gone
        .receiver
        .counts()
        .failed
        .load(std::sync::atomic::Ordering::Acquire);
    publish(&scenario.topics.domain, &events("g2", "payment.settled", 5)).await?;
    wait::until("audit got both batches", TIMEOUT, || audit.verified() >= 10).await?;
    router.check_running()?;
    sender.check_running()?;
    assert!(sender.log_contains("enabled set to false on the subscriptions topic"));
    assert_eq!(
        gone.receiver
            .counts()
            .failed
            .load(std::sync::atomic::Ordering::Acquire),
        refused_before,
        "requests reached the endpoint after it was disabled"
    );

    let (ok, listed) =
        scenario.command(&["subscriptions", "list", "--output", "json"], &environment)?;
    assert!(ok, "{listed}");
    let gone_line = listed
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["id"] == "gone")
        .ok_or_else(|| anyhow::anyhow!("gone is not listed:\n{listed}"))?;
    assert_eq!(gone_line["enabled"], false, "{gone_line}");
    assert!(
        gone_line.get("secrets").is_none(),
        "list shows no secrets: {gone_line}"
    );

    // The file still has enabled: true, so applying it again would turn the subscription back on.
    let (_, plan) = scenario.command(
        &["subscriptions", "apply", &file_text, "--dry-run"],
        &environment,
    )?;
    assert!(plan.contains("update  gone: enabled"), "{plan}");
    remove_folder(&scenario.folder);
    Ok(())
}

/// Counts the `v1,` signatures on each request the endpoint received, in arrival order.
fn signature_counts(endpoint: &Endpoint) -> Vec<usize> {
    endpoint
        .receiver
        .requests()
        .iter()
        .map(|request| {
            request.headers["webhook-signature"]
                .to_str()
                .unwrap_or_default()
                .split(' ')
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_signs_with_both_during_the_overlap() -> anyhow::Result<()> {
    let scenario = Scenario::new("rotate", &[("ledger", &["placeholder"])]).await?;
    let ledger = scenario.endpoint("ledger");
    let environment = TOPIC_SOURCE;
    let url = format!("http://{}/webhooks/ledger", ledger.receiver.address());
    let secret = ledger.secret.expose();
    let create = [
        "subscriptions",
        "create",
        "--id",
        "ledger",
        "--url",
        url.as_str(),
        "--event-type",
        "payment.*",
        "--secret",
        secret.as_str(),
    ];
    let (ok, output) = scenario.command(&create, &environment)?;
    assert!(ok, "{output}");
    assert!(output.contains("created ledger"), "{output}");
    assert!(
        !output.contains("secret:"),
        "a given secret is not printed: {output}"
    );
    let (again, _) = scenario.command(&create, &environment)?;
    assert!(!again, "creating an existing subscription must fail");

    let mut router = scenario.start_with("router", &environment)?;
    let mut sender = scenario.start_with("sender", &environment)?;
    publish(&scenario.topics.domain, &events("r1", "payment.settled", 5)).await?;
    wait::until("the first batch arrived", TIMEOUT, || {
        ledger.verified() >= 5
    })
    .await?;
    assert!(signature_counts(ledger).iter().all(|count| *count == 1));

    // Rotation with an overlap: the new secret and the old one both sign.
    let (ok, output) = scenario.command(
        &[
            "subscriptions",
            "rotate-secret",
            "ledger",
            "--overlap",
            "1h",
        ],
        &environment,
    )?;
    assert!(ok, "{output}");
    assert!(output.contains("secret: whsec_"), "{output}");
    wait::until("the sender took the new secret", TIMEOUT, || {
        scenario.log_count("sender.log", "subscription updated") >= 1
    })
    .await?;
    publish(&scenario.topics.domain, &events("r2", "payment.settled", 5)).await?;
    wait::until(
        "the second batch arrived, verified with the old secret",
        TIMEOUT,
        || ledger.verified() >= 10,
    )
    .await?;
    assert_eq!(signature_counts(ledger)[5..], [2, 2, 2, 2, 2]);
    let (_, listed) =
        scenario.command(&["subscriptions", "list", "--output", "json"], &environment)?;
    assert!(
        listed.contains("\"retiring_secrets\":[{\"until\""),
        "{listed}"
    );
    assert!(!listed.contains("whsec_"), "list shows a secret: {listed}");

    // Rotation without an overlap: only the newest secret signs, which this receiver lacks.
    let (ok, _) = scenario.command(
        &[
            "subscriptions",
            "rotate-secret",
            "ledger",
            "--overlap",
            "0s",
        ],
        &environment,
    )?;
    assert!(ok);
    wait::until("the sender took the newest secret", TIMEOUT, || {
        scenario.log_count("sender.log", "subscription updated") >= 2
    })
    .await?;
    publish(&scenario.topics.domain, &events("r3", "payment.settled", 3)).await?;
    wait::until(
        "requests signed with the newest secret only arrived",
        TIMEOUT,
        || {
            ledger
                .receiver
                .counts()
                .invalid
                .load(std::sync::atomic::Ordering::Acquire)
                >= 3
        },
    )
    .await?;
    assert!(
        signature_counts(ledger)[10..]
            .iter()
            .all(|count| *count == 1)
    );

    // Disable and enable from the command line.
    let (ok, output) = scenario.command(&["subscriptions", "disable", "ledger"], &environment)?;
    assert!(ok, "{output}");
    assert!(output.contains("disabled ledger"), "{output}");
    let (_, listed) =
        scenario.command(&["subscriptions", "list", "--output", "json"], &environment)?;
    assert!(listed.contains("\"enabled\":false"), "{listed}");
    let (ok, output) = scenario.command(&["subscriptions", "enable", "ledger"], &environment)?;
    assert!(ok, "{output}");
    assert!(output.contains("enabled ledger"), "{output}");
    router.check_running()?;
    sender.check_running()?;
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_updates_shows_and_tests_a_subscription() -> anyhow::Result<()> {
    let scenario = Scenario::new("cli-update", &[("ledger", &["placeholder"])]).await?;
    let ledger = scenario.endpoint("ledger");
    let environment = TOPIC_SOURCE;
    let url = format!("http://{}/webhooks/ledger", ledger.receiver.address());
    let secret = ledger.secret.expose();
    let (ok, output) = scenario.command(
        &[
            "subscriptions",
            "create",
            "--id",
            "ledger",
            "--url",
            &url,
            "--event-type",
            "payment.*",
            "--secret",
            &secret,
        ],
        &environment,
    )?;
    assert!(ok, "{output}");

    let patch = r#"{"max_concurrency": 2, "headers": {"X-Tenant": "acme-bank"}}"#;
    let update = [
        "subscriptions",
        "update",
        "ledger",
        "--event-type",
        "kyc.*",
        "--patch",
        patch,
    ];
    let (ok, output) = scenario.command(&update, &environment)?;
    assert!(ok, "{output}");
    assert!(
        output.contains("updated ledger: event_types, headers, max_concurrency"),
        "{output}"
    );
    let (ok, output) = scenario.command(&update, &environment)?;
    assert!(ok, "{output}");
    assert!(output.contains("ledger is unchanged"), "{output}");
    let (ok, output) = scenario.command(
        &[
            "subscriptions",
            "update",
            "ledger",
            "--patch",
            r#"{"max_concurrency": 0}"#,
        ],
        &environment,
    )?;
    assert!(!ok, "a limit of zero must be refused");
    assert!(
        output.contains("max_concurrency: must be at least 1"),
        "{output}"
    );

    let (ok, shown) = scenario.command(
        &["subscriptions", "get", "ledger", "--output", "json"],
        &environment,
    )?;
    assert!(ok, "{shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown)?;
    assert_eq!(shown["event_types"], serde_json::json!(["kyc.*"]));
    assert_eq!(shown["max_concurrency"], 2);
    assert!(shown.get("secrets").is_none(), "{shown}");

    // A test event reaches the endpoint whatever its event types, with its extra header.
    let mut sender = scenario.start_with("sender", &environment)?;
    let (ok, output) = scenario.command(&["subscriptions", "test", "ledger"], &environment)?;
    assert!(ok, "{output}");
    let event_id = output
        .split_whitespace()
        .find(|word| word.starts_with("evt_test_"))
        .unwrap_or_default()
        .to_owned();
    wait::until("the test event arrived", TIMEOUT, || {
        ledger.received().contains(&event_id)
    })
    .await?;
    let requests = ledger.receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].headers["x-tenant"], "acme-bank");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body)?;
    assert_eq!(body["eventType"], "herald.test");
    sender.check_running()?;

    // A new key goes first: reseal moves every secret to it, and then the old key can go.
    let both_keys = format!("{NEW_KEY},{KEYS}");
    let rotated_keys = [("HERALD__ENCRYPTION__KEYS", both_keys.as_str())];
    let (ok, plan) = scenario.command(&["subscriptions", "reseal", "--dry-run"], &rotated_keys)?;
    assert!(ok, "{plan}");
    assert!(plan.contains("reseal  ledger"), "{plan}");
    let (ok, output) = scenario.command(&["subscriptions", "reseal"], &rotated_keys)?;
    assert!(ok, "{output}");
    let (ok, plan) = scenario.command(&["subscriptions", "reseal", "--dry-run"], &rotated_keys)?;
    assert!(ok, "{plan}");
    assert!(plan.contains("0 to reseal"), "{plan}");
    let (ok, shown) = scenario.command(
        &["subscriptions", "get", "ledger", "--output", "json"],
        &[("HERALD__ENCRYPTION__KEYS", NEW_KEY)],
    )?;
    assert!(ok, "only the new key opens the resealed secrets: {shown}");
    assert!(shown.contains("\"updated_at\""), "{shown}");
    remove_folder(&scenario.folder);
    Ok(())
}
