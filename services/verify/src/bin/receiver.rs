//! `herald-receiver`: a webhook endpoint on loopback that verifies Herald's requests, drops
//! repeated ids, and prints its counts when stopped. For demos and for trying Herald locally.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Parser;

use herald_verify::receiver::{Receiver, ReceiverOptions};
use herald_verify::{Secret, Verifier};

#[derive(Parser)]
#[command(
    name = "herald-receiver",
    version,
    about = "Verify and count Herald webhooks"
)]
struct Arguments {
    /// Address to listen on; port 0 picks a free port, printed at start.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Signing secret (whsec_...); repeat it during a rotation. Read from HERALD_RECEIVER_SECRET
    /// when not given, so it need not appear in the process list.
    #[arg(
        long = "secret",
        env = "HERALD_RECEIVER_SECRET",
        required = true,
        hide_env_values = true
    )]
    secrets: Vec<String>,
    /// Name shown in the log lines.
    #[arg(long, default_value = "receiver")]
    name: String,
    /// Append every request to this JSON-lines file.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let secrets = arguments
        .secrets
        .iter()
        .enumerate()
        .map(|(position, text)| {
            Secret::parse(text).with_context(|| format!("secret {}", position + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listener = tokio::net::TcpListener::bind(arguments.listen)
        .await
        .with_context(|| format!("cannot listen on {}", arguments.listen))?;
    let receiver = Receiver::start(
        listener,
        ReceiverOptions {
            name: arguments.name.clone(),
            verifier: Verifier::new(secrets)?,
            keep_requests: false,
            log_file: arguments.log_file,
            hook: None,
        },
    )?;
    println!(
        "{} listening on http://{}",
        arguments.name,
        receiver.address()
    );

    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    let counts = receiver.counts();
    println!(
        "{}: {} requests, {} verified, {} duplicates, {} invalid",
        arguments.name,
        counts.requests.load(Ordering::Relaxed),
        counts.verified.load(Ordering::Relaxed),
        counts.duplicates.load(Ordering::Relaxed),
        counts.invalid.load(Ordering::Relaxed)
    );
    Ok(())
}
