//! The process harness shared by Shoal's end-to-end tests (`tests/e2e`) and benchmarks
//! (`bench`): it finds the binaries built beside the running one, starts daemons on ports
//! they bind themselves (port 0) and learns their addresses from their logs, collects log
//! lines and wakes waiters on each new one, starts SeaweedFS, and reads a process's memory
//! and CPU time. Everything waits for an event with a generous timeout, never a sleep.
//!
//! Errors are `anyhow` (a benchmark reports them; a test `expect`s them), except the
//! full-disk helper, which only tests use.

pub mod logs;
pub mod orchestrator;
pub mod postgres;
pub mod seaweedfs;
pub mod small_disk;
pub mod usage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use logs::{Lines, LogLines, collect, drain, wait_for_line};
pub use orchestrator::{Launch, OrchestratorProcess, Replica, test_store};
pub use postgres::{Held, PostgresServer};
pub use seaweedfs::SeaweedFs;
pub use usage::{process_usage, thread_cpu_time};

/// Generous upper bound for anything the harness waits for.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The path of a workspace binary built in the same target directory and profile as the
/// running executable (a test's executable sits one level deeper, in `deps/`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the running executable's path")?;
    let mut dir = exe
        .parent()
        .context("the running executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; \
             scripts/test.sh and scripts/bench.sh do)",
            path.display()
        );
    }
    Ok(path)
}

/// The repository root (where the workspace's `Cargo.toml` is).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
