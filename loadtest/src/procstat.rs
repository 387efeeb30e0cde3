//! CPU time and peak memory of a process, read from Linux's /proc. Elsewhere both read as zero.

use serde::Serialize;

/// Clock ticks per second in /proc/<pid>/stat; 100 on every mainstream Linux configuration.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resource use of one process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessUsage {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Peak resident memory (VmHWM), in mebibytes; sampled about once a second.
    pub peak_memory_mb: f64,
}

/// Reads the current usage of process `pid`.
pub fn usage(pid: u32) -> ProcessUsage {
    ProcessUsage {
        cpu_seconds: cpu_seconds(pid).unwrap_or(0.0),
        peak_memory_mb: peak_memory_kb(pid).map_or(0.0, |kb| kb as f64 / 1024.0),
    }
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces: fields are counted after its ')'.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

fn peak_memory_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let own = usage(std::process::id());
        assert!(own.peak_memory_mb > 0.0);
        assert!(own.cpu_seconds >= 0.0);
    }

    #[test]
    fn missing_process_reads_zero() {
        let gone = usage(u32::MAX);
        assert_eq!(gone.cpu_seconds, 0.0);
        assert_eq!(gone.peak_memory_mb, 0.0);
    }
}
