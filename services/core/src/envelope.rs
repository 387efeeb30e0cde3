//! Reads the few fields Herald needs from an event and rejects what it cannot read, with a reason.
//! The event bytes themselves are never changed: the webhook body is what the publisher wrote.
//!
//! Two shapes are accepted: Herald's envelope `{eventId, eventType, timestamp, data}` and
//! CloudEvents 1.0 structured JSON `{specversion, id, source, type, ...}`.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The maximum length of an event id or event type, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// The deepest nesting of objects and arrays accepted. Receivers' JSON parsers often stop at
/// about this depth (serde_json's default limit is 128), so a deeper event could not be read there.
pub const MAX_NESTING_DEPTH: usize = 128;

const UTF8_BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// The fields Herald reads from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The id receivers use to drop duplicates: the `webhook-id` header and `herald-event-id`.
    pub id: String,
    /// The event type that subscriptions match.
    pub event_type: String,
}

/// The reason an input record cannot be delivered. The message is the reason an operator reads on the
/// rejected record, so it names the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("record has no value")]
    NoValue,
    #[error("record value is empty")]
    EmptyValue,
    #[error("event is {size} bytes, more than the {limit} allowed (router.max_event_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("value is not valid UTF-8 (first invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("value is not a JSON object: {detail}")]
    NotAnObject { detail: String },
    #[error("invalid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("missing field {field}")]
    MissingField { field: &'static str },
    #[error("field {field} must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field {field} is empty")]
    EmptyField { field: &'static str },
    #[error("field {field} is {length} bytes, more than the {MAX_ID_BYTES} allowed")]
    FieldTooLong { field: &'static str, length: usize },
    #[error(
        "field {field} contains a character outside printable ASCII (control characters and spaces are not allowed)"
    )]
    UnsafeCharacter { field: &'static str },
    #[error("JSON nesting is deeper than the {MAX_NESTING_DEPTH} levels allowed")]
    TooDeep,
    #[error("unsupported CloudEvents specversion {version:?}, expected \"1.0\"")]
    UnsupportedSpecVersion { version: String },
}

impl RejectReason {
    /// Returns a short stable name for the reason, for metrics and for grouping rejected events.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoValue => "no_value",
            Self::EmptyValue => "empty_value",
            Self::TooLarge { .. } => "too_large",
            Self::NotUtf8 { .. } => "not_utf8",
            Self::NotAnObject { .. } => "not_an_object",
            Self::InvalidJson { .. } => "invalid_json",
            Self::MissingField { .. } => "missing_field",
            Self::WrongType { .. } => "wrong_type",
            Self::EmptyField { .. } => "empty_field",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::UnsafeCharacter { .. } => "unsafe_character",
            Self::TooDeep => "too_deep",
            Self::UnsupportedSpecVersion { .. } => "unsupported_spec_version",
        }
    }
}

/// The top-level fields of either shape. `data` is skipped without being built, and the small
/// identifying fields are read as JSON values so that a wrong type gets a precise reason.
#[derive(Deserialize)]
struct TopLevel {
    #[serde(rename = "eventId")]
    event_id: Option<Value>,
    #[serde(rename = "eventType")]
    event_type: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    data: bool,
    specversion: Option<Value>,
    id: Option<Value>,
    source: Option<Value>,
    #[serde(rename = "type")]
    cloud_event_type: Option<Value>,
}

/// Marks a field as present whatever its value, `null` included.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer).map(|_| true)
}

/// Reads an event from a record value of at most `max_bytes` bytes.
pub fn read_event(value: Option<&[u8]>, max_bytes: usize) -> Result<Event, RejectReason> {
    let Some(value) = value else {
        return Err(RejectReason::NoValue);
    };
    if value.is_empty() {
        return Err(RejectReason::EmptyValue);
    }
    if value.len() > max_bytes {
        return Err(RejectReason::TooLarge {
            size: value.len(),
            limit: max_bytes,
        });
    }
    if let Err(error) = std::str::from_utf8(value) {
        return Err(RejectReason::NotUtf8 {
            offset: error.valid_up_to(),
        });
    }

    // A byte order mark is legal at the start of UTF-8 text but not of JSON: skip it for reading
    // and still deliver the bytes as published.
    let json = value.strip_prefix(UTF8_BYTE_ORDER_MARK).unwrap_or(value);
    let top = parse_top_level(json)?;

    if top.specversion.is_some() {
        return read_cloud_event(top);
    }
    let id = required_string("eventId", top.event_id)?;
    let event_type = required_string("eventType", top.event_type)?;
    if !top.data {
        return Err(RejectReason::MissingField { field: "data" });
    }
    Ok(Event { id, event_type })
}

/// Parses a value that [`read_event`] accepted into a JSON tree, for payload filters. `None` when
/// it cannot be parsed, which `read_event` would have rejected.
pub fn parse_value(value: Option<&[u8]>) -> Option<serde_json::Value> {
    let value = value?;
    let json = value.strip_prefix(UTF8_BYTE_ORDER_MARK).unwrap_or(value);
    serde_json::from_slice(json).ok()
}

fn parse_top_level(json: &[u8]) -> Result<TopLevel, RejectReason> {
    let first = json.iter().find(|byte| !byte.is_ascii_whitespace());
    match first {
        Some(b'{') => {}
        Some(b'[') => {
            return Err(RejectReason::NotAnObject {
                detail: "found an array".to_owned(),
            });
        }
        None => return Err(RejectReason::EmptyValue),
        Some(_) => {
            return Err(RejectReason::NotAnObject {
                detail: "the value does not start with '{'".to_owned(),
            });
        }
    }
    // serde_json skips unread fields without a depth limit, so depth is checked here first.
    if nesting_depth(json) > MAX_NESTING_DEPTH {
        return Err(RejectReason::TooDeep);
    }
    serde_json::from_slice(json).map_err(|error| RejectReason::InvalidJson {
        detail: error.to_string(),
    })
}

/// Returns the deepest nesting of objects and arrays in `json`, ignoring brackets inside strings.
fn nesting_depth(json: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn read_cloud_event(top: TopLevel) -> Result<Event, RejectReason> {
    let version = required_string("specversion", top.specversion)?;
    if version != "1.0" {
        return Err(RejectReason::UnsupportedSpecVersion { version });
    }
    let id = required_string("id", top.id)?;
    let source = required_string("source", top.source)?;
    let event_type = required_string("type", top.cloud_event_type)?;
    Ok(Event {
        id: cloud_event_webhook_id(&source, &id),
        event_type,
    })
}

/// Derives a webhook id from a CloudEvent's `source` and `id`, because CloudEvents ids are unique
/// only within one source. The result is stable, so every retry and every subscription gets the
/// same id.
pub fn cloud_event_webhook_id(source: &str, id: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(source.as_bytes());
    digest.update([0u8]);
    digest.update(id.as_bytes());
    let hash = digest.finalize();
    let hex: String = hash[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("ce_{hex}")
}

fn required_string(field: &'static str, value: Option<Value>) -> Result<String, RejectReason> {
    let value = match value {
        None | Some(Value::Null) => return Err(RejectReason::MissingField { field }),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(RejectReason::WrongType {
                field,
                expected: "a string",
                found: json_type_name(&other),
            });
        }
    };
    if value.is_empty() {
        return Err(RejectReason::EmptyField { field });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(RejectReason::FieldTooLong {
            field,
            length: value.len(),
        });
    }
    // These values become HTTP header values and Kafka header values: anything outside
    // printable ASCII could split a header or confuse a receiver.
    if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(RejectReason::UnsafeCharacter { field });
    }
    Ok(value)
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1_000_000;

    fn read(text: &str) -> Result<Event, RejectReason> {
        read_event(Some(text.as_bytes()), LIMIT)
    }

    #[test]
    fn reads_herald_envelope() {
        let event = read(
            r#"{"eventId":"evt_1","eventType":"payment.settled","timestamp":"2026-11-30T09:00:00Z","data":{"a":1}}"#,
        );
        assert_eq!(
            event,
            Ok(Event {
                id: "evt_1".into(),
                event_type: "payment.settled".into()
            })
        );
    }

    #[test]
    fn accepts_null_data_and_numeric_timestamp() {
        assert!(read(r#"{"eventId":"e","eventType":"t","data":null}"#).is_ok());
        assert!(
            read(r#"{"eventId":"e","eventType":"t","timestamp":1764493200000,"data":{}}"#).is_ok()
        );
    }

    #[test]
    fn accepts_byte_order_mark_and_trailing_whitespace() {
        assert!(read("\u{feff}{\"eventId\":\"e\",\"eventType\":\"t\",\"data\":{}}").is_ok());
        assert!(read("{\"eventId\":\"e\",\"eventType\":\"t\",\"data\":{}}  \n").is_ok());
    }

    #[test]
    fn reads_cloud_event_with_derived_id() {
        let event = read(r#"{"specversion":"1.0","id":"42","source":"/core-banking","type":"payment.settled","data":{}}"#)
            .expect("valid CloudEvent");
        assert_eq!(event.event_type, "payment.settled");
        assert_eq!(event.id, cloud_event_webhook_id("/core-banking", "42"));
        assert_ne!(event.id, cloud_event_webhook_id("/other-system", "42"));
    }

    #[test]
    fn rejects_missing_value_and_empty_value() {
        assert_eq!(read_event(None, LIMIT), Err(RejectReason::NoValue));
        assert_eq!(read_event(Some(b""), LIMIT), Err(RejectReason::EmptyValue));
    }

    #[test]
    fn rejects_oversized_event_with_its_size() {
        let reason = read_event(Some(&[b' '; 11]), 10).expect_err("too large");
        assert_eq!(
            reason,
            RejectReason::TooLarge {
                size: 11,
                limit: 10
            }
        );
        assert!(reason.to_string().contains("11 bytes"));
    }

    #[test]
    fn rejects_invalid_utf8() {
        let reason = read_event(Some(b"{\"eventId\":\"\xff\"}"), LIMIT).expect_err("not UTF-8");
        assert_eq!(reason, RejectReason::NotUtf8 { offset: 12 });
    }

    #[test]
    fn rejects_malformed_json_shapes() {
        assert_eq!(
            read(r#"{"eventId": "e", "eventType": "#).map_err(|r| r.kind()),
            Err("invalid_json")
        );
        assert_eq!(
            read(r#"[{"eventId":"e"}]"#).map_err(|r| r.kind()),
            Err("not_an_object")
        );
        assert_eq!(
            read(r#"{"eventId":"e","eventType":"t","data":{}} {"eventId":"f","eventType":"t","data":{}}"#)
                .map_err(|r| r.kind()),
            Err("invalid_json")
        );
        let deep = format!("{}{}", "{\"a\":".repeat(5000), "}".repeat(5000));
        assert_eq!(read(&deep).map_err(|r| r.kind()), Err("too_deep"));
    }

    #[test]
    fn rejects_missing_empty_and_mistyped_fields() {
        assert_eq!(
            read(r#"{"eventType":"t","data":{}}"#),
            Err(RejectReason::MissingField { field: "eventId" })
        );
        assert_eq!(
            read(r#"{"eventId":"e","data":{}}"#),
            Err(RejectReason::MissingField { field: "eventType" })
        );
        assert_eq!(
            read(r#"{"eventId":"e","eventType":"t"}"#),
            Err(RejectReason::MissingField { field: "data" })
        );
        assert_eq!(
            read(r#"{"eventId":"e","eventType":"","data":{}}"#),
            Err(RejectReason::EmptyField { field: "eventType" })
        );
        assert_eq!(
            read(r#"{"eventId":12345,"eventType":"t","data":{}}"#),
            Err(RejectReason::WrongType {
                field: "eventId",
                expected: "a string",
                found: "a number"
            })
        );
    }

    #[test]
    fn rejects_deep_nesting_even_in_a_valid_envelope() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let event = |data: String| format!(r#"{{"eventId":"e","eventType":"t","data":{data}}}"#);
        assert!(read(&event(nested(MAX_NESTING_DEPTH - 1))).is_ok());
        assert_eq!(
            read(&event(nested(MAX_NESTING_DEPTH))),
            Err(RejectReason::TooDeep)
        );
        // Brackets inside strings are text, not nesting.
        assert!(read(&event(format!("\"{}\\\"\"", "[".repeat(500)))).is_ok());
    }

    #[test]
    fn rejects_header_injection_and_long_fields() {
        assert_eq!(
            read(r#"{"eventId":"e\r\nX-Injected: yes","eventType":"t","data":{}}"#),
            Err(RejectReason::UnsafeCharacter { field: "eventId" })
        );
        let long_type = "s".repeat(MAX_ID_BYTES + 1);
        let text = format!(r#"{{"eventId":"e","eventType":"{long_type}","data":{{}}}}"#);
        assert_eq!(
            read(&text),
            Err(RejectReason::FieldTooLong {
                field: "eventType",
                length: MAX_ID_BYTES + 1
            })
        );
    }
}
