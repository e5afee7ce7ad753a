//! The index of compiled modules executors share: which stored artifact some executor
//! compiled for a program and an engine. The orchestrator keeps only the index; the
//! artifacts are files in its content store, signed and checked by the executors with a key
//! the orchestrator never sees, so it neither reads nor vouches for the native code.

use shoal::proto::{CompiledModule, FindCompiledModuleRequest, RecordCompiledModuleResponse};

use super::cid;
use crate::error::{Error, Result};
use crate::orchestrator::Orchestrator;
use crate::records::Write;

/// The artifact recorded for the program and engine `request` names.
pub async fn find(
    orchestrator: &Orchestrator,
    request: FindCompiledModuleRequest,
) -> Result<CompiledModule> {
    cid("program", &request.program)?;
    check_engine(&request.engine)?;
    match orchestrator
        .store()
        .compiled_module(&request.program, &request.engine)
        .await?
    {
        Some(artifact) => Ok(CompiledModule {
            program: request.program,
            engine: request.engine,
            artifact,
        }),
        None => Err(Error::NotFound(format!(
            "no compiled module of {} for engine {}",
            request.program, request.engine
        ))),
    }
}

/// Records `module`, replacing what was recorded for its program and engine.
pub async fn record(
    orchestrator: &Orchestrator,
    module: CompiledModule,
) -> Result<RecordCompiledModuleResponse> {
    cid("program", &module.program)?;
    check_engine(&module.engine)?;
    let artifact = cid("artifact", &module.artifact)?;
    if !orchestrator.content().contains(&artifact).await? {
        return Err(Error::FailedPrecondition(format!(
            "artifact: {artifact} is not in the store; upload it first"
        )));
    }
    let write = Write::CompiledModule {
        program: module.program,
        engine: module.engine,
        artifact: artifact.to_string(),
    };
    orchestrator
        .store()
        .queue(vec![write])
        .await?
        .wait()
        .await?;
    Ok(RecordCompiledModuleResponse {})
}

/// An engine fingerprint is 1-128 characters of `[0-9a-z._-]`: a key part, never a path.
fn check_engine(engine: &str) -> Result<()> {
    let fine = !engine.is_empty()
        && engine.len() <= 128
        && engine
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b".-_".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "engine: must be 1-128 characters of [0-9a-z._-]".into(),
        ))
    }
}
