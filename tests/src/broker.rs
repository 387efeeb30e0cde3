//! A Kafka broker of a test's own, from `deploy/local/kafka.sh` in a folder of its own and on
//! free ports, for tests that stop and start the broker. The other tests share one broker.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A single-node broker that this test started; stopped when dropped.
pub struct OwnBroker {
    home: PathBuf,
    port: u16,
    controller_port: u16,
}

impl OwnBroker {
    /// Starts a broker with empty storage under `folder`. The jars of the shared broker are
    /// reused when they are installed, so nothing is downloaded again.
    pub fn start(folder: &Path) -> anyhow::Result<Self> {
        let home = folder.join("kafka");
        std::fs::create_dir_all(&home)?;
        let shared_libs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kafka/libs");
        let libs = home.join("libs");
        if shared_libs.is_dir() && !libs.exists() {
            std::os::unix::fs::symlink(&shared_libs, &libs)
                .with_context(|| format!("linking {}", libs.display()))?;
        }
        let broker = Self {
            home,
            port: free_port()?,
            controller_port: free_port()?,
        };
        broker.run("start", false)?;
        Ok(broker)
    }

    /// `host:port` of the broker, for `kafka.bootstrap_servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker, as an outage would.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run("stop", false)
    }

    /// Starts the broker again on the storage it had, topics and committed offsets included.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.run("start", true)
    }

    fn run(&self, action: &str, keep_data: bool) -> anyhow::Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kafka.sh");
        let output = Command::new(&script)
            .arg(action)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env("HERALD_KAFKA_HOME", &self.home)
            .env("HERALD_KAFKA_PORT", self.port.to_string())
            .env(
                "HERALD_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("HERALD_KAFKA_HEAP", "384m")
            .env("HERALD_KAFKA_KEEP_DATA", if keep_data { "1" } else { "0" })
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "kafka.sh {action} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.run("stop", false);
    }
}

/// Returns a port that nothing listens on at the moment of asking, below Linux's usual range for
/// outgoing connections (32768 and up), so that no client connection takes it while the broker
/// is down.
fn free_port() -> anyhow::Result<u16> {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    // A different starting point per process and call keeps parallel test runs apart.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id() as u16)
        .wrapping_mul(37)
        .wrapping_add(calls.wrapping_mul(101));
    for step in 0..COUNT {
        let port = FIRST + (start.wrapping_add(step) % COUNT);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between {FIRST} and {}", FIRST + COUNT)
}
