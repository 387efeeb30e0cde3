//! Waiting on conditions with deadlines, never on fixed sleeps.

use std::time::Duration;

/// How often conditions are checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Waits until `condition` holds, checking every 50 ms, and fails with `what` after `timeout`.
pub async fn until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}
