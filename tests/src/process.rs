//! Herald's services as child processes, so tests can stop them the way Kubernetes does
//! (SIGTERM) or the way a crash does (SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Returns the path of a binary built from this workspace, next to the test executable.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe()?;
    // Tests run from target/<profile>/deps, binaries from target/<profile>.
    for folder in executable.ancestors().skip(1).take(2) {
        let candidate = folder.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "{name} is not built next to {}: run `cargo build --workspace --bins` first (with --release for a release build of the harness)",
        executable.display()
    )
}

/// A running `herald router` or `herald sender`, stopped with SIGKILL when dropped.
pub struct HeraldProcess {
    child: Child,
    role: String,
    log: PathBuf,
}

impl HeraldProcess {
    /// Starts `herald <role> --config <config>` with extra environment variables, logging to
    /// `<log_folder>/<role>.log` (`<role>-2.log` for a restart, and so on).
    pub fn start(
        role: &str,
        config: &Path,
        log_folder: &Path,
        environment: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = workspace_binary("herald")?;
        let mut log = log_folder.join(format!("{role}.log"));
        let mut generation = 1;
        while log.exists() {
            generation += 1;
            log = log_folder.join(format!("{role}-{generation}.log"));
        }
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&binary)
            .arg(role)
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {} {role}", binary.display()))?;
        Ok(Self {
            child,
            role: role.to_owned(),
            log,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once, as a crash or an evicted pod would end.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().ok();
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns whether it exited with 0.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.id());
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if std::time::Instant::now() >= deadline {
                self.kill()?;
                anyhow::bail!("herald {} did not stop within {timeout:?}", self.role);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if the process has exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "herald {} exited with {status}; log:\n{}",
                self.role,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Returns `router`, `sender` or whichever command the process runs.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Checks that the process runs and read `count` subscriptions from the topic at start-up.
    pub fn check_table_read(&mut self, count: usize) -> anyhow::Result<()> {
        self.check_running()?;
        anyhow::ensure!(
            self.log_contains("subscriptions read from the topic")
                && self.log_contains(&format!("subscriptions={count}\n")),
            "herald {} did not read {count} subscriptions from the topic:\n{}",
            self.role,
            self.log_tail()
        );
        Ok(())
    }

    /// Returns the `listen=` address of the first log line containing `marker`, such as the
    /// address a service bound for `127.0.0.1:0`.
    pub fn logged_address(&self, marker: &str) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines()
            .find(|line| line.contains(marker))
            .and_then(|line| line.split("listen=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Returns whether the process's log contains `text`.
    pub fn log_contains(&self, text: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains(text))
    }

    /// Returns the process's resident memory in bytes, from `/proc` (Linux only).
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kilobytes * 1024)
    }

    /// Returns the whole log of the process.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Returns the last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
