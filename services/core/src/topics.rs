//! `herald topics apply`: creates Herald's topics and the configured domain topics, and reports
//! any existing topic whose partition count or settings differ from configuration. Running it
//! again changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{HeraldConfig, KafkaConfig};
use crate::kafka;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Dead letters and rejected events wait for a person: keep them 30 days.
const SIDE_TOPIC_RETENTION_MS: &str = "2592000000";

/// A topic as configuration wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

/// The result of applying one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    Unchanged,
    /// The topic exists but differs; each entry describes one difference.
    Differs(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot create a Kafka admin client")]
    Client(#[source] KafkaError),
    #[error("request to Kafka failed")]
    Request(#[source] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot read the settings of topic {topic}: {code}")]
    Describe {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// Lists the topics the configuration requires.
pub fn plan(config: &HeraldConfig) -> Vec<TopicPlan> {
    let topics = &config.topics;
    let side_topic_config = BTreeMap::from([(
        "retention.ms".to_owned(),
        SIDE_TOPIC_RETENTION_MS.to_owned(),
    )]);
    let mut plans = vec![
        TopicPlan {
            name: topics.deliveries.clone(),
            partitions: topics.deliveries_partitions,
            replication_factor: topics.replication_factor,
            config: BTreeMap::new(),
        },
        TopicPlan {
            name: topics.rejected.clone(),
            partitions: topics.rejected_partitions,
            replication_factor: topics.replication_factor,
            config: side_topic_config.clone(),
        },
        TopicPlan {
            name: topics.dlq.clone(),
            partitions: topics.dlq_partitions,
            replication_factor: topics.replication_factor,
            config: side_topic_config,
        },
    ];
    plans.push(TopicPlan {
        name: topics.subscriptions.clone(),
        partitions: topics.subscriptions_partitions,
        replication_factor: topics.replication_factor,
        // Compaction keeps the latest record per subscription id for ever, and a tombstone
        // until the delete retention (a day) has passed.
        config: BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]),
    });
    plans.push(TopicPlan {
        name: topics.attempts.clone(),
        partitions: topics.attempts_partitions,
        replication_factor: topics.replication_factor,
        config: side_topic_config_for_attempts(),
    });
    // A schedule that fails to build was already reported by the configuration check.
    if let Ok(schedule) = config.retry.schedule() {
        plans.extend(schedule.tiers().iter().map(|tier| TopicPlan {
            name: tier.topic.clone(),
            partitions: config.retry.partitions,
            replication_factor: topics.replication_factor,
            config: BTreeMap::new(),
        }));
    }
    plans.extend(topics.domain.iter().map(|domain| TopicPlan {
        name: domain.name.clone(),
        partitions: domain.partitions,
        replication_factor: topics.replication_factor,
        config: domain.config.clone(),
    }));
    plans
}

/// The attempt log records the history of each delivery for as long as dead letters are kept.
fn side_topic_config_for_attempts() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "retention.ms".to_owned(),
        SIDE_TOPIC_RETENTION_MS.to_owned(),
    )])
}

/// Creates what is missing and compares what exists. Returns one outcome per planned topic.
pub async fn apply(
    kafka_config: &KafkaConfig,
    plans: &[TopicPlan],
) -> Result<Vec<(String, TopicOutcome)>, TopicsError> {
    let admin: AdminClient<DefaultClientContext> = kafka::admin_config(kafka_config)
        .create()
        .map_err(TopicsError::Client)?;
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));

    let configs: Vec<Vec<(String, String)>> = plans
        .iter()
        .map(|plan| {
            plan.config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = plans
        .iter()
        .zip(&configs)
        .map(|(plan, config)| {
            let mut topic = NewTopic::new(
                &plan.name,
                plan.partitions,
                TopicReplication::Fixed(plan.replication_factor),
            );
            for (key, value) in config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(TopicsError::Request)?;

    let mut outcomes = Vec::with_capacity(plans.len());
    for (plan, result) in plans.iter().zip(results) {
        let outcome = match result {
            Ok(_) => TopicOutcome::Created,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                compare(&admin, &options, plan).await?
            }
            Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
        };
        outcomes.push((plan.name.clone(), outcome));
    }
    Ok(outcomes)
}

async fn compare(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    plan: &TopicPlan,
) -> Result<TopicOutcome, TopicsError> {
    let mut differences = Vec::new();

    let metadata = admin
        .inner()
        .fetch_metadata(Some(&plan.name), REQUEST_TIMEOUT)
        .map_err(TopicsError::Request)?;
    if let Some(topic) = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == plan.name)
    {
        let partitions = topic.partitions().len() as i32;
        if partitions != plan.partitions {
            differences.push(format!(
                "has {partitions} partitions, configuration says {}",
                plan.partitions
            ));
        }
    }

    if !plan.config.is_empty() {
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(&plan.name)], options)
            .await
            .map_err(TopicsError::Request)?;
        for result in described {
            let resource = result.map_err(|code| TopicsError::Describe {
                topic: plan.name.clone(),
                code,
            })?;
            for (key, wanted) in &plan.config {
                let actual = resource.get(key).and_then(|entry| entry.value.clone());
                if actual.as_deref() != Some(wanted.as_str()) {
                    differences.push(format!(
                        "{key} is {}, configuration says {wanted}",
                        actual.as_deref().unwrap_or("unset")
                    ));
                }
            }
        }
    }

    Ok(if differences.is_empty() {
        TopicOutcome::Unchanged
    } else {
        TopicOutcome::Differs(differences)
    })
}
