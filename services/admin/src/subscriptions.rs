//! `herald subscriptions apply` and `herald subscriptions list`: the subscriptions topic from
//! the command line. Apply converges the topic to a YAML file: it creates what the file adds,
//! updates what differs, and deletes (with a tombstone) what the file no longer has, so a team
//! can keep its subscriptions in git. A dry run prints the same plan and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;

use herald_core::address::AddressGuard;
use herald_core::config::HeraldConfig;
use herald_core::config::{Problems, SenderConfig};
use herald_core::encryption::{EncryptionError, KeyRing};
use herald_core::headers;
use herald_core::kafka;
use herald_core::registry::{self, StoredSubscription};
use herald_core::subscription::{RetiringSecret, SubscriptionSpec, check_spec};
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{Value, json};

use crate::api::input::{self, FieldError};

use crate::snapshot::{SnapshotError, read_topic};

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionsError {
    #[error("invalid encryption.keys")]
    Keys(#[source] EncryptionError),
    #[error(transparent)]
    Read(#[from] SnapshotError),
    #[error("cannot seal the secrets of {id}")]
    Seal {
        id: String,
        #[source]
        source: EncryptionError,
    },
    #[error("cannot generate random bytes")]
    Random(#[source] EncryptionError),
    #[error("cannot create the Kafka producer")]
    Producer(#[source] KafkaError),
    #[error("writing {id} to {topic} failed")]
    Write {
        id: String,
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
}

/// A subscription on the topic, with its secrets opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub spec: SubscriptionSpec,
    pub created_at: String,
    pub updated_at: String,
    /// Some secret is sealed with a key other than the first of `encryption.keys`.
    pub sealed_with_old_key: bool,
}

/// One step of converging the topic to a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(SubscriptionSpec),
    /// The new spec, when the subscription was created, and the fields that differ.
    Update {
        spec: SubscriptionSpec,
        created_at: String,
        fields: Vec<String>,
    },
    Delete(String),
    /// The same subscription, its secrets sealed again under the current key; times unchanged.
    Reseal(Current),
}

impl Change {
    /// Returns the line that describes the change, without secrets.
    pub fn describe(&self) -> String {
        match self {
            Self::Create(spec) => format!("create  {}", spec.id),
            Self::Update { spec, fields, .. } => {
                format!("update  {}: {}", spec.id, fields.join(", "))
            }
            Self::Delete(id) => format!("delete  {id}"),
            Self::Reseal(current) => format!("reseal  {}", current.spec.id),
        }
    }
}

/// The subscriptions on the topic, the latest record of each.
#[derive(Debug, Default)]
pub struct OnTopic {
    /// By id, with secrets opened.
    pub subscriptions: BTreeMap<String, Current>,
    /// Ids whose record cannot be read or opened with the configured keys; a warning names each.
    pub unreadable: BTreeSet<String>,
}

/// Reads the subscriptions on the topic.
pub fn current(config: &HeraldConfig, keys: &KeyRing) -> Result<OnTopic, SubscriptionsError> {
    let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    read_topic(&config.kafka, &config.topics.subscriptions, |message| {
        if let Some(id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
            latest.insert(id.to_owned(), message.payload().map(<[u8]>::to_vec));
        }
    })?;
    let mut subscriptions = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    for (id, value) in latest {
        let Some(value) = value else {
            continue;
        };
        let stored = match StoredSubscription::decode(&value) {
            Ok(stored) => stored,
            Err(reason) => {
                eprintln!("herald: ignoring the record of {id} on the topic: {reason}");
                unreadable.insert(id);
                continue;
            }
        };
        // One record under a key that is no longer configured must not hide all the others.
        let spec = match registry::open(&stored.subscription, keys) {
            Ok(spec) => spec,
            Err(reason) => {
                eprintln!(
                    "herald: ignoring subscription {id} on the topic: {reason}; add its key to encryption.keys, or delete it"
                );
                unreadable.insert(id);
                continue;
            }
        };
        let sealed = &stored.subscription;
        let sealed_with_old_key = sealed
            .secrets
            .iter()
            .chain(
                sealed
                    .retiring_secrets
                    .iter()
                    .map(|retiring| &retiring.secret),
            )
            .any(|secret| keys.needs_resealing(secret));
        subscriptions.insert(
            id,
            Current {
                spec,
                created_at: stored.created_at,
                updated_at: stored.updated_at,
                sealed_with_old_key,
            },
        );
    }
    Ok(OnTopic {
        subscriptions,
        unreadable,
    })
}

/// Lists the subscriptions to seal again after a new key went first in `encryption.keys`.
pub fn plan_reseal(current: &BTreeMap<String, Current>) -> Vec<Change> {
    current
        .values()
        .filter(|subscription| subscription.sealed_with_old_key)
        .cloned()
        .map(Change::Reseal)
        .collect()
}

/// Lists the changes that make the topic hold exactly `wanted`.
pub fn plan(wanted: &[SubscriptionSpec], current: &BTreeMap<String, Current>) -> Vec<Change> {
    let mut changes = Vec::new();
    for spec in wanted {
        match current.get(&spec.id) {
            None => changes.push(Change::Create(spec.clone())),
            Some(existing) => {
                let fields = differing_fields(&existing.spec, spec);
                if !fields.is_empty() {
                    changes.push(Change::Update {
                        spec: spec.clone(),
                        created_at: existing.created_at.clone(),
                        fields,
                    });
                }
            }
        }
    }
    let kept: BTreeSet<&str> = wanted.iter().map(|spec| spec.id.as_str()).collect();
    changes.extend(
        current
            .keys()
            .filter(|id| !kept.contains(id.as_str()))
            .map(|id| Change::Delete(id.clone())),
    );
    changes
}

/// Names the fields whose values differ, in the order of the JSON form.
pub fn differing_fields(old: &SubscriptionSpec, new: &SubscriptionSpec) -> Vec<String> {
    let as_map = |spec: &SubscriptionSpec| match serde_json::to_value(spec) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(old), as_map(new));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|name| old.get(*name) != new.get(*name))
        .cloned()
        .collect()
}

/// Writes `changes` to the topic, sealing secrets, and waits for every acknowledgement.
pub async fn write(
    config: &HeraldConfig,
    keys: &KeyRing,
    changes: &[Change],
) -> Result<(), SubscriptionsError> {
    let producer = kafka::producer(&config.kafka).map_err(SubscriptionsError::Producer)?;
    let topic = &config.topics.subscriptions;
    let now = herald_core::time::rfc3339(SystemTime::now());
    for change in changes {
        let (id, value) = match change {
            Change::Create(spec) => (&spec.id, Some(stored(spec, keys, &now, &now)?)),
            Change::Update {
                spec, created_at, ..
            } => (&spec.id, Some(stored(spec, keys, created_at, &now)?)),
            Change::Delete(id) => (id, None),
            Change::Reseal(current) => (
                &current.spec.id,
                Some(stored(
                    &current.spec,
                    keys,
                    &current.created_at,
                    &current.updated_at,
                )?),
            ),
        };
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(id);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        send(config, &producer, id, topic, record).await?;
    }
    Ok(())
}

fn stored(
    spec: &SubscriptionSpec,
    keys: &KeyRing,
    created_at: &str,
    updated_at: &str,
) -> Result<Vec<u8>, SubscriptionsError> {
    let sealed = registry::seal(spec, keys).map_err(|source| SubscriptionsError::Seal {
        id: spec.id.clone(),
        source,
    })?;
    Ok(StoredSubscription {
        subscription: sealed,
        created_at: created_at.to_owned(),
        updated_at: updated_at.to_owned(),
    }
    .encode())
}

/// The maximum overlap a rotation may give the old secrets.
pub const MAX_OVERLAP: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Reads a rotation overlap such as `24h` or `0s`, at most [`MAX_OVERLAP`].
pub fn parse_overlap(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(overlap) if overlap <= MAX_OVERLAP => Ok(overlap),
        _ => Err("must be a duration of at most 30 days, such as 24h or 0s".to_owned()),
    }
}

/// Returns `spec` after a secret rotation at `now`: `new_secret` signs from now on, and the
/// current secrets keep signing for `overlap` beside it. With no overlap, only the new secret
/// signs, and earlier retiring secrets are dropped too.
pub fn rotated(
    spec: &SubscriptionSpec,
    new_secret: String,
    overlap: Duration,
    now: SystemTime,
) -> SubscriptionSpec {
    let mut retiring_secrets = Vec::new();
    if !overlap.is_zero() {
        let still_signing = |retiring: &&RetiringSecret| {
            humantime::parse_rfc3339(&retiring.until).is_ok_and(|until| until > now)
        };
        retiring_secrets.extend(spec.retiring_secrets.iter().filter(still_signing).cloned());
        let until = herald_core::time::rfc3339(now + overlap);
        retiring_secrets.extend(spec.secrets.iter().map(|secret| RetiringSecret {
            secret: secret.clone(),
            until: until.clone(),
        }));
    }
    SubscriptionSpec {
        secrets: vec![new_secret],
        retiring_secrets,
        ..spec.clone()
    }
}

/// Fields a merge patch may not touch, with what to do instead.
const FIXED_FIELDS: [(&str, &str); 6] = [
    (
        "id",
        "cannot be changed: create a new subscription and delete this one",
    ),
    (
        "secret",
        "cannot be set here: use POST /v1/subscriptions/{id}/rotate-secret",
    ),
    (
        "secrets",
        "cannot be set here: use POST /v1/subscriptions/{id}/rotate-secret",
    ),
    (
        "retiring_secrets",
        "cannot be set here: use POST /v1/subscriptions/{id}/rotate-secret",
    ),
    ("created_at", "is set by Herald"),
    ("updated_at", "is set by Herald"),
];

/// Returns `spec` changed by a JSON merge patch of its settings, checked as the router and the
/// sender will check it. The id, the secrets and the times cannot be patched, and a URL sent back
/// in its redacted form keeps the URL.
pub fn patched(
    spec: &SubscriptionSpec,
    patch: &Value,
    sender: &SenderConfig,
) -> Result<SubscriptionSpec, Vec<FieldError>> {
    let Some(members) = patch.as_object() else {
        return Err(vec![FieldError {
            path: String::new(),
            message: "the patch must be a JSON object of the fields to change".into(),
        }]);
    };
    let fixed: Vec<FieldError> = FIXED_FIELDS
        .iter()
        .filter(|(name, _)| members.contains_key(*name))
        .map(|(name, message)| FieldError {
            path: (*name).to_owned(),
            message: (*message).to_owned(),
        })
        .collect();
    if !fixed.is_empty() {
        return Err(fixed);
    }
    let mut patch = patch.clone();
    if patch["url"].as_str() == Some(redacted_url(&spec.url).as_str()) {
        patch["url"] = spec.url.clone().into();
    }
    let mut merged = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    input::merge_patch(&mut merged, &patch);
    let changed: SubscriptionSpec = input::from_value(merged)?;
    check_fields(&changed, sender, &[])?;
    Ok(changed)
}

/// Checks a spec as the router and the sender will, renaming paths where the caller's field
/// differs, such as `secrets[0]` for a single `secret`.
pub fn check_fields(
    spec: &SubscriptionSpec,
    sender: &SenderConfig,
    renames: &[(&str, &str)],
) -> Result<(), Vec<FieldError>> {
    let mut problems = Problems::default();
    check_spec(spec, "", sender.allow_plain_http, &mut problems);
    // A URL naming an IP address is checked against the address guard now; a host name is
    // checked each time it is resolved.
    if problems.is_empty()
        && let Some(refusal) = blocked_literal(&spec.url, &sender.allowed_networks)
    {
        problems.add("url", refusal);
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(input::from_problems(&problems)
        .into_iter()
        .map(|mut field| {
            if let Some((_, renamed)) = renames.iter().find(|(from, _)| *from == field.path) {
                field.path = (*renamed).to_owned();
            }
            field
        })
        .collect())
}

/// Returns why the sender would refuse a URL whose host is an IP address, if it would.
fn blocked_literal(url: &str, allowed_networks: &[String]) -> Option<String> {
    let host = url.parse::<http::Uri>().ok()?.host()?.to_owned();
    let address: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let guard = AddressGuard::new(allowed_networks).ok()?;
    guard
        .check(address)
        .err()
        .map(|refusal| refusal.to_string())
}

/// Returns a subscription as the API and `list --output json` show it: no secrets, the URL's query string redacted.
pub fn view(stored: &StoredSubscription) -> Value {
    let spec = &stored.subscription;
    let mut view = serde_json::to_value(spec).unwrap_or_else(|_| json!({}));
    if let Some(object) = view.as_object_mut() {
        object.remove("secrets");
        object.remove("retiring_secrets");
        object.remove("client_key");
        object.insert("url".into(), redacted_url(&spec.url).into());
        object.insert("enabled".into(), spec.enabled.into());
        object.insert("secret_count".into(), spec.secrets.len().into());
        let retiring: Vec<Value> = spec
            .retiring_secrets
            .iter()
            .map(|retiring| json!({"until": retiring.until}))
            .collect();
        object.insert("retiring_secrets".into(), retiring.into());
        object.insert("created_at".into(), stored.created_at.clone().into());
        object.insert("updated_at".into(), stored.updated_at.clone().into());
    }
    view
}

/// The event type of test events.
pub const TEST_EVENT_TYPE: &str = "herald.test";

/// Sends one `herald.test` event to one subscription, whatever its event types, through the
/// deliveries topic, so it is signed, limited, retried and logged like any other delivery.
/// Returns the event id.
pub async fn send_test_event(
    config: &HeraldConfig,
    producer: &kafka::Producer,
    id: &str,
) -> Result<String, SubscriptionsError> {
    let suffix = herald_core::encryption::random_hex(10).map_err(SubscriptionsError::Random)?;
    let event_id = format!("evt_test_{suffix}");
    let now = herald_core::time::rfc3339(SystemTime::now());
    let body = json!({
        "eventId": event_id,
        "eventType": TEST_EVENT_TYPE,
        "timestamp": now,
        "data": {
            "subscriptionId": id,
            "message": "A test event from Herald.",
        },
    })
    .to_string();
    let header = |key, value| Header {
        key,
        value: Some(value),
    };
    let record_headers = OwnedHeaders::new()
        .insert(header(headers::EVENT_ID, event_id.as_str()))
        .insert(header(headers::EVENT_TYPE, TEST_EVENT_TYPE))
        .insert(header(headers::SUBSCRIPTION_ID, id))
        .insert(header(headers::SOURCE, "herald-admin"));
    let record: FutureRecord<'_, str, String> = FutureRecord::to(&config.topics.deliveries)
        .key(id)
        .payload(&body)
        .headers(record_headers);
    send(config, producer, id, &config.topics.deliveries, record).await?;
    Ok(event_id)
}

/// Produces one record about subscription `id` to `topic` and waits for its acknowledgement.
async fn send<P: rdkafka::message::ToBytes + ?Sized>(
    config: &HeraldConfig,
    producer: &kafka::Producer,
    id: &str,
    topic: &str,
    record: FutureRecord<'_, str, P>,
) -> Result<(), SubscriptionsError> {
    producer
        .send(
            record,
            Duration::from_millis(config.kafka.produce_timeout_ms),
        )
        .await
        .map(|_| ())
        .map_err(|(source, _)| SubscriptionsError::Write {
            id: id.to_owned(),
            topic: topic.to_owned(),
            source: Box::new(source),
        })
}

/// Returns `url` without its query string, which may carry a token.
pub fn redacted_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, url: &str) -> SubscriptionSpec {
        SubscriptionSpec::new(id, url, &["payment.*"], vec!["whsec_abc".into()])
    }

    fn current_of(specs: &[SubscriptionSpec]) -> BTreeMap<String, Current> {
        specs
            .iter()
            .map(|spec| {
                (
                    spec.id.clone(),
                    Current {
                        spec: spec.clone(),
                        created_at: "2026-12-01T00:00:00Z".into(),
                        updated_at: "2026-12-01T00:00:00Z".into(),
                        sealed_with_old_key: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn plan_creates_updates_and_deletes() {
        let on_topic = current_of(&[
            spec("ledger", "https://ledger.example.com/a"),
            spec("crm", "https://crm.example.com/a"),
            spec("archive", "https://archive.example.com/a"),
        ]);
        let mut moved = spec("ledger", "https://ledger.example.com/b");
        moved.max_concurrency = Some(5);
        let wanted = [
            moved.clone(),
            spec("crm", "https://crm.example.com/a"),
            spec("risk", "https://risk.example.com/a"),
        ];
        let changes = plan(&wanted, &on_topic);
        let lines: Vec<String> = changes.iter().map(Change::describe).collect();
        assert_eq!(
            lines,
            [
                "update  ledger: max_concurrency, url",
                "create  risk",
                "delete  archive"
            ]
        );
        assert!(plan(&wanted[1..2], &current_of(&wanted[1..2])).is_empty());
    }

    #[test]
    fn rotation_keeps_old_secrets_for_the_overlap_only() {
        let now = humantime::parse_rfc3339("2026-12-04T10:00:00Z").expect("time");
        let mut original = spec("ledger", "https://ledger.example.com/a");
        original.retiring_secrets = vec![
            RetiringSecret {
                secret: "whsec_expired".into(),
                until: "2026-12-04T09:00:00Z".into(),
            },
            RetiringSecret {
                secret: "whsec_older".into(),
                until: "2026-12-04T11:00:00Z".into(),
            },
        ];
        let overlapping = rotated(
            &original,
            "whsec_new".into(),
            Duration::from_secs(3_600),
            now,
        );
        assert_eq!(overlapping.secrets, ["whsec_new"]);
        let retiring: Vec<(&str, &str)> = overlapping
            .retiring_secrets
            .iter()
            .map(|r| (r.secret.as_str(), r.until.as_str()))
            .collect();
        assert_eq!(
            retiring,
            [
                ("whsec_older", "2026-12-04T11:00:00Z"),
                ("whsec_abc", "2026-12-04T11:00:00.000Z")
            ]
        );
        let at_once = rotated(&original, "whsec_new".into(), Duration::ZERO, now);
        assert!(at_once.retiring_secrets.is_empty());
    }

    #[test]
    fn ip_address_urls_meet_the_address_guard() {
        let sender = |allowed: &[&str]| SenderConfig {
            allow_plain_http: true,
            allowed_networks: allowed
                .iter()
                .map(|network| (*network).to_owned())
                .collect(),
            ..SenderConfig::default()
        };
        let valid = |url: &str| SubscriptionSpec {
            secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            ..spec("ledger", url)
        };
        let loopback = valid("http://127.0.0.1:9/hooks");
        let fields = check_fields(&loopback, &sender(&[]), &[]).expect_err("loopback refused");
        assert_eq!(fields[0].path, "url");
        assert!(
            fields[0].message.contains("loopback"),
            "{}",
            fields[0].message
        );
        assert!(check_fields(&loopback, &sender(&["127.0.0.0/8"]), &[]).is_ok());
        let mapped = valid("http://[::ffff:10.1.2.3]/hooks");
        let fields = check_fields(&mapped, &sender(&[]), &[]).expect_err("private refused");
        assert!(
            fields[0].message.contains("private"),
            "{}",
            fields[0].message
        );
        let named = valid("https://hooks.example.com/in");
        assert!(check_fields(&named, &sender(&[]), &[]).is_ok());
    }

    #[test]
    fn redacts_query_strings() {
        assert_eq!(
            redacted_url("https://a.example.com/in?token=s3cret"),
            "https://a.example.com/in?…"
        );
        assert_eq!(
            redacted_url("https://a.example.com/in"),
            "https://a.example.com/in"
        );
    }
}
