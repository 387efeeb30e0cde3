//! `herald-loadtest`: drives Herald through real Kafka and real HTTP with a scenario from
//! `loadtest/scenarios/`, and writes a report (JSON, Markdown and an SVG chart). Exits non-zero
//! when deliveries are missing, signatures fail, or a threshold of the scenario is missed.

mod ceiling;
mod procstat;
mod report;
mod run;
mod scenario;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use scenario::LoadScenario;

#[derive(Parser)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Load-test Herald and report throughput and latency"
)]
struct Arguments {
    /// Scenario files to run in order, such as loadtest/scenarios/fanout-10.toml.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Folder for the reports; each run writes <folder>/<scenario>/report.{json,md} and chart.svg.
    #[arg(long, default_value = "out/loadtest")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald-loadtest: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped, and with it the Herald processes it started.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run_all(arguments) => outcome,
            () = interrupted() => Err(anyhow::anyhow!("interrupted: stopped the Herald processes of this run")),
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("herald-loadtest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn run_all(arguments: Arguments) -> anyhow::Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let commit = current_commit();
    // Every file is checked before the first run, so a typo in the last one is found at once.
    let scenarios = arguments
        .scenarios
        .iter()
        .map(|path| LoadScenario::load(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bootstrap = herald_tests::kafka::bootstrap_servers();
    eprintln!("using the Kafka broker at {bootstrap} (set KAFKA_BOOTSTRAP_SERVERS to change it)");
    let mut all_passed = true;
    for scenario in scenarios {
        let report = run::run(&scenario, &commit).await.with_context(|| {
            format!("scenario {} failed to run; is the broker at {bootstrap} running (deploy/local/kafka.sh start)?", scenario.name)
        })?;
        let folder = arguments.out.join(&scenario.name);
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("creating {}", folder.display()))?;
        std::fs::write(
            folder.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(folder.join("report.md"), report.markdown())?;
        std::fs::write(folder.join("chart.svg"), report.svg())?;
        println!("{}", report.markdown());
        println!("Report written to {}", folder.display());
        all_passed &= report.passed();
    }
    Ok(all_passed)
}

/// Returns the short commit of the working tree, or "unknown" outside a git checkout.
fn current_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
