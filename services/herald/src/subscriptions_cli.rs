//! `herald subscriptions apply` and `herald subscriptions list`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use herald_admin::subscriptions::{self, Change, Current, redacted_url, view};
use herald_core::config::HeraldConfig;
use herald_core::encryption::{KeyRing, generate_secret};
use herald_core::registry::StoredSubscription;
use herald_core::subscription::{SubscriptionSpec, SubscriptionTable};

#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    /// Make the subscriptions topic hold exactly the subscriptions of a YAML file: create what
    /// is new, update what differs, delete what the file no longer lists.
    Apply {
        /// The YAML file, in the format of config/subscriptions.example.yaml.
        file: PathBuf,
        /// Print the changes without writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the subscriptions on the topic, without their secrets.
    List {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Create a subscription. Its signing secret is generated unless given, and printed once.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        url: String,
        /// An exact type, `prefix.*` or `*`; repeat for more.
        #[arg(long = "event-type", required = true)]
        event_types: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// A `whsec_` secret to use instead of a generated one.
        #[arg(long, env = "HERALD_SUBSCRIPTION_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Show one subscription, without its secrets.
    Get {
        id: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Change a subscription's settings; the next attempt, retries included, uses them.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        /// Replaces the event types; repeat for more.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Any other settings as a JSON merge patch, as the admin API takes it, such as
        /// '{"max_concurrency": 5, "filter": null}'.
        #[arg(long)]
        patch: Option<String>,
    },
    /// Send one herald.test event to a subscription, whatever its event types.
    Test { id: String },
    /// Seal every secret again under the first key of encryption.keys, after a new key was put
    /// first. Once nothing is left to reseal, the old key can be removed.
    Reseal {
        /// Print the subscriptions to reseal without writing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Let a subscription receive deliveries again.
    Enable { id: String },
    /// Stop a subscription's deliveries; it stays on the topic.
    Disable { id: String },
    /// Delete a subscription (a tombstone on the topic).
    Delete { id: String },
    /// Replace a subscription's signing secret with a generated one, printed once. The old
    /// secrets keep signing beside it for the overlap, so receivers can switch without a gap.
    RotateSecret {
        id: String,
        /// How long the old secrets keep signing, at most 30 days, such as 24h; 0s drops them at once.
        #[arg(long, default_value = "24h", value_parser = subscriptions::parse_overlap)]
        overlap: std::time::Duration,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub async fn run(config: &HeraldConfig, command: SubscriptionsCommand) -> anyhow::Result<ExitCode> {
    let keys = config
        .encryption
        .key_ring()
        .context("encryption.keys: set the keys that seal secrets (HERALD__ENCRYPTION__KEYS)")?;
    let on_topic = subscriptions::current(config, &keys)?;
    let current = on_topic.subscriptions;
    let existing = |id: &str| -> anyhow::Result<&Current> {
        current.get(id).ok_or_else(|| {
            anyhow::anyhow!("no subscription {id:?} on {}", config.topics.subscriptions)
        })
    };
    match command {
        SubscriptionsCommand::Apply { file, dry_run } => {
            let wanted = SubscriptionTable::read_file(&file, config.sender.allow_plain_http)
                .with_context(|| format!("reading {}", file.display()))?;
            let changes = subscriptions::plan(&wanted, &current);
            for change in &changes {
                println!("{}", change.describe());
            }
            let count = |kind: fn(&Change) -> bool| changes.iter().filter(|c| kind(c)).count();
            let summary = format!(
                "{} to create, {} to update, {} to delete, {} unchanged",
                count(|c| matches!(c, Change::Create(_))),
                count(|c| matches!(c, Change::Update { .. })),
                count(|c| matches!(c, Change::Delete(_))),
                wanted.len() - count(|c| !matches!(c, Change::Delete(_))),
            );
            if dry_run {
                println!("{summary} (dry run: nothing written)");
            } else {
                subscriptions::write(config, &keys, &changes).await?;
                println!("{summary}: written to {}", config.topics.subscriptions);
            }
        }
        SubscriptionsCommand::List { output } => {
            for (id, subscription) in &current {
                let spec = &subscription.spec;
                match output {
                    Output::Text => println!(
                        "{id:<24} {:<8} {:<40} {}",
                        if spec.enabled { "enabled" } else { "disabled" },
                        spec.event_types.join(","),
                        redacted_url(&spec.url)
                    ),
                    Output::Json => println!("{}", view(&stored_form(subscription))),
                }
            }
        }
        SubscriptionsCommand::Create {
            id,
            url,
            event_types,
            description,
            secret,
        } => {
            anyhow::ensure!(
                !current.contains_key(&id),
                "subscription {id:?} already exists"
            );
            let generated = secret.is_none();
            let secret = match secret {
                Some(secret) => secret,
                None => generate_secret()?,
            };
            let types: Vec<&str> = event_types.iter().map(String::as_str).collect();
            let spec = SubscriptionSpec {
                description,
                ..SubscriptionSpec::new(&id, &url, &types, vec![secret.clone()])
            };
            write_checked(config, &keys, Change::Create(spec)).await?;
            println!("created {id}");
            if generated {
                println!("secret: {secret}   (shown once: give it to the receiver now)");
            }
        }
        SubscriptionsCommand::Get { id, output } => {
            let subscription = existing(&id)?;
            let described = view(&stored_form(subscription));
            match output {
                Output::Json => println!("{described}"),
                Output::Text => println!("{}", serde_json::to_string_pretty(&described)?),
            }
        }
        SubscriptionsCommand::Update {
            id,
            url,
            event_types,
            description,
            patch,
        } => {
            let subscription = existing(&id)?;
            let mut merged = match patch {
                Some(text) => serde_json::from_str(&text).context("--patch is not valid JSON")?,
                None => serde_json::json!({}),
            };
            anyhow::ensure!(
                merged.is_object(),
                "--patch must be a JSON object, such as '{{\"max_concurrency\": 5}}'"
            );
            if let Some(url) = url {
                merged["url"] = url.into();
            }
            if !event_types.is_empty() {
                merged["event_types"] = event_types.into();
            }
            if let Some(description) = description {
                merged["description"] = description.into();
            }
            let spec = subscriptions::patched(&subscription.spec, &merged, &config.sender)
                .map_err(invalid)?;
            let fields = subscriptions::differing_fields(&subscription.spec, &spec);
            if fields.is_empty() {
                println!("{id} is unchanged");
                return Ok(ExitCode::SUCCESS);
            }
            let change = Change::Update {
                spec,
                created_at: subscription.created_at.clone(),
                fields: fields.clone(),
            };
            subscriptions::write(config, &keys, &[change]).await?;
            println!("updated {id}: {}", fields.join(", "));
        }
        SubscriptionsCommand::Test { id } => {
            let subscription = existing(&id)?;
            anyhow::ensure!(
                subscription.spec.enabled,
                "subscription {id:?} is disabled: enable it first"
            );
            let producer = herald_core::kafka::producer(&config.kafka)
                .context("cannot create the Kafka producer")?;
            let event_id = subscriptions::send_test_event(config, &producer, &id).await?;
            println!("sent {} {event_id}", subscriptions::TEST_EVENT_TYPE);
            println!("follow it with: herald history {id}:{event_id}");
        }
        SubscriptionsCommand::Reseal { dry_run } => {
            let changes = subscriptions::plan_reseal(&current);
            for change in &changes {
                println!("{}", change.describe());
            }
            if dry_run {
                println!("{} to reseal (dry run: nothing written)", changes.len());
            } else {
                subscriptions::write(config, &keys, &changes).await?;
                println!("{} resealed under the current key", changes.len());
            }
            if !on_topic.unreadable.is_empty() {
                anyhow::bail!(
                    "{} subscriptions cannot be opened with encryption.keys; keep their old key",
                    on_topic.unreadable.len()
                );
            }
        }
        SubscriptionsCommand::Enable { id } => {
            set_enabled(config, &keys, existing(&id)?, true).await?;
        }
        SubscriptionsCommand::Disable { id } => {
            set_enabled(config, &keys, existing(&id)?, false).await?;
        }
        SubscriptionsCommand::Delete { id } => {
            // A record that cannot be opened can still be deleted.
            if !on_topic.unreadable.contains(&id) {
                existing(&id)?;
            }
            subscriptions::write(config, &keys, &[Change::Delete(id.clone())]).await?;
            println!("deleted {id}");
        }
        SubscriptionsCommand::RotateSecret { id, overlap } => {
            let subscription = existing(&id)?;
            let secret = generate_secret()?;
            let spec = subscriptions::rotated(
                &subscription.spec,
                secret.clone(),
                overlap,
                std::time::SystemTime::now(),
            );
            write_checked(
                config,
                &keys,
                Change::Update {
                    spec,
                    created_at: subscription.created_at.clone(),
                    fields: vec!["secrets".into()],
                },
            )
            .await?;
            if overlap.is_zero() {
                println!("rotated the secret of {id}; the old ones stopped signing");
            } else {
                println!(
                    "rotated the secret of {id}; the old ones sign for {} more",
                    humantime::format_duration(overlap)
                );
            }
            println!("secret: {secret}   (shown once: give it to the receiver now)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns a subscription in the form stored on the topic, for [`view`].
fn stored_form(subscription: &Current) -> StoredSubscription {
    StoredSubscription {
        subscription: subscription.spec.clone(),
        created_at: subscription.created_at.clone(),
        updated_at: subscription.updated_at.clone(),
    }
}

async fn set_enabled(
    config: &HeraldConfig,
    keys: &KeyRing,
    subscription: &Current,
    enabled: bool,
) -> anyhow::Result<()> {
    let state = if enabled { "enabled" } else { "disabled" };
    let id = &subscription.spec.id;
    if subscription.spec.enabled == enabled {
        println!("{id} is already {state}");
        return Ok(());
    }
    let spec = SubscriptionSpec {
        enabled,
        ..subscription.spec.clone()
    };
    let change = Change::Update {
        spec,
        created_at: subscription.created_at.clone(),
        fields: vec!["enabled".into()],
    };
    write_checked(config, keys, change).await?;
    println!("{state} {id}");
    Ok(())
}

/// Checks the subscription a change writes, as the admin API checks it, then writes it.
async fn write_checked(
    config: &HeraldConfig,
    keys: &KeyRing,
    change: Change,
) -> anyhow::Result<()> {
    if let Change::Create(spec) | Change::Update { spec, .. } = &change {
        subscriptions::check_fields(spec, &config.sender, &[]).map_err(invalid)?;
    }
    subscriptions::write(config, keys, &[change]).await?;
    Ok(())
}

/// Turns the bad fields of a subscription into one error, a line per field.
fn invalid(fields: Vec<herald_admin::api::input::FieldError>) -> anyhow::Error {
    let lines: Vec<String> = fields
        .iter()
        .map(|field| format!("  {}: {}", field.path, field.message))
        .collect();
    anyhow::anyhow!("invalid subscription:\n{}", lines.join("\n"))
}
