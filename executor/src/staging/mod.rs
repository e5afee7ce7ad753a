//! Staging: everything an execution needs before its program can start, fetched into its
//! scratch directory within the staging timeout (which does not count against the run
//! timeout): the compiled program (`program`) and the read-only input mounts (`inputs`).
//!
//! Staging talks to the orchestrator's store; an orchestrator that is down for a moment (a
//! restart, a redeploy) must not fail the executions in flight, so store calls that fail
//! transiently are repeated for up to [`STAGING_WINDOW`] (the staging timeout usually ends
//! them first). Store calls are safe to repeat: downloads read immutable data.

mod inputs;
mod program;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal::net::retry::Retry;
use shoal::proto::{Failure, FailureKind};
use shoal::spec::ValidSpec;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use inputs::StagedInputs;
pub use program::MAX_PROGRAM_BYTES;

use crate::context::ExecutionContext;
use crate::runtime::Program;

/// How long staging keeps trying to reach an unreachable store.
pub const STAGING_WINDOW: Duration = Duration::from_secs(600);
const STAGING_RETRY: Retry = Retry::window(STAGING_WINDOW);

/// What staging produced: the program to run and the inputs to mount. The inputs' cache
/// pins keep them from eviction until this is dropped, after the run.
pub struct Staged {
    pub program: Program,
    pub inputs: StagedInputs,
}

/// Stages `spec`'s program and inputs under `scratch/inputs`. Fails as STAGING (or as
/// the compile's INVALID_MODULE / LINK_ERROR), or as CANCELLED if `cancel` fires first.
pub async fn stage(
    ctx: &ExecutionContext,
    spec: &ValidSpec,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<Staged, Failure> {
    let dir = InputsDir(scratch.join("inputs"));
    let staging = async {
        let name = &spec.spec().program;
        let program = program::stage_program(ctx, spec.program(), name, &dir).await?;
        if !spec.spec().inputs.is_empty() {
            dir.create().await?;
        }
        let inputs = inputs::stage_inputs(ctx, spec.inputs(), &dir.0).await?;
        Ok(Staged { program, inputs })
    };
    let staging = staging.instrument(tracing::info_span!("stage"));
    let timeout = ctx.config.staging_timeout;
    tokio::select! {
        staged = tokio::time::timeout(timeout, staging) => staged.unwrap_or_else(|_| {
            Err(staging_failure(format!(
                "staging took longer than {}",
                shoal::spec::units::format_duration(timeout)
            )))
        }),
        _ = cancel.cancelled() => Err(Failure::new(FailureKind::Cancelled, "cancelled while staging")),
    }
}

/// The directory downloads are staged in, made only when something is downloaded into it:
/// a job with a cached program and no inputs creates no inode for it (inode churn is most
/// of an executor's filesystem cost per job, docs/PERFORMANCE.md B2).
struct InputsDir(PathBuf);

impl InputsDir {
    async fn create(&self) -> Result<&Path, Failure> {
        tokio::fs::create_dir_all(&self.0).await.map_err(|e| {
            Failure::new(
                FailureKind::Internal,
                format!("cannot create {}: {e}", self.0.display()),
            )
        })?;
        Ok(&self.0)
    }
}

fn staging_failure(message: String) -> Failure {
    Failure::new(FailureKind::Staging, message)
}
