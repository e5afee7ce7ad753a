//! A process's memory and CPU time, from /proc.

use std::time::Duration;

use anyhow::Context as _;

/// Resident memory (bytes) and user+system CPU time of a process.
pub fn process_usage(pid: u32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line (1-based): 11 and 12 (0-based)
    // after the ')' that ends the command name.
    let cpu_ticks = ticks(11) + ticks(12);
    // Linux reports these in USER_HZ, 100 per second on every mainstream configuration.
    Ok((rss_kib * 1024, Duration::from_millis(cpu_ticks * 10)))
}
