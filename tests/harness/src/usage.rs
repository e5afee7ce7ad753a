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

/// The CPU time of each live thread of a process to the nanosecond (from
/// `/proc/PID/task/TID/schedstat`), for windows too short for the 10 ms ticks of
/// [`process_usage`]: [`ThreadTimes::since`] an earlier reading is the time used between.
pub fn thread_cpu_time(pid: u32) -> anyhow::Result<ThreadTimes> {
    let tasks = format!("/proc/{pid}/task");
    let mut threads = std::collections::HashMap::new();
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let task = task?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread that exited since the listing has no file any more.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let on_cpu: u64 = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{tasks}/{tid}/schedstat holds no run time"))?;
        threads.insert(tid, Duration::from_nanos(on_cpu));
    }
    anyhow::ensure!(!threads.is_empty(), "no thread of {pid} has a schedstat");
    let (_, ticks) = process_usage(pid)?;
    Ok(ThreadTimes { threads, ticks })
}

/// One reading of [`thread_cpu_time`].
#[derive(Debug, Clone)]
pub struct ThreadTimes {
    threads: std::collections::HashMap<u32, Duration>,
    /// The whole process's time in 10 ms ticks, threads that exited included.
    ticks: Duration,
}

impl ThreadTimes {
    /// The CPU time used between `earlier` and this reading: each thread's growth (all of
    /// it for a thread started since), and never less than the coarse count of the whole
    /// process, which keeps what threads that exited in between had used.
    pub fn since(&self, earlier: &ThreadTimes) -> Duration {
        let threads: Duration = self
            .threads
            .iter()
            .map(|(tid, now)| {
                now.saturating_sub(earlier.threads.get(tid).copied().unwrap_or_default())
            })
            .sum();
        threads.max(self.ticks.saturating_sub(earlier.ticks))
    }
}
