//! The `herald` command: runs one Herald service (router or sender) or applies topics.
//! Only wiring lives here; each service's behaviour is in its own crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use herald_core::config::{HeraldConfig, SubscriptionSource};
use herald_core::registry::{self, Subscriptions};
use herald_core::subscription::SubscriptionTable;
use herald_core::telemetry::Telemetry;
use herald_core::topics::{self, TopicOutcome};

mod operator;
mod subscriptions_cli;

#[derive(Parser)]
#[command(name = "herald", version, about = "Kafka-native webhook delivery")]
struct Cli {
    /// Configuration file (TOML or YAML). Every key can also be set as HERALD__SECTION__KEY.
    #[arg(long, short, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Route events from domain topics to deliveries, one per matching subscription.
    Router,
    /// Send deliveries to subscription endpoints as signed webhooks.
    Sender,
    /// Serve the admin HTTP API: subscriptions and dead letters, with bearer tokens.
    Admin,
    /// Manage Herald's Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Inspect and redrive dead letters.
    Dlq {
        #[command(subcommand)]
        command: operator::DlqCommand,
    },
    /// Manage the subscriptions topic.
    Subscriptions {
        #[command(subcommand)]
        command: subscriptions_cli::SubscriptionsCommand,
    },
    /// Show every attempt of one delivery from the attempt log.
    History {
        /// The delivery id: `<subscription id>:<event id>`.
        delivery_id: String,
        /// `json` prints one JSON object per attempt.
        #[arg(long, value_enum, default_value_t = operator::Output::Text)]
        output: operator::Output,
        /// The same as --output json.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create missing topics and report existing ones whose settings differ (exit code 1).
    Apply,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Before logging is set up, errors go to standard error as plain text.
    let config = match HeraldConfig::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("herald: {:#}", anyhow::Error::from(error));
            return ExitCode::FAILURE;
        }
    };
    herald_core::logging::init(&config.log);
    let service = matches!(
        cli.command,
        Command::Router | Command::Sender | Command::Admin
    );
    let bootstrap_servers = config.kafka.bootstrap_servers.clone();
    match runtime
        .block_on(run(cli.command, config))
        .map_err(|error| name_the_cluster(error, &bootstrap_servers))
    {
        Ok(code) => code,
        // A service's end belongs in its log; a command's error goes to its user.
        Err(error) if service => {
            tracing::error!(error = %format!("{error:#}"), "herald stopped");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("herald: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Adds the configured bootstrap address to an error that came from Kafka, so that an
/// unreachable or misnamed cluster is recognised at once. An invalid client setting is named
/// as such instead.
fn name_the_cluster(error: anyhow::Error, bootstrap_servers: &str) -> anyhow::Error {
    let kafka_error = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<rdkafka::error::KafkaError>());
    if let Some(rdkafka::error::KafkaError::ClientConfig(..)) = kafka_error {
        return error.context(
            "invalid librdkafka setting: check kafka.client, kafka.consumer and kafka.producer",
        );
    }
    if kafka_error.is_some() {
        error.context(format!(
            "Kafka at kafka.bootstrap_servers = {bootstrap_servers}"
        ))
    } else {
        error
    }
}

async fn run(command: Command, config: HeraldConfig) -> anyhow::Result<ExitCode> {
    // Two rustls crypto providers can end up in the dependency graph; pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();

    match command {
        Command::Router => {
            let telemetry = start_telemetry(&config, "herald-router").await?;
            let subscriptions = load_subscriptions(&config).await?;
            observe_subscriptions(&subscriptions);
            let result = herald_router::run(
                &config,
                subscriptions,
                shutdown_signal(Duration::from_millis(config.router.shutdown_timeout_ms)),
            )
            .await;
            telemetry.shutdown();
            result?;
        }
        Command::Sender => {
            let telemetry = start_telemetry(&config, "herald-sender").await?;
            let subscriptions = load_subscriptions(&config).await?;
            observe_subscriptions(&subscriptions);
            let result = herald_sender::run(
                &config,
                subscriptions,
                shutdown_signal(Duration::from_millis(config.sender.shutdown_timeout_ms)),
            )
            .await;
            telemetry.shutdown();
            result?;
        }
        Command::Admin => {
            let telemetry = start_telemetry(&config, "herald-admin").await?;
            let result = serve_admin(config).await;
            telemetry.shutdown();
            result?;
        }
        Command::Topics {
            command: TopicsCommand::Apply,
        } => return apply_topics(&config).await,
        Command::Dlq { command } => return operator::run_dlq(&config, command).await,
        Command::Subscriptions { command } => {
            return subscriptions_cli::run(&config, command).await;
        }
        Command::History {
            delivery_id,
            output,
            json,
        } => {
            let json = json || output == operator::Output::Json;
            return operator::run_history(&config, &delivery_id, json);
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Installs the metrics exporters and, with `telemetry.listen`, serves `/metrics`, `/healthz`
/// and `/readyz` for as long as the process runs.
async fn start_telemetry(
    config: &HeraldConfig,
    service: &'static str,
) -> anyhow::Result<Telemetry> {
    let telemetry = Telemetry::init(&config.telemetry, service)?;
    if let Some(listen) = &config.telemetry.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on telemetry.listen = {listen}"))?;
        tracing::info!(
            listen = %listener.local_addr().map_or_else(|_| listen.clone(), |a| a.to_string()),
            "metrics and health endpoints listening"
        );
        tokio::spawn(herald_core::telemetry::serve(
            listener,
            telemetry.registry(),
            std::future::pending(),
        ));
    }
    Ok(telemetry)
}

/// Reports the number of subscriptions in the current table as a gauge.
fn observe_subscriptions(subscriptions: &Subscriptions) {
    let subscriptions = subscriptions.clone();
    // The callback stays registered with the meter provider once the gauge is built.
    let _ = opentelemetry::global::meter(herald_core::telemetry::METER)
        .u64_observable_gauge("herald.subscriptions")
        .with_unit("{subscription}")
        .with_description("Subscriptions in the table this process uses")
        .with_callback(move |observer| observer.observe(subscriptions.current().len() as u64, &[]))
        .build();
}

/// Reads the subscriptions from the file, or from the topic and then follows it.
async fn load_subscriptions(config: &HeraldConfig) -> anyhow::Result<Subscriptions> {
    if config.subscriptions.source == SubscriptionSource::Topic {
        return registry::follow(config).await.with_context(|| {
            format!(
                "reading subscriptions (topics.subscriptions = {})",
                config.topics.subscriptions
            )
        });
    }
    let path: &Path = &config.subscriptions.file;
    let table =
        SubscriptionTable::load(path, config.sender.allow_plain_http).with_context(|| {
            format!(
                "loading subscriptions (subscriptions.file = {})",
                path.display()
            )
        })?;
    tracing::info!(file = %path.display(), subscriptions = table.len(), "subscriptions loaded");
    Ok(Subscriptions::fixed(table))
}

/// Follows the subscriptions topic and serves the admin API until a shutdown signal.
async fn serve_admin(config: HeraldConfig) -> anyhow::Result<()> {
    let tokens = config
        .admin
        .roles()
        .map_err(|problems| anyhow::anyhow!("invalid admin.tokens:\n{problems}"))?;
    anyhow::ensure!(
        !tokens.is_empty(),
        "admin.tokens: give at least one token, such as HERALD__ADMIN__TOKENS=admin:$(openssl rand -hex 32)"
    );
    let keys = config
        .encryption
        .key_ring()
        .context("encryption.keys: set the keys that seal secrets (HERALD__ENCRYPTION__KEYS)")?;
    let subscriptions = registry::follow(&config).await.with_context(|| {
        format!(
            "reading subscriptions (topics.subscriptions = {})",
            config.topics.subscriptions
        )
    })?;
    herald_core::telemetry::mark_started();
    let producer =
        herald_core::kafka::producer(&config.kafka).context("cannot create the Kafka producer")?;
    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen = {}", config.admin.listen))?;
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|_| config.admin.listen.clone(), |a| a.to_string()),
        tokens = tokens.len(),
        "admin API listening"
    );
    let state = herald_admin::api::ApiState::new(config, keys, subscriptions, producer, tokens);
    herald_admin::api::serve(
        std::sync::Arc::new(state),
        listener,
        shutdown_signal(Duration::ZERO),
    )
    .await?;
    Ok(())
}

async fn apply_topics(config: &HeraldConfig) -> anyhow::Result<ExitCode> {
    let outcomes = topics::apply(&config.kafka, &topics::plan(config)).await?;
    let mut differs = false;
    for (topic, outcome) in outcomes {
        match outcome {
            TopicOutcome::Created => println!("created   {topic}"),
            TopicOutcome::Unchanged => println!("unchanged {topic}"),
            TopicOutcome::Differs(differences) => {
                differs = true;
                for difference in differences {
                    println!("differs   {topic}: {difference}");
                }
            }
        }
    }
    Ok(if differs {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// How long closing the Kafka clients may take after the work in flight is finished. With every
/// broker down librdkafka can wait far longer to close, so the process exits then anyway: the
/// offsets are committed by that time, or their records are read again by the next owner.
const CLOSE_ALLOWANCE: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM (as Kubernetes sends) or Ctrl-C. From then on the process ends within
/// `finish_timeout` (the service's shutdown timeout) plus [`CLOSE_ALLOWANCE`], so that it stops
/// inside the pod's termination grace period even with Kafka down.
async fn shutdown_signal(finish_timeout: Duration) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    let limit = finish_timeout + CLOSE_ALLOWANCE;
    let watchdog = std::thread::Builder::new()
        .name("shutdown-limit".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "Kafka clients still closing at the shutdown limit: exiting without them"
            );
            std::process::exit(0);
        });
    if let Err(error) = watchdog {
        tracing::warn!(%error, "cannot start the shutdown limit; stopping may take longer");
    }
}
