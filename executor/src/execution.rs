//! One execution from assignment to report: stage the program and inputs, run the program
//! with live log forwarding, publish the result tree, and say how it ended.
//!
//! The result tree is built in place: `stdout` and `stderr` are captured into it, each
//! output directory is mounted writable from inside it, and `exitCode` is added at the end,
//! so publishing is one upload of one directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal::auth::AuthChannel;
use shoal::local_tree::TreeBounds;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{
    Assign, ContentBlock, EntryKind, ExecutionFinished, ExecutionLog, ExecutionResult,
    ExecutionState, ExecutionUpdate, ExecutorMessage, Failure, FailureKind, JobSpec, LogChunk,
    LogStream, executor_message,
};
use shoal::transfer::MAX_INLINE_RESULT_BYTES;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use shoal::cid::{ContentId, RAW};
use shoal::source::{S3Location, Source};

use crate::Config;
use crate::capture::Capture;
use crate::retry;
use crate::runtime::{Preopen, Program, RunOutcome, RunRequest, Runtime};
use crate::staging;

/// Messages from executions to the orchestrator, forwarded by the connection whenever one
/// is up. Bounded: a long disconnection pauses log forwarding, never the guests.
///
/// Every report gets the next sequence number as it is queued, under one lock, so numbers
/// follow queue order: the orchestrator acknowledges "everything up to N", and a heartbeat
/// quotes the last number queued before it listed the running executions.
#[derive(Clone)]
pub struct Uplink {
    tx: mpsc::Sender<ExecutorMessage>,
    next: Arc<tokio::sync::Mutex<u64>>,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl Uplink {
    /// An uplink and the receiver the connection drains.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<ExecutorMessage>) {
        let (tx, rx) = mpsc::channel(capacity);
        let uplink = Uplink {
            tx,
            next: Arc::default(),
            last: Arc::default(),
        };
        (uplink, rx)
    }

    async fn send(&self, message: executor_message::Message) {
        let mut next = self.next.lock().await;
        *next += 1;
        let sequence = *next;
        let _ = self
            .tx
            .send(ExecutorMessage {
                message: Some(message),
                sequence,
            })
            .await;
        self.last
            .store(sequence, std::sync::atomic::Ordering::Release);
    }

    /// The sequence number of the last report queued.
    pub fn last_sequence(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reports a finished execution.
    pub async fn send_finished(&self, finished: ExecutionFinished) {
        self.send(executor_message::Message::Finished(finished))
            .await;
    }

    async fn state(&self, execution_id: &str, state: ExecutionState) {
        self.send(executor_message::Message::Update(ExecutionUpdate {
            execution_id: execution_id.to_owned(),
            state: state as i32,
        }))
        .await;
    }
}

/// What an execution needs from its executor.
pub struct ExecutionContext {
    pub runtime: Arc<Runtime>,
    pub storage: StorageServiceClient<AuthChannel>,
    pub http: shoal::fetch::HttpFetcher,
    pub cache: Arc<crate::cache::InputCache>,
    pub s3: shoal::s3::S3Fetcher,
    /// The orchestrator's IPFS gateways, as its latest `Registered` named them.
    pub ipfs: std::sync::RwLock<Arc<shoal::ipfs::GatewayFetcher>>,
    pub config: Arc<Config>,
    pub uplink: Uplink,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Scratch directories, reused when an execution leaves nothing in them.
    pub scratch: crate::scratch::ScratchPool,
}

impl ExecutionContext {
    /// The IPFS gateway fetcher for CIDs the orchestrator's store lacks.
    pub fn ipfs(&self) -> Arc<shoal::ipfs::GatewayFetcher> {
        self.ipfs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the gateway list from a `Registered`; unusable entries are skipped.
    pub fn set_ipfs_gateways(&self, gateways: &[String]) {
        let gateways: Vec<_> = gateways
            .iter()
            .filter_map(|g| {
                shoal::ipfs::parse_gateway(g)
                    .inspect_err(|error| tracing::warn!(%error, "ignoring an IPFS gateway"))
                    .ok()
            })
            .collect();
        if gateways == self.ipfs().gateways() {
            return;
        }
        match shoal::ipfs::GatewayFetcher::new(gateways) {
            Ok(fetcher) => {
                *self.ipfs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fetcher)
            }
            Err(error) => tracing::warn!(%error, "cannot set up the IPFS gateway client"),
        }
    }
}

/// The compiled program `key` if the module cache has it, counting the lookup.
fn cached_program(ctx: &ExecutionContext, key: &str) -> Option<Program> {
    let program = ctx.runtime.cached(key);
    let result = if program.is_some() { "hit" } else { "miss" };
    ctx.metrics
        .module_cache
        .get_or_create(&[("result", result)])
        .inc();
    program
}

/// Compiles a program that was just fetched (counted as staged bytes).
async fn compile_program(
    ctx: &ExecutionContext,
    key: &str,
    bytes: Vec<u8>,
) -> Result<Program, Failure> {
    ctx.metrics
        .staged_bytes
        .get_or_create(&[("source", "program")])
        .inc_by(bytes.len() as u64);
    let span = tracing::info_span!("compile", module_bytes = bytes.len() as u64);
    ctx.runtime.compile(key, bytes).instrument(span).await
}

/// The program downloaded by URL or from S3: cached by what was downloaded, never by where
/// from, as the content behind a URL or key can change.
async fn program_from_download(ctx: &ExecutionContext, bytes: Vec<u8>) -> Result<Program, Failure> {
    let key = ContentId::of_block(RAW, &bytes).to_string();
    match cached_program(ctx, &key) {
        Some(program) => Ok(program),
        None => compile_program(ctx, &key, bytes).await,
    }
}

/// Runs one execution and returns its report (for the caller to send through the uplink)
/// and the scratch directory it used, for the caller to give back to the pool once the
/// report is on its way: checking the directory is then off the report's path.
pub async fn execute(
    ctx: &ExecutionContext,
    assign: Assign,
    cancel: CancellationToken,
) -> (ExecutionFinished, Option<PathBuf>) {
    let id = assign.execution_id.as_str();
    // Said first, so the orchestrator's record of it overlaps the work below.
    ctx.uplink.state(id, ExecutionState::Staging).await;
    let outputs: Vec<String> = assign
        .spec
        .iter()
        .flat_map(|spec| spec.outputs.iter().map(|o| o.name.clone()))
        .collect();
    let scratch = match ctx.scratch.acquire(&outputs).await {
        Ok(scratch) => scratch,
        Err(e) => {
            let failure = Failure::new(
                FailureKind::Internal,
                format!("cannot make a scratch directory for the execution: {e}"),
            );
            return (finished(id, failure, None), None);
        }
    };
    let report = execute_in(ctx, &assign, &scratch, &cancel).await;
    (report, Some(scratch))
}

fn finished(
    execution_id: &str,
    failure: Failure,
    result: Option<ExecutionResult>,
) -> ExecutionFinished {
    ExecutionFinished {
        execution_id: execution_id.to_owned(),
        state: failure.kind().execution_state() as i32,
        result,
        failure: Some(failure),
        result_blocks: Vec::new(),
    }
}

async fn execute_in(
    ctx: &ExecutionContext,
    assign: &Assign,
    scratch: &Path,
    cancel: &CancellationToken,
) -> ExecutionFinished {
    let id = assign.execution_id.as_str();
    let spec = assign.spec.clone().unwrap_or_default();
    // `results/` and the output directories inside it are already there (`ScratchPool`).
    let inputs_dir = scratch.join("inputs");
    let results_dir = scratch.join("results");
    // `inputs/` is made only when something is downloaded into it: a job with a cached
    // program and no inputs creates no inode for it (inode churn is most of an executor's
    // filesystem cost per job, docs/PERFORMANCE.md B2).
    let make_inputs_dir = || async {
        tokio::fs::create_dir_all(&inputs_dir).await.map_err(|e| {
            Failure::new(
                FailureKind::Internal,
                format!("cannot create {}: {e}", inputs_dir.display()),
            )
        })
    };

    // Staging has its own time limit; it does not count against the run timeout.
    let staging = async {
        let mut storage = ctx.storage.clone();
        let source: Source = spec.program.parse().map_err(|e| {
            Failure::new(
                FailureKind::Staging,
                format!("program {}: {e}", spec.program),
            )
        })?;
        let program = match source {
            Source::Cid(cid) => {
                let key = cid.to_string();
                match cached_program(ctx, &key) {
                    Some(program) => program,
                    None => {
                        make_inputs_dir().await?;
                        let bytes =
                            staging::fetch_program(&mut storage, &ctx.ipfs(), &cid, &inputs_dir)
                                .await?;
                        compile_program(ctx, &key, bytes).await?
                    }
                }
            }
            Source::S3(s3) => {
                let path = inputs_dir.join("program.wasm");
                let failure = |m: String| {
                    Failure::new(
                        FailureKind::Staging,
                        format!("program {}: {m}", spec.program),
                    )
                };
                if !matches!(s3.selection(), shoal::source::S3Selection::Object(_)) {
                    return Err(failure("a program must be a single object".into()));
                }
                let max = ctx.config.max_input_bytes.min(staging::MAX_PROGRAM_BYTES);
                make_inputs_dir().await?;
                ctx.s3.fetch(&s3, None, &path, max).await.map_err(failure)?;
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| failure(format!("cannot read the download: {e}")))?;
                program_from_download(ctx, bytes).await?
            }
            Source::Http(http) => {
                make_inputs_dir().await?;
                let bytes = staging::fetch_url_program(
                    &ctx.http,
                    &http,
                    &inputs_dir,
                    ctx.config.max_input_bytes,
                )
                .await?;
                program_from_download(ctx, bytes).await?
            }
        };
        if !spec.inputs.is_empty() {
            make_inputs_dir().await?;
        }
        let inputs = staging::stage_inputs(ctx, &spec.inputs, &inputs_dir).await?;
        Ok::<_, Failure>((program, inputs))
    };
    let staging = staging.instrument(tracing::info_span!("stage"));
    let staged = tokio::select! {
        staged = tokio::time::timeout(ctx.config.staging_timeout, staging) => staged,
        _ = cancel.cancelled() => {
            return finished(id, Failure::new(FailureKind::Cancelled, "cancelled while staging"), None);
        }
    };
    // `inputs.pins` keeps cached inputs from eviction until this execution ends.
    let (program, inputs) = match staged {
        Ok(Ok(staged)) => staged,
        Ok(Err(failure)) => return finished(id, failure, None),
        Err(_) => {
            let failure = Failure::new(
                FailureKind::Staging,
                format!(
                    "staging took longer than {}",
                    shoal::units::format_duration(ctx.config.staging_timeout)
                ),
            );
            return finished(id, failure, None);
        }
    };

    let mut preopens = inputs.preopens.clone();
    for output in &spec.outputs {
        preopens.push(Preopen {
            host: results_dir.join(&output.name),
            guest: output.path.clone(),
            writable: true,
        });
    }

    let wake = Arc::new(Notify::new());
    let stdout = Capture::new(
        &results_dir.join("stdout"),
        ctx.config.log_cap,
        wake.clone(),
    );
    let stderr = Capture::new(
        &results_dir.join("stderr"),
        ctx.config.log_cap,
        wake.clone(),
    );

    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    env.push(("SHOAL_JOB_ID".into(), assign.job_id.clone()));
    env.push(("SHOAL_EXECUTION_ID".into(), id.to_owned()));
    let mut argv = vec![spec.program_name.clone()];
    argv.extend(spec.args.iter().cloned());
    let timeout = spec
        .timeout
        .and_then(|t| Duration::try_from(t).ok())
        .unwrap_or(Duration::from_secs(3600));
    let memory_limit = spec
        .resources
        .map(|r| r.memory_bytes)
        .unwrap_or(shoal::spec::DEFAULT_MEMORY_BYTES);

    ctx.uplink.state(id, ExecutionState::Running).await;
    let forwarding = CancellationToken::new();
    let forwarder = tokio::spawn(forward_logs(
        ctx.uplink.clone(),
        id.to_owned(),
        stdout.clone(),
        stderr.clone(),
        wake,
        forwarding.clone(),
    ));
    // The output quota is watched while the program runs, so a guest filling the disk is
    // stopped early rather than found out afterwards.
    let run_cancel = cancel.child_token();
    let over_quota = tokio::spawn(
        watch_output_quota(
            results_dir.clone(),
            ctx.config.max_output_bytes,
            run_cancel.clone(),
        )
        .in_current_span(),
    );
    let outcome = ctx
        .runtime
        .run(
            &program,
            RunRequest {
                entrypoint: spec.entrypoint.clone(),
                argv,
                env,
                preopens,
                memory_limit,
                timeout,
                cancel: run_cancel.clone(),
                stdout: stdout.clone(),
                stderr: stderr.clone(),
            },
        )
        .instrument(tracing::info_span!("run"))
        .await;
    run_cancel.cancel(); // ends the quota watcher
    let over_quota = over_quota.await.ok().flatten();
    let outcome = match over_quota {
        Some(over) => RunOutcome::Failed(Failure::new(FailureKind::OutputLimit, over)),
        None => outcome,
    };
    forwarding.cancel();
    let _ = forwarder.await;
    tracing::info!(?outcome, "program ended");

    if matches!(&outcome, RunOutcome::Failed(f) if f.kind() == FailureKind::Cancelled) {
        return finished(
            id,
            Failure::new(FailureKind::Cancelled, "cancelled while running"),
            None,
        );
    }

    ctx.uplink.state(id, ExecutionState::Publishing).await;
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
    for (name, capture) in [("stdout", &stdout), ("stderr", &stderr)] {
        if let Some(kept) = capture.kept_in_memory() {
            in_memory.push((name.into(), kept));
        }
    }
    let to_store = spec.publisher.is_empty() || spec.publisher == "default";
    let mut survey = survey_results(&results_dir, &in_memory, to_store).await;
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
            .outputs
            .iter()
            .map(|o| results_dir.join(&o.name))
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for output in outputs {
                if let Err(error) = shoal::local_tree::remove(&output) {
                    tracing::warn!(%error, "cannot remove outputs over the limit");
                }
            }
        })
        .await;
        survey = survey_results(&results_dir, &in_memory, to_store).await;
    }
    let published = publish(
        ctx,
        assign,
        &spec,
        &results_dir,
        in_memory,
        survey,
        &mut result,
    )
    .instrument(tracing::info_span!("publish"))
    .await;
    let result_blocks = match published {
        Ok(blocks) => blocks,
        Err(message) => {
            let failure = failure.unwrap_or_else(|| Failure::new(FailureKind::Publish, message));
            return finished(id, failure, Some(result));
        }
    };
    let mut report = match failure {
        None => ExecutionFinished {
            execution_id: id.to_owned(),
            state: ExecutionState::Completed as i32,
            result: Some(result),
            failure: None,
            result_blocks: Vec::new(),
        },
        Some(failure) => finished(id, failure, Some(result)),
    };
    report.result_blocks = result_blocks;
    report
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
}

/// Sizes the result tree (the files in `results_dir`, plus `in_memory` at its top) and,
/// when `to_store` and it is small, builds its blocks. A tree that cannot be read is
/// reported as having no size and no blocks: publishing then finds out what is wrong.
///
/// Most programs write no file: `results/` then holds only empty output directories,
/// which is checked right here (a few metadata calls answered from the kernel's caches,
/// as in `ScratchPool::acquire`), and the tree is built from memory. Otherwise the walk
/// and the reads go to the blocking pool.
async fn survey_results(
    results_dir: &Path,
    in_memory: &[(String, Bytes)],
    to_store: bool,
) -> Survey {
    let in_memory_bytes: u64 = in_memory.iter().map(|(_, b)| b.len() as u64).sum();
    let small = move |total: u64| to_store && total <= MAX_INLINE_RESULT_BYTES as u64;
    let contents = |in_memory: &[(String, Bytes)]| -> Vec<(String, Option<Bytes>)> {
        in_memory
            .iter()
            .map(|(name, bytes)| (name.clone(), Some(bytes.clone())))
            .collect()
    };
    if let Some(directories) = crate::scratch::empty_directories(results_dir) {
        let mut contents = contents(in_memory);
        contents.extend(directories.into_iter().map(|name| (name, None)));
        return Survey {
            total_bytes: in_memory_bytes,
            too_large: None,
            small_tree: small(in_memory_bytes)
                .then(|| tree_blocks(contents))
                .flatten(),
        };
    }
    let results_dir = results_dir.to_owned();
    let mut contents = contents(in_memory);
    let survey = move || {
        let entries = match shoal::local_tree::walk(&results_dir, TreeBounds::GUEST) {
            Ok(entries) => entries,
            Err(shoal::Error::TreeTooLarge(reason)) => {
                return Survey {
                    total_bytes: 0,
                    too_large: Some(reason),
                    small_tree: None,
                };
            }
            Err(_) => {
                return Survey {
                    total_bytes: 0,
                    too_large: None,
                    small_tree: None,
                };
            }
        };
        let total_bytes = entries.iter().map(|e| e.size).sum::<u64>() + in_memory_bytes;
        if !small(total_bytes) {
            return Survey {
                total_bytes,
                too_large: None,
                small_tree: None,
            };
        }
        for entry in entries.into_iter().skip(1) {
            let content = match entry.kind {
                EntryKind::File => match std::fs::read(&entry.absolute) {
                    Ok(bytes) => Some(Bytes::from(bytes)),
                    Err(_) => {
                        return Survey {
                            total_bytes,
                            too_large: None,
                            small_tree: None,
                        };
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
        }
    };
    tokio::task::spawn_blocking(survey).await.unwrap_or(Survey {
        total_bytes: 0,
        too_large: None,
        small_tree: None,
    })
}

/// The blocks of a tree of `contents` (relative paths; bytes for files, None for
/// directories), children before parents and the root last, if they total at most
/// [`MAX_INLINE_RESULT_BYTES`].
fn tree_blocks(contents: Vec<(String, Option<Bytes>)>) -> Option<Vec<ContentBlock>> {
    let (blocks, _root) = shoal::unixfs::directory_tree(contents);
    let total: usize = blocks.iter().map(|b| b.data.len()).sum();
    (total <= MAX_INLINE_RESULT_BYTES).then(|| blocks.into_iter().map(ContentBlock::from).collect())
}

/// Ships the result tree to the job's publisher and records where in `result`: the
/// orchestrator's store (a result CID) or an S3 prefix. A small tree bound for the store is
/// not uploaded but returned as blocks, to go with the completion report in one message and
/// one commit (B2, B3 in docs/PERFORMANCE.md).
async fn publish(
    ctx: &ExecutionContext,
    assign: &Assign,
    spec: &JobSpec,
    results_dir: &Path,
    in_memory: Vec<(String, Bytes)>,
    survey: Survey,
    result: &mut ExecutionResult,
) -> Result<Vec<ContentBlock>, String> {
    let to_store = spec.publisher.is_empty() || spec.publisher == "default";
    if to_store
        && let Some(blocks) = survey.small_tree
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
    if to_store {
        let upload = || {
            let mut storage = ctx.storage.clone();
            async move {
                shoal::transfer::upload_path(&mut storage, results_dir, TreeBounds::GUEST, None)
                    .await
            }
        };
        let response = retry::store_call(
            "uploading results",
            retry::PUBLISH_WINDOW,
            retry::is_transient_core,
            upload,
        )
        .await
        .map_err(|e| format!("cannot upload the results: {e}"))?;
        result.result_cid = response.cid;
        return Ok(Vec::new());
    }
    let publisher = S3Location::parse(&spec.publisher)?;
    let prefix = publisher.execution_prefix(&assign.job_id, &assign.execution_id);
    let options = spec.publisher_s3.as_ref();
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
    Ok(Vec::new())
}

/// Checks the result tree's size a few times a second while the program runs; past
/// `limit`, stops the run and says by how much. Returns None if the run ended within it.
async fn watch_output_quota(
    results_dir: PathBuf,
    limit: u64,
    run: CancellationToken,
) -> Option<String> {
    // The first look is one period in, not at once: most programs are done by then, and
    // a walk while they run competes with them for the cores.
    let period = Duration::from_millis(200);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = run.cancelled() => return None,
            _ = tick.tick() => {}
        }
        // Logs held in memory (at most IN_MEMORY_MAX per stream) are counted at the end.
        let dir = results_dir.clone();
        let walked =
            tokio::task::spawn_blocking(move || shoal::local_tree::walk(&dir, TreeBounds::GUEST))
                .await;
        let over = match walked {
            Ok(Ok(entries)) => over_limit(entries.iter().map(|e| e.size).sum(), limit),
            Ok(Err(shoal::Error::TreeTooLarge(reason))) => {
                Some(format!("the outputs are too large to publish: {reason}"))
            }
            // Unreadable for a moment (the guest is still writing): look again next time.
            _ => None,
        };
        if let Some(over) = over {
            tracing::warn!(%over, "stopping a program over its output quota");
            run.cancel();
            return Some(over);
        }
    }
}

/// Describes by how much `total` bytes of results exceed `limit`, if they do.
fn over_limit(total: u64, limit: u64) -> Option<String> {
    (total > limit).then(|| {
        format!(
            "the outputs and logs take {}, more than the limit of {}",
            shoal::units::format_size(total),
            shoal::units::format_size(limit)
        )
    })
}

/// Sends captured output upstream as it arrives, until `done`, then sends the rest.
async fn forward_logs(
    uplink: Uplink,
    execution_id: String,
    stdout: Capture,
    stderr: Capture,
    wake: Arc<Notify>,
    done: CancellationToken,
) {
    loop {
        let finished = tokio::select! {
            _ = wake.notified() => false,
            _ = done.cancelled() => true,
        };
        for (capture, stream) in [(&stdout, LogStream::Stdout), (&stderr, LogStream::Stderr)] {
            while let Some(captured) = capture.take() {
                uplink
                    .send(executor_message::Message::Log(ExecutionLog {
                        chunk: Some(LogChunk {
                            execution_id: execution_id.clone(),
                            stream: stream as i32,
                            offset: captured.offset,
                            data: captured.data,
                        }),
                    }))
                    .await;
            }
        }
        if finished {
            return;
        }
    }
}
