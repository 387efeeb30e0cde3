//! The ceiling: the same signed requests sent straight from Herald's HTTP client stack to the
//! same kind of receivers, with no Kafka in between. Herald's throughput is reported as a fraction
//! of this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

use herald_core::subscription::{SubscriptionSpec, SubscriptionTable};
use herald_sender::{AttemptInput, WebhookClient, attempt};
use herald_verify::receiver::{Receiver, ReceiverOptions};
use herald_verify::{Secret, Verifier};

use crate::stats::{self, Percentiles};

/// The throughput and latency of the bare HTTP path.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub requests: u64,
    pub failures: u64,
    pub duration_s: f64,
    pub throughput_per_s: f64,
    pub latency: Percentiles,
}

/// Sends `requests` signed POSTs of `body`, spread over `endpoints` fresh receivers that add a
/// latency drawn from `latency` (a range), with at most `concurrency` in flight.
pub async fn measure(
    endpoints: usize,
    requests: u64,
    concurrency: usize,
    latency: (Duration, Duration),
    body: Bytes,
) -> anyhow::Result<CeilingResult> {
    let secret = Secret::from_bytes(vec![7; 32])?;
    let mut receivers = Vec::with_capacity(endpoints);
    let mut specs = Vec::with_capacity(endpoints);
    for index in 0..endpoints {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Receiver::start(
            listener,
            ReceiverOptions {
                name: format!("ceiling{index}"),
                verifier: Verifier::new(vec![secret.clone()])?,
                keep_requests: false,
                log_file: None,
                hook: None,
            },
        )?;
        receiver.delay_responses_between(latency.0, latency.1);
        specs.push(SubscriptionSpec::new(
            &format!("ceiling{index}"),
            &format!("http://{}/webhooks", receiver.address()),
            &["*"],
            vec![secret.expose()],
        ));
        receivers.push(receiver);
    }
    let table = Arc::new(
        SubscriptionTable::from_specs(&specs, true)
            .map_err(|problems| anyhow::anyhow!("{problems}"))?,
    );
    // The receivers are on loopback, which the address guard allows only when configured to.
    let guard = herald_sender::AddressGuard::new(&["127.0.0.0/8".into()])
        .map_err(|problem| anyhow::anyhow!(problem))?;
    let client = WebhookClient::new(herald_sender::ClientSettings {
        connect_timeout: Duration::from_secs(5),
        max_response_bytes: 16 * 1024,
        guard,
        extra_roots: Vec::new(),
    })?;
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let latencies = Arc::new(std::sync::Mutex::new(stats::histogram()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests as usize);
    for index in 0..requests {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (table, client, body) = (Arc::clone(&table), client.clone(), body.clone());
        let (latencies, failures) = (Arc::clone(&latencies), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            let id = format!("ceiling{}", index as usize % endpoints);
            let webhook_id = format!("ceiling-{index}");
            let Some(subscription) = table.get(&id) else {
                return;
            };
            let sent = Instant::now();
            let input = AttemptInput {
                webhook_id: &webhook_id,
                body,
                traceparent: None,
                tracestate: None,
            };
            let result = attempt(&client, subscription, input).await;
            let micros = (sent.elapsed().as_micros() as u64).max(1);
            match result {
                Ok(response) if response.status.is_success() => {
                    let mut histogram = latencies
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    histogram.saturating_record(micros);
                }
                _ => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let histogram = latencies
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let latency = stats::percentiles(&histogram);
    Ok(CeilingResult {
        requests,
        failures: failures.load(std::sync::atomic::Ordering::Relaxed),
        duration_s: elapsed.as_secs_f64(),
        throughput_per_s: stats::rate(latency.count, elapsed),
        latency,
    })
}
