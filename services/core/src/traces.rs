//! Trace context across Kafka. The W3C `traceparent` and `tracestate` of an event are read from
//! its record headers, and the router's and the sender's spans continue that trace. The context
//! of the current span is written into the delivery record and the webhook request. Spans are
//! exported over OTLP/HTTP when `telemetry.otlp_endpoint` is set; without it they are not
//! recorded, and the incoming context is passed on unchanged.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::headers::{TRACEPARENT, TRACESTATE};

/// Returns Herald's tracer from the global provider that [`crate::telemetry::Telemetry`] installs.
pub fn tracer() -> BoxedTracer {
    opentelemetry::global::tracer(crate::telemetry::METER)
}

/// Returns the context that `traceparent` and `tracestate` describe; an empty context when they
/// are absent or malformed.
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let mut carrier = HashMap::new();
    if let Some(value) = traceparent {
        carrier.insert(TRACEPARENT.to_owned(), value.to_owned());
    }
    if let Some(value) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), value.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Returns the `traceparent` and `tracestate` headers for `context`; none when it carries no
/// valid span.
pub fn inject(context: &Context) -> Vec<(&'static str, String)> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    [TRACEPARENT, TRACESTATE]
        .into_iter()
        .filter_map(|name| {
            carrier
                .remove(name)
                .filter(|value| !value.is_empty())
                .map(|value| (name, value))
        })
        .collect()
}

/// Returns a `tracing` span carrying the trace and span ids of `context`, so every log line
/// written inside it names the trace. Without a valid span in `context`, the span has no ids.
pub fn log_span(context: &Context) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;

    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "trace",
        trace_id = %span_context.trace_id(),
        span_id = %span_context.span_id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn context_round_trips_through_headers() {
        let context = extract(Some(PARENT), Some("vendor=1"));
        let headers = inject(&context);
        assert_eq!(
            headers,
            [
                (TRACEPARENT, PARENT.to_owned()),
                (TRACESTATE, "vendor=1".to_owned())
            ]
        );
    }

    #[test]
    fn malformed_context_is_dropped() {
        assert!(inject(&extract(Some("not-a-traceparent"), None)).is_empty());
        assert!(inject(&extract(None, None)).is_empty());
    }
}
