//! Publishing: the result tree of an execution that ran (its output directories, `stdout`,
//! `stderr` and `exitCode`) sized against the output limit and shipped to the job's
//! publisher: the orchestrator's store (a result CID) or an S3 prefix.
//!
//! An orchestrator that is down for a moment must not fail the executions in flight: an
//! upload to its store that fails transiently is repeated for up to [`PUBLISH_WINDOW`].
//! Uploads are content-addressed, so repeating one is safe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use shoal::content::local_tree::TreeBounds;
use shoal::content::transfer::MAX_INLINE_RESULT_BYTES;
use shoal::net::retry::Retry;
use shoal::proto::{Assign, ContentBlock, EntryKind, ExecutionResult, Failure, FailureKind};
use shoal::spec::{Publisher, ValidSpec};
use tracing::Instrument as _;

use crate::capture::Capture;
use crate::context::ExecutionContext;
use crate::runtime::RunOutcome;

/// How long an execution keeps trying to publish its results to an unreachable store.
pub const PUBLISH_WINDOW: Duration = Duration::from_secs(600);
const PUBLISH_RETRY: Retry = Retry::window(PUBLISH_WINDOW);

/// How a program's run ended, and the logs it wrote.
pub struct Ran {
    pub outcome: RunOutcome,
    pub stdout: Capture,
    pub stderr: Capture,
    /// The program was stopped in the middle (a timeout, a cancellation, the output
    /// quota), not ended by itself: a file call it had started may still land in its
    /// directories afterwards (wasmtime-wasi runs them on the blocking pool, which dropping
    /// the program does not stop), so what they hold now says nothing of later.
    pub interrupted: bool,
}

/// What publishing produced: the result (exit code, log sizes, where the tree went), the
/// failure if the run or the publishing failed, and the result tree's blocks when they are
/// small enough to travel with the report.
pub struct Published {
    pub result: ExecutionResult,
    pub failure: Option<Failure>,
    pub blocks: Vec<ContentBlock>,
    /// The output directories `results/` held, all empty, and nothing else, when the tree
    /// went with the report (then nothing was written there after the survey looked): what
    /// the scratch pool need not read again. None otherwise.
    pub clean_results: Option<Vec<String>>,
}

/// Publishes the results of `ran`, found in `results_dir`. Outputs over the output limit
/// fail the execution as OUTPUT_LIMIT and are dropped (the logs are still published); a
/// tree that cannot be shipped fails it as PUBLISH, unless it had failed already.
pub async fn publish_results(
    ctx: &ExecutionContext,
    assign: &Assign,
    spec: &ValidSpec,
    results_dir: &Path,
    ran: Ran,
) -> Published {
    let Ran {
        outcome,
        stdout,
        stderr,
        interrupted,
    } = ran;
    let (stdout_bytes, stdout_truncated) = stdout.totals();
    let (stderr_bytes, stderr_truncated) = stderr.totals();
    let mut result = ExecutionResult {
        exit_code: 0,
        result_cid: String::new(),
        stdout_bytes,
        stderr_bytes,
        stdout_truncated,
        stderr_truncated,
        ..Default::default()
    };
    let mut failure = match outcome {
        RunOutcome::Exited(code) => {
            result.exit_code = code;
            None
        }
        RunOutcome::Failed(failure) => Some(failure),
    };
    // The result files held in memory: `exitCode`, and the logs that never spilled.
    let mut in_memory: Vec<(String, Bytes)> = Vec::new();
    if failure.is_none() {
        in_memory.push(("exitCode".into(), result.exit_code.to_string().into()));
    }
    let mut spilled = false;
    for (name, capture) in [("stdout", &stdout), ("stderr", &stderr)] {
        match capture.kept_in_memory() {
            Some(kept) => in_memory.push((name.into(), kept)),
            None => spilled = true,
        }
    }
    let to_store = *spec.publisher() == Publisher::Store;
    // Without outputs and with both logs in memory nothing can be in `results/`: the
    // scratch pool hands it out holding only the (empty) output directories, the guest
    // sees only those, and only a spilled log is written there.
    let on_disk = spilled || !spec.spec().outputs.is_empty();
    let mut survey = survey_results(results_dir, &in_memory, to_store, on_disk).await;
    if failure.is_none() {
        let over = match &survey.too_large {
            Some(reason) => Some(format!("the outputs are too large to publish: {reason}")),
            None => over_limit(survey.total_bytes, ctx.config.max_output_bytes),
        };
        failure = over.map(|over| Failure::new(FailureKind::OutputLimit, over));
    }
    if failure
        .as_ref()
        .is_some_and(|f| f.kind() == FailureKind::OutputLimit)
    {
        // Keep only the logs: the outputs are over the limit.
        let outputs: Vec<PathBuf> = spec
            .spec()
            .outputs
            .iter()
            .map(|o| results_dir.join(&o.name))
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for output in outputs {
                if let Err(error) = shoal::content::local_tree::remove(&output) {
                    tracing::warn!(%error, "cannot remove outputs over the limit");
                }
            }
        })
        .await;
        survey = survey_results(results_dir, &in_memory, to_store, on_disk).await;
    }
    let empty_outputs = survey.empty_outputs.clone();
    let shipped = ship(
        ctx,
        assign,
        spec,
        results_dir,
        in_memory,
        survey,
        &mut result,
    )
    .instrument(tracing::info_span!("publish"))
    .await;
    match shipped {
        Ok(blocks) => Published {
            result,
            failure,
            clean_results: empty_outputs.filter(|_| !blocks.is_empty() && !interrupted),
            blocks,
        },
        Err(message) => Published {
            result,
            failure: Some(failure.unwrap_or_else(|| Failure::new(FailureKind::Publish, message))),
            blocks: Vec::new(),
            clean_results: None,
        },
    }
}

/// What the result tree holds once the program ended.
struct Survey {
    /// Bytes of the files in `results/` plus those held in memory.
    total_bytes: u64,
    /// Why the tree is past the bounds of a guest's tree (too deep, too many entries), if
    /// it is: then it is not published.
    too_large: Option<String>,
    /// The tree as blocks (children before parents, the root last) when it is bound for
    /// the orchestrator's store and small enough to travel with the completion.
    small_tree: Option<Vec<ContentBlock>>,
    /// The names of the directories in `results/` when it held only empty directories.
    empty_outputs: Option<Vec<String>>,
}

impl Survey {
    /// A survey that built no tree (too large, unreadable, or not bound for the store).
    fn without_tree(total_bytes: u64, too_large: Option<String>) -> Self {
        Survey {
            total_bytes,
            too_large,
            small_tree: None,
            empty_outputs: None,
        }
    }
}

/// Sizes the result tree (the files in `results_dir`, plus `in_memory` at its top) and,
/// when `to_store` and it is small, builds its blocks. A tree that cannot be read is
/// reported as having no size and no blocks: publishing then finds out what is wrong.
///
/// Most programs write no file: `results/` then holds only empty output directories,
/// which is checked right here (a few metadata calls answered from the kernel's caches,
/// as in `ScratchPool::acquire`), and the tree is built from memory; without `on_disk`
/// (no outputs, no spilled log) `results/` is known to be empty and is not read at all.
/// Otherwise the walk and the reads go to the blocking pool.
async fn survey_results(
    results_dir: &Path,
    in_memory: &[(String, Bytes)],
    to_store: bool,
    on_disk: bool,
) -> Survey {
    let in_memory_bytes: u64 = in_memory.iter().map(|(_, b)| b.len() as u64).sum();
    let small = move |total: u64| to_store && total <= MAX_INLINE_RESULT_BYTES as u64;
    let contents = |in_memory: &[(String, Bytes)]| -> Vec<(String, Option<Bytes>)> {
        in_memory
            .iter()
            .map(|(name, bytes)| (name.clone(), Some(bytes.clone())))
            .collect()
    };
    let empty = match on_disk {
        false => Some(Vec::new()),
        true => crate::scratch::empty_directories(results_dir),
    };
    if let Some(directories) = empty {
        let mut contents = contents(in_memory);
        contents.extend(directories.iter().map(|name| (name.clone(), None)));
        return Survey {
            total_bytes: in_memory_bytes,
            too_large: None,
            small_tree: small(in_memory_bytes)
                .then(|| tree_blocks(contents))
                .flatten(),
            empty_outputs: Some(directories),
        };
    }
    let results_dir = results_dir.to_owned();
    let mut contents = contents(in_memory);
    let survey = move || {
        let entries = match shoal::content::local_tree::walk(&results_dir, TreeBounds::GUEST) {
            Ok(entries) => entries,
            Err(shoal::Error::TreeTooLarge(reason)) => {
                return Survey::without_tree(0, Some(reason));
            }
            Err(_) => {
                return Survey::without_tree(0, None);
            }
        };
        let total_bytes = entries.iter().map(|e| e.size).sum::<u64>() + in_memory_bytes;
        if !small(total_bytes) {
            return Survey::without_tree(total_bytes, None);
        }
        for entry in entries.into_iter().skip(1) {
            let content = match entry.kind {
                EntryKind::File => match std::fs::read(&entry.absolute) {
                    Ok(bytes) => Some(Bytes::from(bytes)),
                    Err(_) => {
                        return Survey::without_tree(total_bytes, None);
                    }
                },
                _ => None,
            };
            contents.push((entry.relative, content));
        }
        Survey {
            total_bytes,
            too_large: None,
            small_tree: tree_blocks(contents),
            empty_outputs: None,
        }
    };
    tokio::task::spawn_blocking(survey)
        .await
        .unwrap_or(Survey::without_tree(0, None))
}

/// The blocks of a tree of `contents` (relative paths; bytes for files, None for
/// directories), children before parents and the root last, if they total at most
/// [`MAX_INLINE_RESULT_BYTES`].
fn tree_blocks(contents: Vec<(String, Option<Bytes>)>) -> Option<Vec<ContentBlock>> {
    let (blocks, _root) = shoal::content::unixfs::directory_tree(contents);
    let total: usize = blocks.iter().map(|b| b.data.len()).sum();
    (total <= MAX_INLINE_RESULT_BYTES).then(|| blocks.into_iter().map(ContentBlock::from).collect())
}

/// Ships the result tree to the job's publisher and records where in `result`: the
/// orchestrator's store (a result CID) or an S3 prefix. A small tree bound for the store is
/// not uploaded but returned as blocks, to go with the completion report in one message and
/// one commit (B2, B3 in docs/PERFORMANCE.md).
async fn ship(
    ctx: &ExecutionContext,
    assign: &Assign,
    spec: &ValidSpec,
    results_dir: &Path,
    in_memory: Vec<(String, Bytes)>,
    survey: Survey,
    result: &mut ExecutionResult,
) -> Result<Vec<ContentBlock>, String> {
    if let (Publisher::Store, Some(blocks)) = (spec.publisher(), survey.small_tree)
        && let Some(root) = blocks.last()
    {
        result.result_cid = root.cid.clone();
        return Ok(blocks);
    }
    // The publishers below ship a directory: put the files held in memory into it.
    for (name, bytes) in &in_memory {
        tokio::fs::write(results_dir.join(name), bytes)
            .await
            .map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    match spec.publisher() {
        Publisher::Store => {
            let upload = || {
                let mut storage = ctx.storage.clone();
                async move {
                    shoal::content::transfer::upload_path(
                        &mut storage,
                        results_dir,
                        TreeBounds::GUEST,
                        None,
                    )
                    .await
                }
            };
            let response = PUBLISH_RETRY
                .run("uploading results", upload)
                .await
                .map_err(|e| format!("cannot upload the results: {e}"))?;
            result.result_cid = response.cid;
        }
        Publisher::S3(publisher) => {
            let prefix = publisher.execution_prefix(&assign.job_id, &assign.execution_id);
            let options = spec.spec().publisher_s3.as_ref();
            let uploaded = ctx
                .s3
                .upload_tree(
                    &publisher.bucket,
                    &prefix,
                    options,
                    results_dir,
                    TreeBounds::GUEST,
                )
                .await
                .map_err(|e| format!("cannot publish the results to S3: {e}"))?;
            result.published_to = format!("s3://{}/{prefix}", publisher.bucket);
            result.published_s3 = Some(ctx.s3.effective(options));
            tracing::info!(
                to = result.published_to,
                objects = uploaded.objects,
                bytes = uploaded.bytes,
                "results published to S3"
            );
        }
    }
    Ok(Vec::new())
}

/// Describes by how much `total` bytes of results exceed `limit`, if they do.
pub(crate) fn over_limit(total: u64, limit: u64) -> Option<String> {
    (total > limit).then(|| {
        format!(
            "the outputs and logs take {}, more than the limit of {}",
            shoal::spec::units::format_size(total),
            shoal::spec::units::format_size(limit)
        )
    })
}
