//! `herald subscriptions apply` and `herald subscriptions list`: the subscriptions topic from
//! the command line. Apply converges the topic to a YAML file: it creates what the file adds,
//! updates what differs, and deletes (with a tombstone) what the file no longer has, so a team
//! can keep its subscriptions in git. A dry run prints the same plan and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};

use herald_core::config::HeraldConfig;
use herald_core::encryption::{EncryptionError, KeyRing};
use herald_core::kafka;
use herald_core::registry::{self, StoredSubscription};
use herald_core::subscription::{RetiringSecret, SubscriptionSpec};

use crate::snapshot::{SnapshotError, read_topic};

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionsError {
    #[error("invalid encryption.keys")]
    Keys(#[source] EncryptionError),
    #[error(transparent)]
    Read(#[from] SnapshotError),
    #[error("subscription {id} on the topic cannot be opened")]
    Open {
        id: String,
        #[source]
        source: EncryptionError,
    },
    #[error("cannot seal the secrets of {id}")]
    Seal {
        id: String,
        #[source]
        source: EncryptionError,
    },
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
#[derive(Debug, Clone)]
pub struct Current {
    pub spec: SubscriptionSpec,
    pub created_at: String,
    pub updated_at: String,
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
        }
    }
}

/// Reads the subscriptions on the topic, by id, the latest record of each.
pub fn current(
    config: &HeraldConfig,
    keys: &KeyRing,
) -> Result<BTreeMap<String, Current>, SubscriptionsError> {
    let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    read_topic(&config.kafka, &config.topics.subscriptions, |message| {
        if let Some(id) = message.key().and_then(|key| std::str::from_utf8(key).ok()) {
            latest.insert(id.to_owned(), message.payload().map(<[u8]>::to_vec));
        }
    })?;
    let mut subscriptions = BTreeMap::new();
    for (id, value) in latest {
        let Some(value) = value else {
            continue;
        };
        let stored = match StoredSubscription::decode(&value) {
            Ok(stored) => stored,
            Err(reason) => {
                eprintln!("herald: ignoring the record of {id} on the topic: {reason}");
                continue;
            }
        };
        let spec = registry::open(&stored.subscription, keys).map_err(|source| {
            SubscriptionsError::Open {
                id: id.clone(),
                source,
            }
        })?;
        subscriptions.insert(
            id,
            Current {
                spec,
                created_at: stored.created_at,
                updated_at: stored.updated_at,
            },
        );
    }
    Ok(subscriptions)
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
fn differing_fields(old: &SubscriptionSpec, new: &SubscriptionSpec) -> Vec<String> {
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
    let producer: FutureProducer = kafka::producer_config(&config.kafka)
        .create()
        .map_err(SubscriptionsError::Producer)?;
    let topic = &config.topics.subscriptions;
    let now = herald_core::time::rfc3339(SystemTime::now());
    for change in changes {
        let (id, value) = match change {
            Change::Create(spec) => (&spec.id, Some(stored(spec, keys, &now, &now)?)),
            Change::Update {
                spec, created_at, ..
            } => (&spec.id, Some(stored(spec, keys, created_at, &now)?)),
            Change::Delete(id) => (id, None),
        };
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(id);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        producer
            .send(
                record,
                Duration::from_millis(config.kafka.produce_timeout_ms),
            )
            .await
            .map_err(|(source, _)| SubscriptionsError::Write {
                id: id.clone(),
                topic: topic.clone(),
                source: Box::new(source),
            })?;
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
