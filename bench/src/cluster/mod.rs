//! End-to-end benchmarks on real orchestrator and executor processes: B2 (durable
//! throughput; B2' and B2'', the same as fan-outs, plain and over shards), B3 (latency),
//! B5 (log and artifact streaming), B9 (many executors), B10 (re-dispatch after a crash),
//! B11 (failover between orchestrator replicas on PostgreSQL), B13 and B13' (a module
//! compiled once per fleet, and once per machine), B12 (the CLI
//! round trip), S2 (memory per queued job; S2', per queued partition) and S3 (restart
//! with 100,000 jobs).

mod b10;
mod b11;
mod b12;
mod b13;
mod b2;
mod b3;
mod b5;
mod b9;
mod s2_s3;

pub use b2::b2;
pub use b3::b3;
pub use b5::b5;
pub use b9::b9;
pub use b10::b10;
pub use b11::b11;
pub use b12::b12;
pub use b13::b13;
pub use s2_s3::s2_s3;

use std::path::{Path, PathBuf};

use shoal::proto::JobState;

use crate::stack::{Clients, Stack};
use crate::{Args, repo_root};

/// Writes `name` (a WAT text) compiled to `dir`; returns the path.
pub(crate) fn module_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(text)?)?;
    Ok(path)
}

/// A stack with an orchestrator and `executors` executors of `slots` slots each, all
/// connected, and the hello example uploaded; returns the stack, clients and hello's CID.
pub(crate) async fn hello_stack(
    args: &Args,
    dir: &Path,
    executors: usize,
    slots: u32,
) -> anyhow::Result<(Stack, Clients, String)> {
    hello_stack_on(args, dir, executors, slots, &[]).await
}

/// [`hello_stack`] with extra orchestrator flags (`--store URL` for the PostgreSQL store).
pub(crate) async fn hello_stack_on(
    args: &Args,
    dir: &Path,
    executors: usize,
    slots: u32,
    orchestrator_args: &[&str],
) -> anyhow::Result<(Stack, Clients, String)> {
    let mut stack = Stack::start(dir, orchestrator_args).await?;
    if let Some(root) = &args.executor_scratch {
        stack.set_executor_root(root)?;
    }
    for i in 0..executors {
        stack.add_executor(&format!("e{i}"), &["--slots", &slots.to_string()])?;
    }
    let mut clients = stack.clients().await?;
    clients.wait_executors(executors).await?;
    let hello = clients
        .put(&repo_root().join("examples/hello/hello.wasm"))
        .await?;
    // One job per executor first, so every module cache holds hello.
    for _ in 0..executors * 2 {
        let job = clients.submit(&hello, &["warm-up"]).await?;
        let (state, ..) = clients.watch(&job, true).await?;
        anyhow::ensure!(state == JobState::Completed, "warm-up job ended {state:?}");
    }
    Ok((stack, clients, hello))
}
