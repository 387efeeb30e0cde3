//! One delivery from start to outcome: check the subscription, make the attempt, and write what
//! follows: nothing (delivered), a record on the next retry tier, or a dead letter, plus the
//! attempt's record on the attempt log. The returned future resolves only when every record it
//! wrote is acknowledged by Kafka, which is when the stage may store the delivery's offset.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;

use herald_core::registry::Subscriptions;
use herald_core::retry::RetrySchedule;
use herald_core::subscription::Subscription;
use herald_core::{headers, traces};

use crate::attempt::{AttemptError, AttemptInput, AttemptResult, attempt};
use crate::attempt_log::AttemptRecord;
use crate::client::WebhookClient;
use crate::dead_letter::{self, History};
use crate::limits::{Admission, CircuitChange, Health, Limits};
use crate::outcome::{DeadLetterReason, Outcome, decide};
use crate::run::SenderError;

/// Everything a delivery needs, shared by all of them.
pub(crate) struct Shared {
    pub subscriptions: Subscriptions,
    pub client: WebhookClient,
    pub producer: herald_core::kafka::Producer,
    pub dlq_topic: String,
    /// The attempts topic, or `None` when the attempt log is off.
    pub attempts_topic: Option<String>,
    pub schedule: RetrySchedule,
    pub jitter_percent: u32,
    pub max_retry_after: Duration,
    /// Subscriptions disabled by a 410 Gone since this process started.
    pub disabled: Mutex<HashSet<String>>,
    pub jitter_hasher: std::collections::hash_map::RandomState,
    pub limits: Limits,
    /// How long an open circuit stays open, for the log.
    pub circuit_open: Duration,
}

/// A delivery record copied out of the consumer's buffer.
pub(crate) struct Delivery {
    pub key: Option<Vec<u8>>,
    pub body: Bytes,
    pub headers: Option<OwnedHeaders>,
    /// The record's timestamp: when its event was published, as the router copies it.
    pub published_at: Option<SystemTime>,
}

impl Delivery {
    fn header(&self, name: &str) -> Option<&str> {
        headers::find(self.headers.as_ref(), name)
    }
}

/// A record to write after the attempt.
struct NextRecord {
    topic: String,
    headers: OwnedHeaders,
}

pub(crate) async fn deliver(shared: Arc<Shared>, delivery: Delivery) -> Result<(), SenderError> {
    let subscription_id = delivery.header(headers::SUBSCRIPTION_ID);
    let event_id = delivery.header(headers::EVENT_ID);
    let (Some(subscription_id), Some(event_id)) = (subscription_id, event_id) else {
        return dead_letter_without_attempt(
            &shared,
            &delivery,
            DeadLetterReason::MalformedDelivery,
        )
        .await;
    };
    // The table of this moment serves the whole attempt: a change applies to the next one.
    let table = shared.subscriptions.current();
    let Some(subscription) = table.get(subscription_id) else {
        return dead_letter_without_attempt(
            &shared,
            &delivery,
            DeadLetterReason::SubscriptionNotFound,
        )
        .await;
    };
    if !subscription.enabled || shared.is_disabled(subscription_id) {
        return dead_letter_without_attempt(
            &shared,
            &delivery,
            DeadLetterReason::SubscriptionDisabled,
        )
        .await;
    }

    let attempt_number = delivery
        .header(headers::ATTEMPT)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let attempted_at = SystemTime::now();
    let first_attempt_at = delivery
        .header(headers::FIRST_ATTEMPT_AT)
        .and_then(|text| humantime::parse_rfc3339(text).ok())
        .unwrap_or(attempted_at);
    let current_tier = delivery
        .header(headers::TIER)
        .and_then(|name| shared.schedule.position(name));
    let last_chance = shared.schedule.next_tier(current_tier, None).is_none();
    let pass = match shared.limits.admit(subscription, last_chance).await {
        Admission::Go(pass) => Some(pass),
        Admission::Park => return park(&shared, &delivery).await,
        Admission::CircuitOpen => None,
    };
    let started = Instant::now();
    let result = match pass {
        Some(pass) => {
            let context = attempt_span(&delivery, subscription, attempt_number);
            let trace_headers = traces::inject(&context);
            let trace_header = |name: &str| {
                trace_headers
                    .iter()
                    .find(|(header, _)| *header == name)
                    .map(|(_, value)| value.as_str())
            };
            let input = AttemptInput {
                webhook_id: event_id,
                body: delivery.body.clone(),
                traceparent: trace_header(headers::TRACEPARENT),
                tracestate: trace_header(headers::TRACESTATE),
            };
            let result = attempt(&shared.client, subscription, input).await;
            end_attempt_span(&context, &result);
            let health = match &result {
                Ok(response) if response.status.is_success() => Health::Healthy,
                Ok(response) if response.status == http::StatusCode::TOO_MANY_REQUESTS => {
                    Health::Throttled
                }
                _ => Health::Failing,
            };
            if let Some(change) = pass.finish(health) {
                let last = match &result {
                    Ok(response) => format!("status {}", response.status.as_u16()),
                    Err(error) => error.to_string(),
                };
                log_circuit_change(subscription_id, change, shared.circuit_open, &last);
            }
            result
        }
        None => Err(AttemptError::CircuitOpen),
    };
    let duration = started.elapsed();

    let history = History {
        attempts: attempt_number,
        first_attempt_at: Some(first_attempt_at),
        last_attempt_at: Some(attempted_at),
        last_result: Some(&result),
    };
    let delivery_id = format!("{subscription_id}:{event_id}");
    let ids = (
        delivery_id.as_str(),
        subscription_id,
        event_id,
        delivery.header(headers::EVENT_TYPE),
    );
    let mut record = AttemptRecord::new(ids, attempt_number, attempted_at, duration, &result);

    let next = match decide(&result, shared.max_retry_after) {
        Outcome::Delivered => {
            tracing::debug!(
                subscription_id,
                event_id,
                attempt = attempt_number,
                "delivered"
            );
            // Forwarded records carry the time they were forwarded, so only a delivery that
            // needed no retry measures the whole way from its event's publication.
            if current_tier.is_none()
                && let Some(published) = delivery.published_at
            {
                crate::metrics::delivered_after(
                    SystemTime::now()
                        .duration_since(published)
                        .unwrap_or_default(),
                );
            }
            None
        }
        Outcome::Retry { wait_at_least } => {
            match shared
                .schedule
                .next_tier(current_tier, wait_at_least)
                .and_then(|i| shared.schedule.get(i))
            {
                Some(tier) => {
                    let wait = wait_at_least.unwrap_or_default().max(tier.delay)
                        + shared.jitter(tier.delay, event_id, attempt_number);
                    let due_at = SystemTime::now() + wait;
                    tracing::debug!(subscription_id, event_id, attempt = attempt_number, tier = %tier.name, "retry scheduled");
                    record.outcome = "retry";
                    crate::metrics::retry(&tier.name);
                    record.next_tier = Some(&tier.name);
                    record.due_at = Some(herald_core::time::rfc3339(due_at));
                    Some(NextRecord {
                        topic: tier.topic.clone(),
                        headers: dead_letter::retry_headers(
                            delivery.headers.as_ref(),
                            &history,
                            &tier.name,
                            due_at,
                        ),
                    })
                }
                None => {
                    record.outcome = "dead_letter";
                    Some(dead_letter_record(
                        &shared,
                        &delivery,
                        DeadLetterReason::RetriesExhausted,
                        &history,
                    ))
                }
            }
        }
        Outcome::DeadLetter(reason) => {
            tracing::warn!(
                subscription_id,
                event_id,
                reason = reason.as_str(),
                error = %result.as_ref().err().map(ToString::to_string).unwrap_or_default(),
                "delivery dead-lettered without retries"
            );
            record.outcome = "dead_letter";
            Some(dead_letter_record(&shared, &delivery, reason, &history))
        }
        Outcome::Disable => {
            shared.disable(subscription_id).await;
            record.outcome = "disabled";
            Some(dead_letter_record(
                &shared,
                &delivery,
                DeadLetterReason::Gone,
                &history,
            ))
        }
    };
    crate::metrics::attempt(subscription_id, &result, record.outcome, duration);

    let log_write = async {
        let Some(topic) = &shared.attempts_topic else {
            return Ok(());
        };
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        shared
            .produce(
                topic,
                Some(delivery_id.as_bytes()),
                &payload,
                OwnedHeaders::new(),
            )
            .await
    };
    let next_write = async {
        let Some(next) = next else {
            return Ok(());
        };
        shared
            .produce(
                &next.topic,
                delivery.key.as_deref(),
                &delivery.body,
                next.headers,
            )
            .await
    };
    tokio::try_join!(log_write, next_write)?;
    Ok(())
}

/// Starts the span of one attempt, a child of the routing span whose context the delivery
/// carries, with the HTTP client attributes of the OpenTelemetry conventions. The URL is given
/// without its query string, which may hold a token.
fn attempt_span(delivery: &Delivery, subscription: &Subscription, attempt_number: u32) -> Context {
    let parent = traces::extract(
        delivery.header(headers::TRACEPARENT),
        delivery.header(headers::TRACESTATE),
    );
    let url = &subscription.url;
    let tracer = traces::tracer();
    let span = tracer
        .span_builder("POST")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("server.address", url.host().unwrap_or_default().to_owned()),
            KeyValue::new(
                "server.port",
                i64::from(url.port_u16().unwrap_or(match url.scheme_str() {
                    Some("http") => 80,
                    _ => 443,
                })),
            ),
            KeyValue::new(
                "url.full",
                format!(
                    "{}://{}{}",
                    url.scheme_str().unwrap_or("https"),
                    url.authority().map(|a| a.as_str()).unwrap_or_default(),
                    url.path()
                ),
            ),
            KeyValue::new("http.request.resend_count", i64::from(attempt_number) - 1),
            KeyValue::new("herald.subscription.id", subscription.id.clone()),
            KeyValue::new(
                "messaging.message.id",
                delivery
                    .header(headers::EVENT_ID)
                    .unwrap_or_default()
                    .to_owned(),
            ),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// Records an attempt's status or error on its span and ends it.
fn end_attempt_span(context: &Context, result: &AttemptResult) {
    let span = context.span();
    match result {
        Ok(response) => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(response.status.as_u16()),
            ));
            if !response.status.is_success() {
                span.set_attribute(KeyValue::new(
                    "error.type",
                    response.status.as_u16().to_string(),
                ));
                span.set_status(Status::error(format!("status {}", response.status)));
            }
        }
        Err(error) => {
            span.set_attribute(KeyValue::new("error.type", error.class()));
            span.set_status(Status::error(error.to_string()));
        }
    }
    span.end();
}

/// Logs a change of a subscription's circuit, with the result of the attempt that caused it, so
/// the log shows why an endpoint is failing.
fn log_circuit_change(
    subscription_id: &str,
    change: CircuitChange,
    open_for: Duration,
    last_result: &str,
) {
    let open_for = humantime::format_duration(open_for).to_string();
    match change {
        CircuitChange::Opened => {
            crate::metrics::circuit(1);
            tracing::warn!(
                subscription_id,
                %open_for,
                last_result,
                "circuit opened after repeated failures: deliveries go straight to the next retry tier until a probe succeeds"
            );
        }
        CircuitChange::Reopened => tracing::info!(
            subscription_id,
            %open_for,
            last_result,
            "probe attempt failed: circuit open again"
        ),
        CircuitChange::Closed => {
            crate::metrics::circuit(-1);
            tracing::info!(
                subscription_id,
                "circuit closed: the endpoint answers again"
            );
        }
    }
}

/// Puts a delivery that would wait too long for its subscription's limits on the first retry
/// tier, due after that tier's delay. It is not an attempt: its tier and attempt count stay as
/// they were, and `herald-parked` counts the parkings since its last attempt.
async fn park(shared: &Shared, delivery: &Delivery) -> Result<(), SenderError> {
    crate::metrics::parked(
        delivery
            .header(headers::SUBSCRIPTION_ID)
            .unwrap_or_default(),
    );
    let Some(tier) = shared.schedule.get(0) else {
        return Err(SenderError::Schedule("no retry tier to park on".to_owned()));
    };
    let parked = delivery
        .header(headers::PARKED)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(1);
    let due_at = SystemTime::now() + tier.delay;
    tracing::debug!(
        subscription_id = delivery.header(headers::SUBSCRIPTION_ID),
        event_id = delivery.header(headers::EVENT_ID),
        parked,
        tier = %tier.name,
        "delivery parked: its subscription is at its limits"
    );
    let headers = dead_letter::park_headers(delivery.headers.as_ref(), due_at, parked);
    shared
        .produce(
            &tier.topic,
            delivery.key.as_deref(),
            &delivery.body,
            headers,
        )
        .await
}

fn dead_letter_record(
    shared: &Shared,
    delivery: &Delivery,
    reason: DeadLetterReason,
    history: &History<'_>,
) -> NextRecord {
    crate::metrics::dead_letter(
        delivery
            .header(headers::SUBSCRIPTION_ID)
            .unwrap_or_default(),
        reason.as_str(),
    );
    tracing::warn!(
        subscription_id = delivery.header(headers::SUBSCRIPTION_ID),
        event_id = delivery.header(headers::EVENT_ID),
        reason = reason.as_str(),
        attempts = history.attempts,
        status = history
            .last_result
            .and_then(|r| r.as_ref().ok())
            .map(|r| r.status.as_u16()),
        error = history
            .last_result
            .and_then(|r| r.as_ref().err())
            .map(|e| e.class()),
        error_detail = history
            .last_result
            .and_then(|r| r.as_ref().err())
            .map(ToString::to_string),
        "delivery dead-lettered"
    );
    NextRecord {
        topic: shared.dlq_topic.clone(),
        headers: dead_letter::headers(delivery.headers.as_ref(), reason, history),
    }
}

async fn dead_letter_without_attempt(
    shared: &Shared,
    delivery: &Delivery,
    reason: DeadLetterReason,
) -> Result<(), SenderError> {
    let record = dead_letter_record(shared, delivery, reason, &History::none());
    shared
        .produce(
            &record.topic,
            delivery.key.as_deref(),
            &delivery.body,
            record.headers,
        )
        .await
}

impl Shared {
    fn is_disabled(&self, subscription_id: &str) -> bool {
        self.disabled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(subscription_id)
    }

    /// Disables a subscription after 410 Gone: at once in this process, and for good on the
    /// subscriptions topic when subscriptions come from it.
    async fn disable(&self, subscription_id: &str) {
        let newly = self
            .disabled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(subscription_id.to_owned());
        if !newly {
            return;
        }
        match self.subscriptions.disable_on_topic(subscription_id).await {
            Ok(true) => tracing::warn!(
                subscription_id,
                "subscription disabled after 410 Gone: enabled set to false on the subscriptions topic"
            ),
            Ok(false) => tracing::warn!(
                subscription_id,
                "subscription disabled after 410 Gone until restart: set enabled: false in the subscriptions file to keep it disabled"
            ),
            Err(error) => tracing::warn!(
                subscription_id,
                %error,
                "subscription disabled after 410 Gone in this process only: writing enabled: false to the subscriptions topic failed"
            ),
        }
    }

    /// Returns a random extra wait of up to `jitter_percent` of `delay`.
    fn jitter(&self, delay: Duration, event_id: &str, attempt: u32) -> Duration {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let sample = self.jitter_hasher.hash_one((event_id, attempt, nanos)) % 10_000;
        let max_extra = delay.as_secs_f64() * f64::from(self.jitter_percent) / 100.0;
        Duration::from_secs_f64(max_extra * sample as f64 / 10_000.0)
    }

    async fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), SenderError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        // A produce that timed out, as during a Kafka outage, is tried again until Kafka stores it.
        let result = match self
            .producer
            .send(record, rdkafka::util::Timeout::Never)
            .await
        {
            Ok(_) => Ok(()),
            Err((source, message)) => {
                herald_core::kafka::produce_again(&self.producer, message, source).await
            }
        };
        result.map_err(|source| SenderError::Produce {
            topic: topic.to_owned(),
            source,
        })
    }
}
