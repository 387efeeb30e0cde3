//! Metrics, traces and health on the real broker. After a short run, the router's and the
//! sender's Prometheus endpoints report what happened: events by outcome, deliveries, fan-out,
//! attempts by outcome and status class, attempt time, latency, dead letters and subscriptions.
//! `/readyz` and `/healthz` respond. With an OTLP collector on loopback, one trace follows an
//! event from its publisher's `traceparent` through router and sender to the webhook request.

use std::time::Duration;

use http::StatusCode;

use herald_tests::http::{get, sample_sum};
use herald_tests::kafka::publish;
use herald_tests::samples::{SampleRecord, synthetic_payments};
use herald_tests::scenario::{Scenario, remove_folder};
use herald_tests::wait;

const TIMEOUT: Duration = Duration::from_secs(120);
const LISTENING: &str = "metrics and health endpoints listening";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_export_metrics_and_health() -> anyhow::Result<()> {
    const EVENTS: usize = 20;
    let scenario = Scenario::new(
        "telemetry",
        &[
            ("ledger", &["payment.*"]),
            ("audit", &["*"]),
            ("gone", &["payment.*"]),
        ],
    )
    .await?;
    let ledger = scenario.endpoint("ledger");
    let audit = scenario.endpoint("audit");
    scenario
        .endpoint("gone")
        .receiver
        .respond_with(StatusCode::GONE);
    let environment = [("HERALD__TELEMETRY__LISTEN", "127.0.0.1:0")];
    let mut router = scenario.start_with("router", &environment)?;
    let mut sender = scenario.start_with("sender", &environment)?;
    wait::until("both services listen for scrapes", TIMEOUT, || {
        router.log_contains(LISTENING) && sender.log_contains(LISTENING)
    })
    .await?;
    let router_address = router
        .logged_address(LISTENING)
        .ok_or_else(|| anyhow::anyhow!("no address in the router's log"))?;
    let sender_address = sender
        .logged_address(LISTENING)
        .ok_or_else(|| anyhow::anyhow!("no address in the sender's log"))?;

    let mut records = synthetic_payments("tm", EVENTS);
    records.push(SampleRecord {
        key: "CUST_0".into(),
        value: None,
        expect_delivery: false,
        why: "a record without a value".into(),
    });
    publish(&scenario.topics.domain, &records).await?;
    wait::until("every payment reached ledger and audit", TIMEOUT, || {
        ledger.verified() >= EVENTS as u64 && audit.verified() >= EVENTS as u64
    })
    .await?;

    for address in [&router_address, &sender_address] {
        assert_eq!(get(address, "/healthz").await?.0, 200);
        let (status, body) = get(address, "/readyz").await?;
        assert_eq!(status, 200, "{body}");
    }

    // Counters are read until they settle: the sender counts an attempt after its outcome is
    // written, a moment after the receiver has it.
    let delivered_all = || async {
        let (_, metrics) = get(&sender_address, "/metrics").await?;
        let delivered = sample_sum(
            &metrics,
            "herald_sender_attempts_total",
            &[("outcome", "delivered"), ("status_class", "2xx")],
        );
        let gone = sample_sum(
            &metrics,
            "herald_sender_dead_letters_total",
            &[("reason", "gone")],
        );
        anyhow::Ok((delivered >= 2.0 * EVENTS as f64 && gone >= 1.0, metrics))
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let sender_metrics = loop {
        let (settled, metrics) = delivered_all().await?;
        if settled || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, router_metrics) = get(&router_address, "/metrics").await?;

    let routed = sample_sum(
        &router_metrics,
        "herald_router_events_total",
        &[("outcome", "routed")],
    );
    assert_eq!(routed, EVENTS as f64, "{router_metrics}");
    let rejected = sample_sum(
        &router_metrics,
        "herald_router_events_total",
        &[("outcome", "rejected"), ("reason", "no_value")],
    );
    assert_eq!(rejected, 1.0, "{router_metrics}");
    assert_eq!(
        sample_sum(&router_metrics, "herald_router_deliveries_total", &[]),
        3.0 * EVENTS as f64
    );
    assert_eq!(
        sample_sum(&router_metrics, "herald_router_fanout_count", &[]),
        EVENTS as f64
    );
    assert_eq!(
        sample_sum(&router_metrics, "herald_subscriptions", &[]),
        3.0
    );

    assert_eq!(
        sample_sum(
            &sender_metrics,
            "herald_sender_attempts_total",
            &[("outcome", "delivered"), ("status_class", "2xx")]
        ),
        2.0 * EVENTS as f64,
        "{sender_metrics}"
    );
    assert!(
        sample_sum(
            &sender_metrics,
            "herald_sender_attempts_total",
            &[("outcome", "disabled"), ("status_class", "4xx")]
        ) >= 1.0,
        "{sender_metrics}"
    );
    assert!(
        sample_sum(
            &sender_metrics,
            "herald_sender_attempt_duration_seconds_count",
            &[]
        ) >= 2.0 * EVENTS as f64
    );
    assert_eq!(
        sample_sum(
            &sender_metrics,
            "herald_sender_delivery_latency_seconds_count",
            &[]
        ),
        2.0 * EVENTS as f64
    );
    assert!(sender_metrics.contains("# TYPE herald_sender_attempt_duration_seconds histogram"));
    assert!(
        sample_sum(
            &sender_metrics,
            "http_client_request_duration_seconds_count",
            &[("http_request_method", "POST")]
        ) >= 2.0 * EVENTS as f64,
        "{sender_metrics}"
    );
    assert!(
        sample_sum(
            &sender_metrics,
            "http_client_request_duration_seconds_count",
            &[("http_response_status_code", "410"), ("error_type", "410")]
        ) >= 1.0,
        "a 4xx response carries error.type: {sender_metrics}"
    );
    assert!(
        router_metrics.contains("herald_in_flight{"),
        "{router_metrics}"
    );
    assert!(
        !sender_metrics.contains("subscription_id="),
        "subscription ids are off by default"
    );

    // librdkafka reports lag every 5 s; once reported, the router has read everything.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let lag_metrics = loop {
        let (_, metrics) = get(&router_address, "/metrics").await?;
        let reported = [
            "herald_consumer_lag{",
            "herald_kafka_broker_rtt_seconds{",
            "herald_kafka_producer_queue{",
        ]
        .iter()
        .all(|family| metrics.contains(family));
        if reported || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let domain_lag = sample_sum(
        &lag_metrics,
        "herald_consumer_lag",
        &[("messaging_destination_name", &scenario.topics.domain)],
    );
    assert!(
        lag_metrics.contains("herald_consumer_lag{"),
        "no lag reported: {lag_metrics}"
    );
    assert_eq!(domain_lag, 0.0, "{lag_metrics}");
    assert!(
        sample_sum(&lag_metrics, "herald_kafka_broker_rtt_seconds", &[]) > 0.0,
        "broker round trips from librdkafka's statistics: {lag_metrics}"
    );
    assert!(
        lag_metrics.contains("herald_kafka_producer_queue{client=\"producer\""),
        "{lag_metrics}"
    );
    check_dashboards(&format!("{lag_metrics}{sender_metrics}"))?;
    router.check_running()?;
    sender.check_running()?;
    remove_folder(&scenario.folder);
    Ok(())
}

/// Checks that the dashboards and alert rules in `deploy/dashboards/` parse and query only
/// metrics that the services export, as `exported` (a scrape of both) lists them.
fn check_dashboards(exported: &str) -> anyhow::Result<()> {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/dashboards");
    let families: std::collections::BTreeSet<&str> = exported
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("json") => {
                let dashboard: serde_json::Value = serde_json::from_str(&text)?;
                let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
                anyhow::ensure!(!panels.is_empty(), "{} has no panels", path.display());
                for panel in panels {
                    for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                        queries.push(target["expr"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
            Some("yaml") => {
                // Each rule's expression is on one `expr:` line.
                queries.extend(
                    text.lines()
                        .filter_map(|line| line.trim().strip_prefix("expr:"))
                        .map(str::to_owned),
                );
            }
            _ => {}
        }
    }
    anyhow::ensure!(queries.len() >= 10, "too few queries found: {queries:?}");
    for query in &queries {
        for word in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("herald_") {
                continue;
            }
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            anyhow::ensure!(
                families.contains(family),
                "{query} uses {word}, which Herald does not export; exported: {families:?}"
            );
        }
    }
    Ok(())
}

/// The bodies an OTLP/HTTP collector on loopback received, by path.
type Collected = std::sync::Arc<std::sync::Mutex<Vec<(String, bytes::Bytes)>>>;

/// Starts a stand-in OTLP/HTTP collector that keeps every request body and responds with 200.
async fn start_collector() -> anyhow::Result<(std::net::SocketAddr, Collected)> {
    use http_body_util::BodyExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let received: Collected = Default::default();
    let stored = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stored = std::sync::Arc::clone(&stored);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let stored = std::sync::Arc::clone(&stored);
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|collected| collected.to_bytes())
                                .unwrap_or_default();
                            if let Ok(mut stored) = stored.lock() {
                                stored.push((path, body));
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((address, received))
}

/// Returns the attribute keys of every data point of an OTLP metric.
fn attribute_keys(
    metric: &opentelemetry_proto::tonic::metrics::v1::Metric,
) -> std::collections::BTreeSet<String> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;

    let attributes: Vec<&opentelemetry_proto::tonic::common::v1::KeyValue> = match &metric.data {
        Some(Data::Sum(sum)) => sum
            .data_points
            .iter()
            .flat_map(|point| &point.attributes)
            .collect(),
        Some(Data::Gauge(gauge)) => gauge
            .data_points
            .iter()
            .flat_map(|point| &point.attributes)
            .collect(),
        Some(Data::Histogram(histogram)) => histogram
            .data_points
            .iter()
            .flat_map(|point| &point.attributes)
            .collect(),
        _ => Vec::new(),
    };
    attributes
        .into_iter()
        .map(|attribute| attribute.key.clone())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_event_to_its_endpoint() -> anyhow::Result<()> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
    const PUBLISHER_SPAN: &str = "eee19b7ec3c1b174";
    let scenario = Scenario::new("trace", &[("ledger", &["payment.*"])]).await?;
    let ledger = scenario.endpoint("ledger");
    let (collector, received) = start_collector().await?;
    let endpoint = format!("http://{collector}");
    let environment = [
        ("HERALD__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("HERALD__TELEMETRY__EXPORT_INTERVAL_MS", "500"),
        // The sender logs each delivery at debug level, inside the span that names its trace.
        ("RUST_LOG", "info,herald_sender=debug"),
    ];
    let router = scenario.start_with("router", &environment)?;
    let sender = scenario.start_with("sender", &environment)?;
    let event = serde_json::json!({
        "eventId": "evt_traced_1",
        "eventType": "payment.settled",
        "data": {"amount": "10.00"},
    });
    let traceparent = format!("00-{TRACE_ID}-{PUBLISHER_SPAN}-01");
    herald_tests::kafka::publish_with_headers(
        &scenario.topics.domain,
        "CUST_1",
        event.to_string().as_bytes(),
        &[("traceparent", traceparent.as_str())],
    )
    .await?;
    wait::until("the traced event arrived", TIMEOUT, || {
        ledger.verified() >= 1
    })
    .await?;
    let request = ledger.receiver.requests().remove(0);
    let sent_traceparent = request.headers["traceparent"].to_str()?.to_owned();
    let parts: Vec<&str> = sent_traceparent.split('-').collect();
    assert_eq!(
        parts[1], TRACE_ID,
        "the webhook continues the publisher's trace"
    );
    let sender_span_in_header = parts[2].to_owned();

    wait::until(
        "the sender logged the delivery with its trace id",
        TIMEOUT,
        || sender.log_contains(TRACE_ID),
    )
    .await?;

    // Stopping flushes the spans still batched.
    let mut router = router;
    let mut sender = sender;
    assert!(router.terminate(Duration::from_secs(30))?);
    assert!(sender.terminate(Duration::from_secs(30))?);

    let bodies = received
        .lock()
        .map(|stored| stored.clone())
        .unwrap_or_default();
    let mut spans = Vec::new();
    // Each pushed metric's unit and the attribute keys of its data points.
    let mut pushed: std::collections::BTreeMap<
        String,
        (String, std::collections::BTreeSet<String>),
    > = std::collections::BTreeMap::new();
    for (path, body) in &bodies {
        match path.as_str() {
            "/v1/traces" => {
                let request = ExportTraceServiceRequest::decode(body.as_ref())?;
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
            }
            "/v1/metrics" => {
                let request = ExportMetricsServiceRequest::decode(body.as_ref())?;
                for resource in request.resource_metrics {
                    for scope in resource.scope_metrics {
                        for metric in scope.metrics {
                            let entry = pushed
                                .entry(metric.name.clone())
                                .or_insert_with(|| (metric.unit.clone(), Default::default()));
                            entry.1.extend(attribute_keys(&metric));
                        }
                    }
                }
            }
            other => panic!("unexpected OTLP path {other}"),
        }
    }
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|span| hex(&span.trace_id) == TRACE_ID)
        .collect();
    let routing = in_trace
        .iter()
        .find(|span| span.name.starts_with("process "))
        .ok_or_else(|| anyhow::anyhow!("no routing span among {} spans", spans.len()))?;
    assert_eq!(hex(&routing.parent_span_id), PUBLISHER_SPAN);
    let attempt = in_trace
        .iter()
        .find(|span| span.name == "POST")
        .ok_or_else(|| anyhow::anyhow!("no attempt span"))?;
    assert_eq!(hex(&attempt.parent_span_id), hex(&routing.span_id));
    assert_eq!(hex(&attempt.span_id), sender_span_in_header);
    assert!(
        attempt
            .attributes
            .iter()
            .any(|attribute| attribute.key == "http.response.status_code"),
        "the attempt span records the status"
    );
    // Name, unit and attribute keys, as docs/observability.md lists them.
    let expected: [(&str, &str, &[&str]); 8] = [
        ("herald.router.events", "{event}", &["outcome"]),
        ("herald.router.deliveries", "{delivery}", &[]),
        ("herald.router.fanout", "{delivery}", &[]),
        (
            "herald.sender.attempts",
            "{attempt}",
            &["outcome", "status_class"],
        ),
        ("herald.sender.attempt.duration", "s", &["outcome"]),
        ("herald.sender.delivery.latency", "s", &[]),
        (
            "http.client.request.duration",
            "s",
            &["http.request.method", "http.response.status_code"],
        ),
        ("herald.subscriptions", "{subscription}", &[]),
    ];
    for (name, unit, keys) in expected {
        let (pushed_unit, pushed_keys) = pushed
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("{name} not pushed: {:?}", pushed.keys()))?;
        assert_eq!(pushed_unit, unit, "the unit of {name}");
        for key in keys {
            assert!(
                pushed_keys.contains(*key),
                "{name} lacks the attribute {key}: {pushed_keys:?}"
            );
        }
        assert!(
            !pushed_keys.contains("subscription_id"),
            "{name} carries subscription ids, which are off by default"
        );
    }
    remove_folder(&scenario.folder);
    Ok(())
}
