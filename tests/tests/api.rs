//! The admin HTTP API on the real broker. Subscriptions created and changed through it reach the
//! router and the sender without a restart. Bad requests and tokens are refused with the field
//! or the reason named. Dead letters are listed and redriven, and every response matches the
//! OpenAPI document.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::Message;
use serde_json::{Value, json};

use herald_tests::api::{AdminApi, READ_TOKEN};
use herald_tests::kafka::{publish, read_topic};
use herald_tests::samples::{ids, synthetic_events as events};
use herald_tests::scenario::{Endpoint, Scenario, received, remove_folder};
use herald_tests::wait;
use herald_verify::receiver::{Receiver, ReceiverOptions};

const TIMEOUT: Duration = Duration::from_secs(120);
/// A test key; real keys come from the deployment's secrets.
const KEYS: &str = "test-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TOPIC_SOURCE: [(&str, &str); 2] = [
    ("HERALD__SUBSCRIPTIONS__SOURCE", "topic"),
    ("HERALD__ENCRYPTION__KEYS", KEYS),
];

fn url_of(receiver: &Receiver, name: &str) -> String {
    format!("http://{}/webhooks/{name}", receiver.address())
}

fn new_subscription(endpoint: &Endpoint, event_types: &[&str]) -> Value {
    json!({
        "id": endpoint.name,
        "url": url_of(&endpoint.receiver, &endpoint.name),
        "event_types": event_types,
        "secret": endpoint.secret.expose(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_reach_router_and_sender() -> anyhow::Result<()> {
    let scenario = Scenario::new(
        "api-live",
        &[("ledger", &["placeholder"]), ("audit", &["placeholder"])],
    )
    .await?;
    let ledger = scenario.endpoint("ledger");
    let audit = scenario.endpoint("audit");
    // A second endpoint with the ledger's secret, for moving the ledger's URL.
    let moved = Receiver::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        ReceiverOptions {
            name: "ledger-moved".into(),
            verifier: herald_verify::Verifier::new(vec![ledger.secret.clone()])?,
            keep_requests: true,
            log_file: None,
            hook: None,
        },
    )?;
    let mut api = AdminApi::start(&scenario, &TOPIC_SOURCE).await?;
    let created = api
        .admin(
            "POST",
            "/v1/subscriptions",
            Some(new_subscription(ledger, &["payment.*"])),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(
        created.body.get("secret").is_none(),
        "a given secret is not returned: {:?}",
        created.body
    );
    let router = scenario.start_with("router", &TOPIC_SOURCE)?;
    let sender = scenario.start_with("sender", &TOPIC_SOURCE)?;

    // 1. Created through the API, the ledger gets the next payments and nothing else.
    let payments_1 = events("p1", "payment.settled", 10);
    let kyc_1 = events("k1", "kyc.approved", 5);
    publish(&scenario.topics.domain, &payments_1).await?;
    publish(&scenario.topics.domain, &kyc_1).await?;
    wait::until("the ledger got the first payments", TIMEOUT, || {
        ledger.verified() >= 10
    })
    .await?;

    // Each change below waits until router and sender have logged it, as an operator would
    // see it, before publishing what it affects.
    let mut changes_seen = 0;
    let mut expect_change = async |what: &str| -> anyhow::Result<()> {
        changes_seen += 1;
        let wanted = changes_seen;
        wait::until(what, TIMEOUT, || {
            scenario.log_count("router.log", "subscription updated") >= wanted
                && scenario.log_count("sender.log", "subscription updated") >= wanted
        })
        .await
    };

    // 2. Its event types change to KYC, and the audit endpoint joins for everything.
    let patched = api
        .admin(
            "PATCH",
            "/v1/subscriptions/ledger",
            Some(json!({"event_types": ["kyc.*"]})),
        )
        .await?;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["event_types"], json!(["kyc.*"]));
    let audit_created = api
        .admin(
            "POST",
            "/v1/subscriptions",
            Some(new_subscription(audit, &["*"])),
        )
        .await?;
    assert_eq!(audit_created.status, 201, "{:?}", audit_created.body);
    expect_change("router and sender applied the new event types").await?;
    wait::until("router and sender know the audit endpoint", TIMEOUT, || {
        router.log_contains("subscription created") && sender.log_contains("subscription created")
    })
    .await?;
    let payments_2 = events("p2", "payment.settled", 10);
    let kyc_2 = events("k2", "kyc.approved", 5);
    publish(&scenario.topics.domain, &payments_2).await?;
    publish(&scenario.topics.domain, &kyc_2).await?;
    wait::until("audit and ledger got the second batch", TIMEOUT, || {
        audit.verified() >= 15 && ledger.verified() >= 15
    })
    .await?;

    // 3. A payload filter: only two of the next KYC events match.
    let filtered = api
        .admin(
            "PATCH",
            "/v1/subscriptions/ledger",
            Some(json!({"filter": [{"path": "/data/paymentId", "in": ["PAY_1", "PAY_3"]}]})),
        )
        .await?;
    assert_eq!(filtered.status, 200, "{:?}", filtered.body);
    expect_change("router and sender applied the filter").await?;
    let kyc_3 = events("k3", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_3).await?;
    wait::until("audit got the third batch", TIMEOUT, || {
        audit.verified() >= 20
    })
    .await?;
    wait::until("the ledger got the filtered events", TIMEOUT, || {
        ledger.verified() >= 17
    })
    .await?;

    // 4. A new URL, and the filter removed with null: the moved endpoint gets the next batch.
    let moved_to = api
        .admin(
            "PATCH",
            "/v1/subscriptions/ledger",
            Some(json!({"url": url_of(&moved, "ledger"), "filter": null})),
        )
        .await?;
    assert_eq!(moved_to.status, 200, "{:?}", moved_to.body);
    assert!(moved_to.body.get("filter").is_none(), "{:?}", moved_to.body);
    expect_change("router and sender applied the new URL").await?;
    let kyc_4 = events("k4", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_4).await?;
    wait::until("the moved endpoint got the fourth batch", TIMEOUT, || {
        received(&moved).len() >= 5
    })
    .await?;

    // 5. Disabled, the ledger gets nothing; the audit endpoint shows the batch went through.
    let disabled = api
        .admin("POST", "/v1/subscriptions/ledger/disable", None)
        .await?;
    assert_eq!(disabled.status, 200, "{:?}", disabled.body);
    assert_eq!(disabled.body["enabled"], false);
    expect_change("router and sender disabled the ledger").await?;
    let kyc_5 = events("k5", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_5).await?;
    wait::until("audit got the fifth batch", TIMEOUT, || {
        audit.verified() >= 30
    })
    .await?;

    // 6. Enabled again, a test event reaches it whatever its event types.
    let enabled = api
        .admin("POST", "/v1/subscriptions/ledger/enable", None)
        .await?;
    assert_eq!(enabled.status, 200, "{:?}", enabled.body);
    expect_change("router and sender enabled the ledger").await?;
    let test_event = api
        .admin("POST", "/v1/subscriptions/ledger/test", None)
        .await?;
    assert_eq!(test_event.status, 202, "{:?}", test_event.body);
    let test_id = test_event.body["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait::until("the test event arrived", TIMEOUT, || {
        received(&moved).contains(&test_id)
    })
    .await?;

    // 7. Deleted: a tombstone, and nothing more arrives.
    let deleted = api
        .admin("DELETE", "/v1/subscriptions/ledger", None)
        .await?;
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    let gone = api.admin("GET", "/v1/subscriptions/ledger", None).await?;
    assert_eq!(gone.status, 404, "{:?}", gone.body);
    wait::until("router and sender deleted the ledger", TIMEOUT, || {
        router.log_contains("subscription deleted") && sender.log_contains("subscription deleted")
    })
    .await?;
    let kyc_6 = events("k6", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_6).await?;
    wait::until("audit got the sixth batch", TIMEOUT, || {
        audit.verified() >= 35
    })
    .await?;

    // 8. Restarted from nothing, router and sender rebuild the same table: the audit endpoint.
    let mut router = scenario.restart(router, &TOPIC_SOURCE)?;
    let mut sender = scenario.restart(sender, &TOPIC_SOURCE)?;
    let kyc_7 = events("k7", "kyc.approved", 5);
    publish(&scenario.topics.domain, &kyc_7).await?;
    wait::until("audit got the seventh batch", TIMEOUT, || {
        audit.verified() >= 40
    })
    .await?;
    router.check_table_read(1)?;
    sender.check_table_read(1)?;

    let kyc_3_matching: BTreeSet<String> = ["evt_k3_00001", "evt_k3_00003"]
        .iter()
        .map(|id| (*id).to_owned())
        .collect();
    let ledger_expected: BTreeSet<String> = ids(&payments_1)
        .into_iter()
        .chain(ids(&kyc_2))
        .chain(kyc_3_matching)
        .collect();
    assert_eq!(ledger.received(), ledger_expected);
    let moved_expected: BTreeSet<String> =
        ids(&kyc_4).into_iter().chain([test_id.clone()]).collect();
    assert_eq!(received(&moved), moved_expected);
    let audit_expected: BTreeSet<String> = [&payments_2, &kyc_2, &kyc_3, &kyc_4, &kyc_5]
        .into_iter()
        .chain([&kyc_6, &kyc_7])
        .flat_map(|batch| ids(batch))
        .collect();
    assert_eq!(audit.received(), audit_expected);

    // A rotated secret is returned once, and neither it nor the given ones are on the topic or
    // in any log.
    let rotated = api
        .admin(
            "POST",
            "/v1/subscriptions/audit/rotate-secret",
            Some(json!({"overlap": "1h"})),
        )
        .await?;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let new_secret = rotated.body["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(new_secret.starts_with("whsec_"), "{:?}", rotated.body);
    assert!(
        rotated.body["subscription"]["retiring_secrets"][0]["until"].is_string(),
        "{:?}",
        rotated.body
    );
    api.process.check_running()?;
    let records = read_topic(&scenario.topics.subscriptions, 10, Duration::from_secs(20))?;
    assert!(
        records
            .iter()
            .any(|record| record.key() == Some(b"ledger".as_slice()) && record.payload().is_none()),
        "the ledger's tombstone is on the topic"
    );
    scenario.assert_secrets_absent(
        &records,
        &[
            ledger.secret.expose(),
            audit.secret.expose(),
            new_secret.clone(),
        ],
    )?;
    let listed = api
        .call("GET", "/v1/subscriptions", Some(READ_TOKEN), None)
        .await?;
    assert!(
        !listed
            .body
            .to_string()
            .contains(new_secret.trim_start_matches("whsec_")),
        "a list shows no secret"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_requests_and_tokens() -> anyhow::Result<()> {
    let scenario = Scenario::new("api-refuse", &[("ledger", &["payment.*"])]).await?;
    let mut api = AdminApi::start(&scenario, &TOPIC_SOURCE).await?;
    let ledger = scenario.endpoint("ledger");
    let valid = new_subscription(ledger, &["payment.*"]);
    let with = |name: &str, value: Value| {
        let mut body = valid.clone();
        body[name] = value;
        body
    };
    let without_url = {
        let mut body = valid.clone();
        body.as_object_mut().map(|object| object.remove("url"));
        body
    };
    let cases = [
        ("missing URL", without_url, "url"),
        (
            "credentials in the URL",
            with("url", json!("https://user:password@hooks.example.com/in")),
            "url",
        ),
        ("unknown field", with("colour", json!("blue")), "colour"),
        (
            "a filter that does not parse",
            with("filter", json!([{"path": "data/amount", "gt": "ten"}])),
            "filter[0].path",
        ),
        (
            "a limit of zero",
            with("rate_limit_per_second", json!(0)),
            "rate_limit_per_second",
        ),
        (
            "a field of the wrong type",
            with("max_concurrency", json!("many")),
            "max_concurrency",
        ),
        (
            "a header that would replace the signature",
            with("headers", json!({"webhook-signature": "v1,forged"})),
            "headers.webhook-signature",
        ),
    ];
    for (what, body, path) in cases {
        let response = api.admin("POST", "/v1/subscriptions", Some(body)).await?;
        assert_eq!(response.status, 400, "{what}: {:?}", response.body);
        assert_eq!(response.body["error"]["code"], "invalid_request", "{what}");
        assert!(
            response.field_paths().iter().any(|field| field == path),
            "{what}: expected {path} in {:?}",
            response.body
        );
    }
    let not_json = api
        .send(
            "POST",
            "/v1/subscriptions",
            Some(herald_tests::api::ADMIN_TOKEN),
            b"{url".to_vec(),
        )
        .await?;
    assert_eq!(not_json.status, 400, "{:?}", not_json.body);

    // Tokens: none or unknown is 401, a read token asking for a change is 403.
    let no_token = api.call("GET", "/v1/subscriptions", None, None).await?;
    assert_eq!(no_token.status, 401, "{:?}", no_token.body);
    let unknown = api
        .call(
            "GET",
            "/v1/subscriptions",
            Some("not-a-configured-token-at-all"),
            None,
        )
        .await?;
    assert_eq!(unknown.status, 401, "{:?}", unknown.body);
    let read_change = api
        .call("POST", "/v1/subscriptions", Some(READ_TOKEN), Some(&valid))
        .await?;
    assert_eq!(read_change.status, 403, "{:?}", read_change.body);
    let read_delete = api
        .call("DELETE", "/v1/subscriptions/ledger", Some(READ_TOKEN), None)
        .await?;
    assert_eq!(read_delete.status, 403, "{:?}", read_delete.body);
    let read_list = api
        .call("GET", "/v1/subscriptions", Some(READ_TOKEN), None)
        .await?;
    assert_eq!(read_list.status, 200, "{:?}", read_list.body);

    // Nothing above was written; a valid create works once, then conflicts.
    assert_eq!(read_list.body["data"], json!([]));
    let created = api
        .admin("POST", "/v1/subscriptions", Some(valid.clone()))
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let again = api.admin("POST", "/v1/subscriptions", Some(valid)).await?;
    assert_eq!(again.status, 409, "{:?}", again.body);
    let fixed = api
        .admin(
            "PATCH",
            "/v1/subscriptions/ledger",
            Some(json!({"secrets": ["whsec_x"], "max_concurrency": 0})),
        )
        .await?;
    assert_eq!(fixed.status, 400, "{:?}", fixed.body);
    assert_eq!(fixed.field_paths(), ["secrets"]);
    let zero = api
        .admin(
            "PATCH",
            "/v1/subscriptions/ledger",
            Some(json!({"max_concurrency": 0})),
        )
        .await?;
    assert_eq!(zero.field_paths(), ["max_concurrency"], "{:?}", zero.body);
    let missing = api.admin("GET", "/v1/subscriptions/nobody", None).await?;
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    let oversized = api
        .send(
            "POST",
            "/v1/subscriptions",
            Some(herald_tests::api::ADMIN_TOKEN),
            vec![b' '; 300 * 1024],
        )
        .await?;
    assert_eq!(oversized.status, 413, "{:?}", oversized.body);
    api.process.check_running()?;
    assert!(
        !api.process.log_contains(herald_tests::api::ADMIN_TOKEN)
            && !api.process.log_contains(READ_TOKEN),
        "a token is in the log"
    );
    remove_folder(&scenario.folder);
    Ok(())
}

/// Fails every request, fills the dead-letter topic, lists and redrives it through the API, then
/// runs the OpenAPI check against the same API, with dead letters to list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_dead_letters_and_openapi_document() -> anyhow::Result<()> {
    let scenario = Scenario::new("api-dlq", &[("broken", &["placeholder"])]).await?;
    let broken = scenario.endpoint("broken");
    broken
        .receiver
        .respond_with(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut api = AdminApi::start(&scenario, &TOPIC_SOURCE).await?;
    let created = api
        .admin(
            "POST",
            "/v1/subscriptions",
            Some(new_subscription(broken, &["payment.*"])),
        )
        .await?;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let mut router = scenario.start_with("router", &TOPIC_SOURCE)?;
    let mut sender = scenario.start_with("sender", &TOPIC_SOURCE)?;
    let payments = events("d1", "payment.settled", 4);
    publish(&scenario.topics.domain, &payments).await?;

    // Four attempts each (the first and three tiers), then the dead-letter topic.
    let mut listed = Value::Null;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let response = api
            .call(
                "GET",
                "/v1/dead-letters?subscription_id=broken&limit=3",
                Some(READ_TOKEN),
                None,
            )
            .await?;
        assert_eq!(response.status, 200, "{:?}", response.body);
        if response.body["next_after"].is_string() {
            listed = response.body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(3), "{listed}");
    assert_eq!(listed["data"][0]["reason"], "retries_exhausted");
    let cursor = listed["next_after"].as_str().unwrap_or_default();
    let rest = api
        .call(
            "GET",
            &format!("/v1/dead-letters?subscription_id=broken&after={cursor}"),
            Some(READ_TOKEN),
            None,
        )
        .await?;
    assert_eq!(
        rest.body["data"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        rest.body
    );

    // A redrive without a filter is rejected, because it would send every dead letter back.
    let unfiltered = api
        .admin("POST", "/v1/dead-letters/redrive", Some(json!({})))
        .await?;
    assert_eq!(unfiltered.status, 400, "{:?}", unfiltered.body);

    // Redrive, with the endpoint repaired: every payment arrives.
    let dry = api
        .admin(
            "POST",
            "/v1/dead-letters/redrive",
            Some(json!({"subscription_id": "broken", "dry_run": true})),
        )
        .await?;
    assert_eq!(dry.body, json!({"dry_run": true, "count": 4}));
    broken.receiver.respond_with(http::StatusCode::OK);
    let redriven = api
        .admin(
            "POST",
            "/v1/dead-letters/redrive",
            Some(json!({"subscription_id": "broken"})),
        )
        .await?;
    assert_eq!(redriven.body, json!({"dry_run": false, "count": 4}));
    wait::until("the redriven payments arrived", TIMEOUT, || {
        broken.verified() >= 4
    })
    .await?;
    assert_eq!(broken.received(), ids(&payments));

    // The OpenAPI document is valid, and every operation's responses match it.
    let python = std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/api/check_openapi.py");
    let document = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/admin-api.openapi.json"
    );
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(document)
        .env("HERALD_API", &api.base)
        .env("HERALD_ADMIN_TOKEN", herald_tests::api::ADMIN_TOKEN)
        .env("HERALD_READ_TOKEN", READ_TOKEN)
        .env(
            "HERALD_RECEIVER_URL",
            url_of(&broken.receiver, "openapi-check"),
        )
        .output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "the OpenAPI check failed:\n{report}"
    );
    router.check_running()?;
    sender.check_running()?;
    api.process.check_running()?;
    remove_folder(&scenario.folder);
    Ok(())
}
