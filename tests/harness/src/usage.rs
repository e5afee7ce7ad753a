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

/// The CPU time of a process's live threads to the nanosecond (the sum of their
/// `/proc/PID/task/TID/schedstat`), for windows too short for the 10 ms ticks of
/// [`process_usage`]. Threads that exit take their time with them, so a difference of two
/// readings may undercount.
pub fn thread_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let tasks = format!("/proc/{pid}/task");
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let path = task?.path().join("schedstat");
        // A thread that exited since the listing has no file any more: it counts nothing.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let on_cpu: u64 = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{} holds no run time", path.display()))?;
        nanos = nanos.saturating_add(on_cpu);
    }
    Ok(Duration::from_nanos(nanos))
}
