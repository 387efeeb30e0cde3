//! The operator commands: `herald dlq list`, `herald dlq redrive` and `herald history`.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use herald_admin::dlq::{self, DeadLetter, Filter, REASONS};
use herald_admin::history;
use herald_core::config::HeraldConfig;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first within each partition.
    List {
        #[command(flatten)]
        filter: FilterArguments,
        /// `json` prints one JSON object per line instead of a table.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// The same as --output json.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the deliveries topic, where the retry schedule starts again.
    Redrive {
        #[command(flatten)]
        filter: FilterArguments,
        /// Only list what would be redriven.
        #[arg(long)]
        dry_run: bool,
        /// Redrive every dead letter; required when no filter is given.
        #[arg(long)]
        all: bool,
    },
}

/// The output format of a listing command.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args)]
pub struct FilterArguments {
    /// Only this subscription.
    #[arg(long)]
    subscription: Option<String>,
    /// Only this event type, or a family such as `payment.*`.
    #[arg(long)]
    event_type: Option<String>,
    /// Only this reason.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(REASONS))]
    reason: Option<String>,
    /// Only dead letters written at or after this RFC 3339 time, such as 2026-12-04T10:00:00Z.
    #[arg(long, value_parser = parse_time)]
    since: Option<SystemTime>,
    /// Only dead letters written before this RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    until: Option<SystemTime>,
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text).map_err(|error| {
        format!("invalid time {text:?} ({error}): use RFC 3339, such as 2026-12-04T10:00:00Z")
    })
}

impl From<FilterArguments> for Filter {
    fn from(arguments: FilterArguments) -> Self {
        Filter {
            subscription_id: arguments.subscription,
            event_type: arguments.event_type,
            reason: arguments.reason,
            since: arguments.since,
            until: arguments.until,
        }
    }
}

pub async fn run_dlq(config: &HeraldConfig, command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            filter,
            output,
            json,
        } => {
            let json = json || output == Output::Json;
            let found = dlq::list(config, &filter.into())?;
            print_dead_letters(&found, json)?;
            if !json {
                println!("{} dead letters", found.len());
            }
        }
        DlqCommand::Redrive {
            filter,
            dry_run,
            all,
        } => {
            let filter: Filter = filter.into();
            anyhow::ensure!(
                all || !filter.is_empty(),
                "give at least one filter (--subscription, --event-type, --reason, --since, --until), or --all to redrive every dead letter"
            );
            let found = dlq::redrive(config, &filter, dry_run).await?;
            print_dead_letters(&found, false)?;
            let verb = if dry_run {
                "would be redriven"
            } else {
                "redriven"
            };
            println!(
                "{} dead letters {verb} to {}",
                found.len(),
                config.topics.deliveries
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_dead_letters(found: &[DeadLetter], json: bool) -> anyhow::Result<()> {
    if json {
        for dead_letter in found {
            println!("{}", serde_json::to_string(dead_letter)?);
        }
        return Ok(());
    }
    if found.is_empty() {
        return Ok(());
    }
    println!(
        "{}",
        row([
            "position",
            "subscription",
            "event id",
            "event type",
            "reason",
            "attempts",
            "status",
            "dead-lettered at",
        ])
    );
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    for letter in found {
        let position = format!("{}/{}", letter.partition, letter.offset);
        let attempts = letter
            .attempts
            .map_or_else(|| "-".to_owned(), |n| n.to_string());
        // The status, or the class of the last error (the part before its first colon).
        let last = letter.last_status.clone().or_else(|| {
            letter
                .last_error
                .as_ref()
                .and_then(|e| e.split(':').next())
                .map(str::to_owned)
        });
        println!(
            "{}",
            row([
                &position,
                &text(&letter.subscription_id),
                &text(&letter.event_id),
                &text(&letter.event_type),
                &text(&letter.reason),
                &attempts,
                &text(&last),
                &text(&letter.dead_lettered_at),
            ])
        );
    }
    Ok(())
}

/// Formats one line of the dead-letter table.
fn row(cells: [&str; 8]) -> String {
    let [
        position,
        subscription,
        event_id,
        event_type,
        reason,
        attempts,
        status,
        at,
    ] = cells;
    format!(
        "{position:<12} {subscription:<16} {event_id:<28} {event_type:<26} {reason:<24} {attempts:>8} {status:<8} {at}"
    )
}

/// Shows every attempt of one delivery, `<subscription id>:<event id>`.
pub fn run_history(
    config: &HeraldConfig,
    delivery_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        delivery_id.contains(':'),
        "invalid delivery id {delivery_id:?}: write <subscription id>:<event id>, such as ledger:evt_8d2ab5402d0705275f3f"
    );
    let attempts = history::attempts(config, delivery_id)?;
    if attempts.is_empty() {
        println!(
            "no attempts recorded for {delivery_id} in {}",
            config.topics.attempts
        );
        return Ok(ExitCode::FAILURE);
    }
    for record in &attempts {
        if json {
            println!("{record}");
            continue;
        }
        let field = |name: &str| match &record[name] {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        println!(
            "attempt {:<3} {}  {:>6} ms  status {:<4} error {:<10} -> {}{}",
            field("attempt"),
            field("attemptedAt"),
            field("durationMs"),
            field("status"),
            field("errorClass"),
            field("outcome"),
            match field("nextTier").as_str() {
                "-" => String::new(),
                tier => format!(" (tier {tier}, due {})", field("dueAt")),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
