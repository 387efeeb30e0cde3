//! Metrics, traces and health: OpenTelemetry instruments recorded by the router and the sender,
//! exposed as a Prometheus scrape endpoint (`/metrics`) and, when `telemetry.otlp_endpoint` is
//! set, pushed with the spans over OTLP/HTTP. The same listener responds to `/healthz` (the
//! process runs) and `/readyz` (the subscription table is loaded, Kafka has assigned partitions,
//! and a broker is reachable).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tokio::net::TcpListener;

use crate::config::TelemetryConfig;

/// The instrumentation scope of every Herald metric.
pub const METER: &str = "herald";

/// Set once the process has started (see [`mark_started`]).
static STARTED: AtomicBool = AtomicBool::new(false);
/// Set while every Kafka broker is down.
static KAFKA_DOWN: AtomicBool = AtomicBool::new(false);
/// A partition of a consumer group: group, topic and partition number.
type GroupPartition = (String, String, i32);
/// The latest consumer lag of each assigned partition.
static LAG: LazyLock<Mutex<HashMap<GroupPartition, i64>>> = LazyLock::new(Default::default);

/// Forgets the lag of a partition this process no longer consumes.
pub fn forget_lag(group: &str, topic: &str, partition: i32) {
    LAG.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(&(group.to_owned(), topic.to_owned(), partition));
}

/// Records the consumer lag of one partition, from librdkafka's statistics.
pub fn record_lag(group: &str, topic: &str, partition: i32, lag: i64) {
    LAG.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert((group.to_owned(), topic.to_owned(), partition), lag);
}
/// The latest average round trip to each broker, in seconds, per Kafka client: (client, broker).
static BROKER_RTT: LazyLock<Mutex<HashMap<(String, String), f64>>> =
    LazyLock::new(Default::default);
/// Records waiting in each producer's queue for a broker's acknowledgement.
static PRODUCER_QUEUE: LazyLock<Mutex<HashMap<String, i64>>> = LazyLock::new(Default::default);

/// Records a client's broker round trips and, for a producer, its queue, from librdkafka's
/// statistics. Brokers without a round trip yet (such as the bootstrap entry) are left out.
pub fn record_client_statistics(client: &str, statistics: &rdkafka::Statistics, producer: bool) {
    {
        let mut rtt = BROKER_RTT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for broker in statistics.brokers.values() {
            if let Some(window) = &broker.rtt
                && broker.nodeid >= 0
                && window.cnt > 0
            {
                rtt.insert(
                    (client.to_owned(), broker.name.clone()),
                    window.avg as f64 / 1_000_000.0,
                );
            }
        }
    }
    if producer {
        PRODUCER_QUEUE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(client.to_owned(), statistics.msg_cnt as i64);
    }
}

static SUBSCRIPTION_ATTRIBUTE: OnceLock<bool> = OnceLock::new();

/// Marks the process started: its subscriptions are loaded and, for a consumer, Kafka has
/// assigned it partitions once. It is ready from then on while Kafka is reachable.
pub fn mark_started() {
    STARTED.store(true, Ordering::Release);
}

/// Marks the process not started again because a consumer lost its partitions, as when its
/// session timed out during a Kafka outage. The next assignment marks it started.
pub fn mark_assignment_lost() {
    STARTED.store(false, Ordering::Release);
}

/// Records that every Kafka broker is down: the process is not ready until one is up again.
/// Logs the change once.
pub fn mark_kafka_down() {
    if !KAFKA_DOWN.swap(true, Ordering::AcqRel) {
        tracing::warn!("every Kafka broker is unreachable: not ready until one is reachable again");
    }
}

/// Records that a Kafka broker is up again, and logs the change once.
pub fn mark_kafka_up() {
    if KAFKA_DOWN.swap(false, Ordering::AcqRel) {
        tracing::info!("Kafka is reachable again");
    }
}

/// Returns whether the process is ready: started, and Kafka not down.
pub fn is_ready() -> bool {
    STARTED.load(Ordering::Acquire) && !KAFKA_DOWN.load(Ordering::Acquire)
}

/// Returns the `subscription_id` attribute for per-subscription metrics, or nothing unless
/// `telemetry.subscription_attribute` is set: there can be many subscriptions, and each value is
/// a separate time series.
pub fn subscription_attribute(subscription_id: &str) -> Option<KeyValue> {
    SUBSCRIPTION_ATTRIBUTE
        .get()
        .copied()
        .unwrap_or(false)
        .then(|| KeyValue::new("subscription_id", subscription_id.to_owned()))
}

/// The error that keeps telemetry from starting.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the Prometheus exporter")]
    Prometheus(#[source] opentelemetry_sdk::error::OTelSdkError),
    #[error("cannot set up the OTLP exporter for telemetry.otlp_endpoint")]
    Otlp(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The meter and tracer providers, and the registry the scrape endpoint reads.
pub struct Telemetry {
    provider: SdkMeterProvider,
    tracer_provider: Option<SdkTracerProvider>,
    registry: prometheus::Registry,
}

impl Telemetry {
    /// Installs the global meter provider for `service` (such as `herald-sender`), exporting to
    /// Prometheus always and over OTLP/HTTP when configured.
    pub fn init(config: &TelemetryConfig, service: &'static str) -> Result<Self, TelemetryError> {
        let _ = SUBSCRIPTION_ATTRIBUTE.set(config.subscription_attribute);
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(TelemetryError::Prometheus)?;
        let resource = Resource::builder().with_service_name(service).build();
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus);
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/metrics", endpoint.trim_end_matches('/')))
                .build()
                .map_err(TelemetryError::Otlp)?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(Duration::from_millis(config.export_interval_ms))
                    .build(),
            );
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        // The callbacks stay registered with the provider once the gauges are built.
        let _ = opentelemetry::global::meter(METER)
            .u64_observable_gauge("herald.ready")
            .with_unit("{state}")
            .with_description("1 when the process is ready (/readyz responds with 200), else 0")
            .with_callback(|observer| observer.observe(u64::from(is_ready()), &[]))
            .build();
        let _ = opentelemetry::global::meter(METER)
            .i64_observable_gauge("herald.consumer.lag")
            .with_unit("{record}")
            .with_description("Records not yet read, per consumer group, topic and partition")
            .with_callback(|observer| {
                let lag = LAG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                for ((group, topic, partition), records) in lag.iter() {
                    observer.observe(
                        *records,
                        &[
                            KeyValue::new("messaging.consumer.group.name", group.clone()),
                            KeyValue::new("messaging.destination.name", topic.clone()),
                            KeyValue::new(
                                "messaging.destination.partition.id",
                                partition.to_string(),
                            ),
                        ],
                    );
                }
            })
            .build();
        let _ = opentelemetry::global::meter(METER)
            .f64_observable_gauge("herald.kafka.broker.rtt")
            .with_unit("s")
            .with_description("Average request round trip to each broker, per Kafka client")
            .with_callback(|observer| {
                let rtt = BROKER_RTT
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for ((client, broker), seconds) in rtt.iter() {
                    observer.observe(
                        *seconds,
                        &[
                            KeyValue::new("client", client.clone()),
                            KeyValue::new("broker", broker.clone()),
                        ],
                    );
                }
            })
            .build();
        let _ = opentelemetry::global::meter(METER)
            .i64_observable_gauge("herald.kafka.producer.queue")
            .with_unit("{record}")
            .with_description("Records in a producer's queue, not yet acknowledged by Kafka")
            .with_callback(|observer| {
                let queue = PRODUCER_QUEUE
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for (client, records) in queue.iter() {
                    observer.observe(*records, &[KeyValue::new("client", client.clone())]);
                }
            })
            .build();

        let tracer_provider = match &config.otlp_endpoint {
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                    .build()
                    .map_err(TelemetryError::Otlp)?;
                let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.trace_sample_ratio,
                )));
                let tracer_provider = SdkTracerProvider::builder()
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .with_sampler(sampler)
                    .with_batch_exporter(exporter)
                    .build();
                opentelemetry::global::set_tracer_provider(tracer_provider.clone());
                Some(tracer_provider)
            }
            None => None,
        };
        Ok(Self {
            provider,
            tracer_provider,
            registry,
        })
    }

    /// Returns the registry the scrape endpoint encodes.
    pub fn registry(&self) -> prometheus::Registry {
        self.registry.clone()
    }

    /// Pushes what is left to the OTLP endpoint and stops the exporters.
    pub fn shutdown(&self) {
        if let Some(tracer_provider) = &self.tracer_provider
            && let Err(error) = tracer_provider.shutdown()
        {
            tracing::warn!(%error, "stopping the span exporter failed");
        }
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "stopping the metrics exporters failed");
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a telemetry connection failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(request: &Request<Incoming>, registry: &prometheus::Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
                Ok(()) => (
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                ),
                Err(error) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("encoding the metrics failed: {error}\n"),
                ),
            }
        }
        "/healthz" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" if is_ready() => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ready\n".into(),
        ),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "not ready: loading subscriptions or waiting for Kafka partitions\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "use /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
