//! `herald subscriptions apply` and `herald subscriptions list`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use herald_admin::subscriptions::{self, Change, redacted_url};
use herald_core::config::HeraldConfig;
use herald_core::subscription::SubscriptionTable;

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
    let current = subscriptions::current(config, &keys)?;
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
                    Output::Json => {
                        let mut line = serde_json::to_value(spec)?;
                        if let Some(object) = line.as_object_mut() {
                            object.remove("secrets");
                            object.insert("url".into(), redacted_url(&spec.url).into());
                            object.insert("secretCount".into(), spec.secrets.len().into());
                            object
                                .insert("createdAt".into(), subscription.created_at.clone().into());
                            object
                                .insert("updatedAt".into(), subscription.updated_at.clone().into());
                        }
                        println!("{line}");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
