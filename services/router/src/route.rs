//! Decides what one input record becomes: deliveries for the subscriptions that want it, or a
//! rejected record carrying the reason. Pure, so every case is unit-tested without Kafka.

use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};

use herald_core::envelope::{self, RejectReason};
use herald_core::headers;
use herald_core::subscription::SubscriptionTable;

/// A record to produce: topic is implied by the variant.
#[derive(Debug)]
pub enum RoutedRecord {
    /// For the deliveries topic, keyed by subscription id.
    Delivery { key: String, headers: OwnedHeaders },
    /// For the rejected topic: the original value unless it was too large to copy.
    Rejected {
        reason: RejectReason,
        keep_value: bool,
        headers: OwnedHeaders,
    },
}

/// Routes one input record. An event that no subscription wants yields nothing.
pub fn route<M: Message>(
    message: &M,
    subscriptions: &SubscriptionTable,
    max_event_bytes: usize,
) -> Vec<RoutedRecord> {
    let source = headers::source(message.topic(), message.partition(), message.offset());

    let event = match envelope::read_event(message.payload(), max_event_bytes) {
        Ok(event) => event,
        Err(reason) => {
            let headers = headers::copy_except(
                message.headers(),
                OwnedHeaders::new(),
                &[headers::REJECT_REASON, headers::SOURCE],
            )
            .insert(header(headers::REJECT_REASON, &reason.to_string()))
            .insert(header(headers::SOURCE, &source));
            // An oversized value would not fit on Herald's topic either: the rejected record then
            // points at the source topic, partition and offset instead of copying it.
            let keep_value = !matches!(reason, RejectReason::TooLarge { .. });
            return vec![RoutedRecord::Rejected {
                reason,
                keep_value,
                headers,
            }];
        }
    };

    let matched = subscriptions.matching(&event.event_type);
    // The payload is parsed again, as a whole, only when a matched subscription filters on it.
    let payload = matched
        .iter()
        .any(|subscription| subscription.filter.is_some())
        .then(|| envelope::parse_value(message.payload()))
        .flatten();
    matched
        .into_iter()
        .filter(|subscription| match (&subscription.filter, &payload) {
            (None, _) => true,
            (Some(filter), Some(payload)) => filter.matches(payload),
            (Some(_), None) => false,
        })
        .map(|subscription| {
            let mut delivery_headers = OwnedHeaders::new()
                .insert(header(headers::EVENT_ID, &event.id))
                .insert(header(headers::EVENT_TYPE, &event.event_type))
                .insert(header(headers::SUBSCRIPTION_ID, &subscription.id))
                .insert(header(headers::SOURCE, &source));
            for name in headers::CARRIED_FROM_EVENT {
                if let Some(value) = headers::find(message.headers(), name) {
                    delivery_headers = delivery_headers.insert(header(name, value));
                }
            }
            RoutedRecord::Delivery {
                key: subscription.id.clone(),
                headers: delivery_headers,
            }
        })
        .collect()
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Headers, OwnedMessage};

    use herald_core::subscription::SubscriptionSpec;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn table() -> SubscriptionTable {
        let spec = |id: &str, types: &[&str]| {
            SubscriptionSpec::new(id, "https://example.com/hook", types, vec![SECRET.into()])
        };
        SubscriptionTable::from_specs(
            &[spec("ledger", &["payment.*"]), spec("audit", &["*"])],
            false,
        )
        .expect("valid")
    }

    fn keys(routed: &[RoutedRecord]) -> Vec<&str> {
        routed
            .iter()
            .map(|r| match r {
                RoutedRecord::Delivery { key, .. } => key.as_str(),
                RoutedRecord::Rejected { .. } => "rejected",
            })
            .collect()
    }

    #[test]
    fn payload_filter_selects_large_chf_payments() {
        let conditions: Vec<herald_core::filter::ConditionSpec> = serde_json::from_str(
            r#"[{"path": "/data/currency", "equals": "CHF"}, {"path": "/data/amount", "gt": 10000}]"#,
        )
        .expect("valid conditions");
        let specs = [SubscriptionSpec {
            filter: conditions,
            ..SubscriptionSpec::new(
                "treasury",
                "https://example.com/hook",
                &["payment.*"],
                vec![SECRET.into()],
            )
        }];
        let table = SubscriptionTable::from_specs(&specs, false).expect("valid");
        let payment = |amount: &str, currency: &str| {
            format!(
                r#"{{"eventId":"evt_1","eventType":"payment.settled","data":{{"amount":"{amount}","currency":"{currency}"}}}}"#
            )
        };
        let routed = |body: String| route(&message(Some(body.as_bytes()), None), &table, 10_000);
        assert_eq!(keys(&routed(payment("25000.00", "CHF"))), ["treasury"]);
        assert!(routed(payment("9999.99", "CHF")).is_empty());
        assert!(routed(payment("25000.00", "EUR")).is_empty());
    }

    fn message(value: Option<&[u8]>, headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            Some(b"CUST_1".to_vec()),
            "banking.events".into(),
            Timestamp::NotAvailable,
            2,
            41,
            headers,
        )
    }

    fn header_value(headers: &OwnedHeaders, name: &str) -> Option<String> {
        herald_core::headers::find(Some(headers), name).map(str::to_owned)
    }

    #[test]
    fn one_delivery_per_matching_subscription() {
        let trace = OwnedHeaders::new().insert(header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let record = message(
            Some(br#"{"eventId":"evt_1","eventType":"payment.settled","data":{}}"#),
            Some(trace),
        );
        let routed = route(&record, &table(), 1_000);
        let keys: Vec<&str> = routed
            .iter()
            .map(|r| match r {
                RoutedRecord::Delivery { key, .. } => key.as_str(),
                RoutedRecord::Rejected { .. } => "rejected",
            })
            .collect();
        assert_eq!(keys, ["ledger", "audit"]);
        let RoutedRecord::Delivery { headers, .. } = &routed[0] else {
            panic!("expected a delivery");
        };
        assert_eq!(
            header_value(headers, "herald-event-id").as_deref(),
            Some("evt_1")
        );
        assert_eq!(
            header_value(headers, "herald-event-type").as_deref(),
            Some("payment.settled")
        );
        assert_eq!(
            header_value(headers, "herald-subscription-id").as_deref(),
            Some("ledger")
        );
        assert_eq!(
            header_value(headers, "herald-source").as_deref(),
            Some("banking.events/2/41")
        );
        assert!(header_value(headers, "traceparent").is_some());
    }

    #[test]
    fn unwanted_event_yields_nothing() {
        let only_ledger = {
            let table = table();
            let record = message(
                Some(br#"{"eventId":"e","eventType":"kyc.approved","data":{}}"#),
                None,
            );
            route(&record, &table, 1_000)
        };
        assert_eq!(
            only_ledger.len(),
            1,
            "only the audit subscription wants everything"
        );
    }

    #[test]
    fn unreadable_event_is_rejected_with_reason_and_source() {
        let record = message(Some(b"{\"eventId\": "), None);
        let routed = route(&record, &table(), 1_000);
        let [
            RoutedRecord::Rejected {
                reason,
                keep_value,
                headers,
            },
        ] = routed.as_slice()
        else {
            panic!("expected one rejected record, got {routed:?}");
        };
        assert_eq!(reason.kind(), "invalid_json");
        assert!(keep_value);
        assert!(
            header_value(headers, "herald-reject-reason")
                .is_some_and(|r| r.starts_with("invalid JSON"))
        );
        assert_eq!(
            header_value(headers, "herald-source").as_deref(),
            Some("banking.events/2/41")
        );
    }

    #[test]
    fn oversized_event_is_rejected_without_its_value() {
        let record = message(Some(&[b' '; 2_000]), None);
        let routed = route(&record, &table(), 1_000);
        let [
            RoutedRecord::Rejected {
                reason,
                keep_value,
                headers,
            },
        ] = routed.as_slice()
        else {
            panic!("expected one rejected record");
        };
        assert_eq!(reason.kind(), "too_large");
        assert!(!keep_value);
        assert_eq!(headers.count(), 2);
    }
}
