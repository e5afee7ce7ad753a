//! Submitting a job and waiting for it: the submission retried under one idempotency key,
//! the watch (phases on stderr, output live or kept for the end), the output printed, the
//! exit code.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use futures::StreamExt;
use shoal::net::retry::{Retry, Transient as _};
use shoal::proto::{
    GetLogsRequest, Job, JobSpec, JobState, LogChunk, LogStream, SubmitJobRequest, WatchJobRequest,
    job_event,
};
use tracing::Instrument as _;

use super::results::{download_results, latest_result};
use super::sources::Resolved;
use crate::EXIT_JOB_NOT_COMPLETED;
use crate::client::Clients;

/// How `wasm run` and `job run` wait for the job they submit.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait for the job to end, print its output and exit with its exit code (default);
    /// `--wait=false` is `--id-only`.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        conflicts_with_all = ["id_only", "follow"]
    )]
    pub wait: Option<bool>,
    /// Print the job id and return at once.
    #[arg(long)]
    pub id_only: bool,
    /// Stream the program's output live while waiting.
    #[arg(long, short)]
    pub follow: bool,
    /// When the job ends, download its results into this directory.
    #[arg(long)]
    pub download: Option<PathBuf>,
}

/// Submits `spec` and waits as `wait` says; returns the exit code.
pub async fn submit_and_wait(
    clients: &mut Clients,
    spec: Resolved,
    wait: &WaitArgs,
) -> anyhow::Result<u8> {
    let partitioned = spec.spec.partitions > 0;
    let job = submit(clients, spec)
        .instrument(tracing::info_span!("submit", otel.kind = "client"))
        .await?;
    if wait.id_only || wait.wait == Some(false) {
        crate::outln!("{}", job.id);
        return Ok(0);
    }
    crate::errln!("Job {} submitted", job.id);
    let output = if wait.follow && wait.download.is_some() {
        Output::LiveToTheEnd
    } else if wait.follow {
        Output::Live
    } else if partitioned {
        // Many programs' output is not printed as one: each partition's is in its results.
        Output::Ignored
    } else {
        Output::Collected
    };
    // Ctrl-C stops the waiting, not the job: say how to stop that too.
    let watched = tokio::select! {
        watched = watch(clients, &job.id, output) => watched?,
        _ = tokio::signal::ctrl_c() => {
            crate::errln!(
                "Stopped waiting; job {id} goes on. Stop it with: shoal job stop {id}",
                id = job.id
            );
            return Ok(EXIT_INTERRUPTED);
        }
    };
    // tokio now owns SIGINT for the process: from here on a Ctrl-C ends the command too.
    tokio::select! {
        finished = finish(clients, watched, wait) => finished,
        _ = tokio::signal::ctrl_c() => Ok(EXIT_INTERRUPTED),
    }
}

/// After the wait: the output printed, the results fetched if asked, the exit code.
async fn finish(clients: &mut Clients, watched: Watched, wait: &WaitArgs) -> anyhow::Result<u8> {
    let job = watched.job;
    let printed = match watched.collected {
        Some(chunks) => print_chunks(chunks),
        None if job.partitions.is_some() => {
            crate::errln!(
                "Each partition's output: shoal job logs {} --partition I (or shoal job get {})",
                job.id,
                job.id
            );
            Ok(())
        }
        None if !wait.follow => print_logs(clients, &job.id).await,
        None => Ok(()),
    };
    // A reader that closed stdout (`| head`) has what it wanted of the output; the download
    // and the exit code do not depend on it.
    match printed {
        Err(error) if !crate::output::is_closed_stdout(&error) => return Err(error),
        _ => {}
    }
    // A failed or timed-out execution keeps what it wrote: that is when it is wanted most.
    // A completed job carries its result; only another ending costs a lookup.
    let result = match &job.result {
        Some(result) => Some(result.clone()),
        None => latest_result(clients, &job.id).await?,
    };
    warn_if_truncated(&result);
    if let Some(counts) = &job.partitions {
        if counts.failed > 0 {
            // Which ones, if the listing can be had: the counts and the exit code do not
            // depend on it.
            match clients.executions(job.id.clone()).await {
                Ok(executions) => {
                    for failure in super::describe::failed_partitions(&executions) {
                        crate::errln!("Failed {failure}");
                    }
                }
                Err(error) => {
                    crate::errln!("warning: cannot list the failed partitions: {error:#}")
                }
            }
        }
        let total =
            counts.queued + counts.running + counts.completed + counts.failed + counts.cancelled;
        crate::errln!(
            "Partitions: {} of {total} completed, {} failed, {} cancelled",
            counts.completed,
            counts.failed,
            counts.cancelled
        );
    }
    if let Some(dir) = &wait.download {
        let state = job.state().short_name();
        if result.is_some() {
            download_results(clients, &job.id, "", dir).await?;
            crate::errln!(
                "Results of job {} ({state}) written to {}",
                job.id,
                dir.display()
            );
        } else {
            crate::errln!(
                "Job {} {state} before it produced results: nothing to download to {}",
                job.id,
                dir.display()
            );
        }
    }
    Ok(exit_code(&job))
}

/// Says on stderr when the printed stdout or stderr is not all the program wrote.
pub(crate) fn warn_if_truncated(result: &Option<shoal::proto::ExecutionResult>) {
    let Some(result) = result else { return };
    for (stream, truncated, bytes) in [
        ("stdout", result.stdout_truncated, result.stdout_bytes),
        ("stderr", result.stderr_truncated, result.stderr_bytes),
    ] {
        if truncated {
            crate::errln!(
                "Warning: the program wrote {bytes} bytes to {stream}; only the first part was kept (the executor's --log-cap)"
            );
        }
    }
}

/// Exit code after Ctrl-C, as a shell reports a command killed by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// The CLI's exit code for a finished job.
pub fn exit_code(job: &Job) -> u8 {
    match job.state() {
        JobState::Completed => {
            let code = job.result.as_ref().map(|r| r.exit_code).unwrap_or(0);
            u8::try_from(code).unwrap_or(1)
        }
        state => {
            let failure = job
                .failure
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            crate::errln!("Error: job {} {}: {failure}", job.id, state.short_name());
            EXIT_JOB_NOT_COMPLETED
        }
    }
}

/// How long a watch or a submission keeps trying while the orchestrator is unreachable or
/// answers UNAVAILABLE (a restart, a full disk).
const OUTAGE_WINDOW: Duration = Duration::from_secs(60);
const OUTAGE_RETRY: Retry =
    Retry::window(OUTAGE_WINDOW).delays(Duration::from_millis(200), Duration::from_secs(2));

/// Follows a job until it ends, printing its output live if `logs`; resumes from the last
/// event seen if the stream breaks (an orchestrator restart, say), giving up after a minute
/// without an event. Returns the final job.
pub async fn watch(clients: &mut Clients, job_id: &str, output: Output) -> anyhow::Result<Watched> {
    let logs = matches!(output, Output::Live | Output::LiveToTheEnd);
    // Whether stdout still has a reader (stderr's chunks go on either way).
    let mut printing = logs;
    let mut collected = (output == Output::Collected).then(Vec::new);
    let mut collected_bytes = 0usize;
    let mut next = 0;
    let mut backoff = OUTAGE_RETRY.backoff();
    let mut last_progress = tokio::time::Instant::now();
    let mut phases = crate::progress::Phases::new(!logs);
    loop {
        let stream = clients
            .jobs
            .watch_job(WatchJobRequest {
                job_id: job_id.to_owned(),
                from_sequence: next,
                states_only: output == Output::Ignored,
            })
            .await;
        let broken = match stream {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let event = match stream.next().await {
                        None => break None,
                        Some(Ok(event)) => event,
                        Some(Err(status)) if status.is_transient() => break Some(status),
                        Some(Err(status)) => return Err(status.into()),
                    };
                    backoff.reset();
                    last_progress = tokio::time::Instant::now();
                    next = event.sequence + 1;
                    match event.event {
                        Some(job_event::Event::Log(chunk)) => {
                            if let Some(kept) = &mut collected {
                                collected_bytes += chunk.data.len();
                                if collected_bytes > MAX_COLLECTED_BYTES {
                                    // Too much to hold: read it back from the store later.
                                    collected = None;
                                } else {
                                    kept.push(chunk);
                                }
                            } else if logs && chunk.stream() == LogStream::Stderr {
                                let _ = std::io::stderr().write_all(&chunk.data);
                            } else if printing
                                && let Err(error) = crate::output::write_stdout(&chunk.data)
                            {
                                if output != Output::LiveToTheEnd
                                    || !crate::output::is_closed_stdout(&error)
                                {
                                    return Err(error);
                                }
                                printing = false;
                            }
                        }
                        Some(job_event::Event::StateChange(change)) => {
                            if change.state().is_terminal() {
                                drop(phases);
                                if logs {
                                    let state = change.state().short_name();
                                    crate::errln!("[{state}] {}", change.message);
                                }
                                // The terminal event carries how the job ended: no call
                                // is needed to learn it.
                                let job = Job {
                                    id: job_id.to_owned(),
                                    state: change.state,
                                    execution_id: change.execution_id,
                                    failure: change.failure,
                                    result: change.result,
                                    partitions: change.partitions,
                                    ..Default::default()
                                };
                                // Only the output of the execution that ended the job, as
                                // the stored logs hold it.
                                let collected = collected.map(|chunks| {
                                    chunks
                                        .into_iter()
                                        .filter(|c| c.execution_id == job.execution_id)
                                        .collect()
                                });
                                return Ok(Watched { job, collected });
                            }
                            phases.state(change.state(), &change.message);
                        }
                        Some(job_event::Event::Waiting(waiting)) => {
                            phases.waiting(&waiting.reason);
                        }
                        None => {}
                    }
                }
            }
            Err(status) if status.is_transient() => Some(status),
            Err(status) => return Err(status.into()),
        };
        if last_progress.elapsed() > OUTAGE_WINDOW {
            match broken {
                Some(status) => bail!("lost the watch on job {job_id}: {}", status.message()),
                None => bail!("lost the watch on job {job_id}"),
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// A failed submission. One that ran out of `--call-timeout` is not tried again: a server
/// that takes a call and never answers is hung, not restarting, and the flag bounds the
/// wait for it.
struct SubmitError(tonic::Status);

impl shoal::net::retry::Transient for SubmitError {
    fn is_transient(&self) -> bool {
        self.0.is_transient() && !crate::client::ran_out(&self.0)
    }
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Submits the job under an idempotency key of this invocation's own, naming the local
/// files it refers to by CID as `stored_cids`: the usual case (a program run again) costs
/// one call. When the store lacks some of them, the orchestrator refuses the job (NOT_FOUND,
/// listing which); those files are uploaded and the job submitted again under the same key
/// (nothing was created), so a new program costs three calls. Each submission is retried
/// for up to about a minute while the orchestrator is unreachable or answers UNAVAILABLE (a
/// restart, a full disk), but not after a call that ran out of its deadline: the key makes a
/// retry of a submission that did land return that job instead of a second one.
async fn submit(clients: &mut Clients, mut resolved: Resolved) -> anyhow::Result<Job> {
    let key = uuid::Uuid::now_v7().to_string();
    let stored_cids = resolved
        .unsent
        .iter()
        .map(|file| file.cid.clone())
        .collect();
    match submit_once(clients, &resolved.spec, &key, stored_cids).await {
        Err(SubmitError(status)) if status.code() == tonic::Code::NotFound => {
            // Only a refusal that lists which of our files the store lacks is ours to fix by
            // uploading; any other NOT_FOUND (a CID the user named) is the user's.
            let Some(missing) = missing_stored_cids(&status) else {
                return Err(anyhow::Error::from(status));
            };
            tracing::debug!(%status, "the store lacks local files: uploading them");
            resolved.upload_unsent(clients, &missing).await?;
            submit_once(clients, &resolved.spec, &key, Vec::new()).await
        }
        submitted => submitted,
    }
    .map_err(|SubmitError(status)| {
        let ran_out = crate::client::ran_out(&status);
        let error = anyhow::Error::from(status);
        if ran_out {
            // The server may have taken it after all: a blind rerun would make a second.
            error.context("the submission may have been accepted; `shoal job list` shows it")
        } else {
            error
        }
    })
}

/// The indices of the `stored_cids` a NOT_FOUND says the store lacks, if it says so.
fn missing_stored_cids(status: &tonic::Status) -> Option<Vec<usize>> {
    let listed = status
        .metadata()
        .get(shoal::protocol::MISSING_STORED_CIDS)?
        .to_str()
        .ok()?;
    listed.split(',').map(|i| i.parse().ok()).collect()
}

/// One submission, retried across an orchestrator outage under the same key.
async fn submit_once(
    clients: &mut Clients,
    spec: &JobSpec,
    key: &str,
    stored_cids: Vec<String>,
) -> Result<Job, SubmitError> {
    let request = SubmitJobRequest {
        spec: Some(spec.clone()),
        idempotency_key: key.to_owned(),
        stored_cids,
    };
    let response = OUTAGE_RETRY
        .run("submitting the job", || {
            let (mut jobs, request) = (clients.jobs.clone(), request.clone());
            async move { jobs.submit_job(request).await.map_err(SubmitError) }
        })
        .await?;
    response
        .into_inner()
        .job
        .ok_or_else(|| SubmitError(tonic::Status::internal("the orchestrator returned no job")))
}

/// Prints a job's stored stdout (to stdout) and stderr (to stderr).
/// Each wait for the orchestrator (the stream's start, its next chunk) is bounded by the
/// stall timeout; the time a slow reader of stdout takes is not.
pub async fn print_logs(clients: &mut Clients, job_id: &str) -> anyhow::Result<()> {
    print_execution_logs(clients, job_id, "").await
}

/// [`print_logs`] of one execution of the job (empty: the one in charge of it).
pub async fn print_execution_logs(
    clients: &mut Clients,
    job_id: &str,
    execution_id: &str,
) -> anyhow::Result<()> {
    let idle = clients.stall_timeout;
    let stalled = || {
        let idle = shoal::spec::units::format_duration(idle);
        tonic::Status::deadline_exceeded(format!("no log chunk for {idle}"))
    };
    let request = GetLogsRequest {
        job_id: job_id.to_owned(),
        execution_id: execution_id.to_owned(),
    };
    let mut stream = tokio::time::timeout(idle, clients.jobs.get_logs(request))
        .await
        .map_err(|_| stalled())??
        .into_inner();
    while let Some(chunk) = tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| stalled())?
    {
        print_chunk(&chunk?)?;
    }
    Ok(())
}

/// Prints log chunks collected while watching, in order.
fn print_chunks(chunks: Vec<LogChunk>) -> anyhow::Result<()> {
    chunks.iter().try_for_each(print_chunk)
}

/// One chunk: stdout's to stdout, stderr's to stderr.
fn print_chunk(chunk: &LogChunk) -> anyhow::Result<()> {
    if chunk.stream() == LogStream::Stderr {
        let _ = std::io::stderr().write_all(&chunk.data);
    } else {
        crate::output::write_stdout(&chunk.data)?;
    }
    Ok(())
}

/// What [`watch`] does with the job's output as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Printed at once (`-f`).
    Live,
    /// Printed at once, and a closed stdout stops the printing, not the watch: results
    /// are still to be downloaded (`-f --download DIR | head`).
    LiveToTheEnd,
    /// Kept, to print when the job ends without asking the store for it again.
    Collected,
    /// Not asked for.
    Ignored,
}

/// How a watched job ended, and its output if [`Output::Collected`] kept it (None when it
/// was more than the watch keeps in memory: it is then read from the store).
#[derive(Debug)]
pub struct Watched {
    pub job: Job,
    pub collected: Option<Vec<LogChunk>>,
}

/// Most output a watch keeps in memory for printing at the end.
const MAX_COLLECTED_BYTES: usize = 16 << 20;
