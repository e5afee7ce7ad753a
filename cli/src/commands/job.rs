//! `shoal job run|list|describe|logs|get|stop|executions`, and the submit-and-wait flow that
//! `wasm run` shares.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use shoal::net::retry::{Retry, Transient as _};
use shoal::proto::{
    CancelJobRequest, GetJobRequest, GetLogsRequest, Job, JobSpec, JobState, ListExecutionsRequest,
    ListJobsRequest, LogChunk, LogStream, StatRequest, SubmitJobRequest, WatchJobRequest,
    job_event,
};
use shoal::spec::SpecDocument;
use tracing::Instrument as _;

use crate::EXIT_JOB_NOT_COMPLETED;
use crate::client::{Clients, Target, connect};
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (YAML or JSON); local program and input paths are uploaded.
    Run {
        /// The spec file.
        spec: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (repeatable), e.g. running, completed.
        #[arg(long)]
        state: Vec<String>,
        /// Only jobs with this label, KEY=VALUE (repeatable).
        #[arg(long, short)]
        label: Vec<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one job, its spec, state and result.
    Describe {
        id: String,
        /// `table` (default): for people; `json` or `yaml`: the protobuf shape.
        #[arg(long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Print a job's stdout and stderr.
    Logs {
        id: String,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Download a job's results (stdout, stderr, exitCode, outputs).
    Get {
        id: String,
        /// Where to put them (default: ./job-ID).
        dest: Option<PathBuf>,
        /// Only this path inside the results, e.g. outputs/report.txt.
        #[arg(long, default_value = "")]
        path: String,
    },
    /// Cancel a job.
    Stop {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// List a job's executions (attempts).
    Executions {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

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

impl JobCommand {
    /// The command line's name, e.g. `shoal job run` (the name of its trace span).
    pub fn name(&self) -> &'static str {
        match self {
            JobCommand::Run { .. } => "shoal job run",
            JobCommand::List { .. } => "shoal job list",
            JobCommand::Describe { .. } => "shoal job describe",
            JobCommand::Logs { .. } => "shoal job logs",
            JobCommand::Get { .. } => "shoal job get",
            JobCommand::Stop { .. } => "shoal job stop",
            JobCommand::Executions { .. } => "shoal job executions",
        }
    }
}

pub async fn run(target: &Target, command: JobCommand) -> anyhow::Result<u8> {
    let mut clients = connect(target).await?;
    match command {
        JobCommand::Run { spec, wait } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("cannot read {}", spec.display()))?;
            let document = SpecDocument::from_yaml(&text)?;
            let base = spec.parent().unwrap_or(Path::new("."));
            let spec = resolve_document(&mut clients, document, base).await?;
            submit_and_wait(&mut clients, spec, &wait).await
        }
        JobCommand::List {
            state,
            label,
            limit,
            output,
        } => {
            let states = state
                .iter()
                .map(|s| parse_state(s).map(|s| s as i32))
                .collect::<anyhow::Result<_>>()?;
            let labels = label
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("label {l:?} must be KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?;
            let page = clients
                .jobs
                .list_jobs(ListJobsRequest {
                    states,
                    labels,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            let jobs = page.jobs;
            if !page.next_page_token.is_empty() {
                // On stderr, so a script reading the listing gets only the listing.
                eprintln!(
                    "(more jobs than the {} shown: raise --limit, or filter with --state or -l)",
                    jobs.len()
                );
            }
            if output != Format::Table {
                return output::print_structured(output, &jobs).map(|()| 0);
            }
            let mut table =
                output::table(&["ID", "NAME", "STATE", "CREATED", "PROGRAM", "MESSAGE"]);
            for job in &jobs {
                let spec = job.spec.clone().unwrap_or_default();
                table.add_row(vec![
                    job.id.clone(),
                    spec.name,
                    job.state().short_name().to_owned(),
                    output::time(&job.created_at),
                    spec.program_name,
                    job.status_message.clone(),
                ]);
            }
            crate::outln!("{table}");
            Ok(0)
        }
        JobCommand::Describe { id, output } => {
            let job = get_job(&mut clients, &id).await?;
            if output == Format::Table {
                let executions = executions_of(&mut clients, id).await?;
                crate::out!("{}", super::describe::describe(&job, &executions));
            } else {
                output::print_one(output, &job)?;
            }
            Ok(0)
        }
        JobCommand::Logs { id, follow } => {
            if follow {
                watch(&mut clients, &id, Output::Live).await?;
            } else {
                print_logs(&mut clients, &id).await?;
            }
            warn_if_truncated(&latest_result(&mut clients, &id).await?);
            Ok(0)
        }
        JobCommand::Get { id, dest, path } => {
            let dest = dest.unwrap_or_else(|| PathBuf::from(format!("job-{id}")));
            let summary = download_results(&mut clients, &id, &path, &dest).await?;
            eprintln!(
                "{} file(s), {} written to {}",
                summary.files,
                shoal::spec::units::format_size(summary.bytes),
                dest.display()
            );
            Ok(0)
        }
        JobCommand::Stop { id, reason } => {
            let job = clients
                .jobs
                .cancel_job(CancelJobRequest { job_id: id, reason })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            crate::outln!("{} {}", job.id, job.state().short_name());
            Ok(0)
        }
        JobCommand::Executions { id, output } => {
            let executions = executions_of(&mut clients, id).await?;
            if output != Format::Table {
                return output::print_structured(output, &executions).map(|()| 0);
            }
            let mut table = output::table(&[
                "ID", "ATTEMPT", "EXECUTOR", "STATE", "STARTED", "FINISHED", "FAILURE",
            ]);
            for e in &executions {
                table.add_row(vec![
                    e.id.clone(),
                    e.attempt.to_string(),
                    e.executor_id.clone(),
                    e.state().short_name().to_owned(),
                    output::time(&e.started_at),
                    output::time(&e.finished_at),
                    e.failure
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ]);
            }
            crate::outln!("{table}");
            Ok(0)
        }
    }
}

fn parse_state(text: &str) -> anyhow::Result<JobState> {
    let name = format!(
        "JOB_STATE_{}",
        text.trim().to_ascii_uppercase().replace('-', "_")
    );
    JobState::from_str_name(&name)
        .filter(|s| *s != JobState::Unspecified)
        .with_context(|| format!("unknown job state {text:?}"))
}

/// Turns a spec document into a submittable spec: local program and input paths (relative
/// to `base`) are uploaded and replaced by their CIDs.
pub async fn resolve_document(
    clients: &mut Clients,
    document: SpecDocument,
    base: &Path,
) -> anyhow::Result<JobSpec> {
    let mut spec = document.to_proto()?;
    let (program, name) = resolve_source(clients, &spec.program, base, "program").await?;
    if spec.program_name.is_empty() {
        spec.program_name = name;
    }
    spec.program = program;
    for (i, input) in spec.inputs.iter_mut().enumerate() {
        input.source = resolve_source(clients, &input.source, base, &format!("inputs[{i}].source"))
            .await?
            .0;
    }
    Ok(spec)
}

/// Files at least this big are hashed and looked up before they are uploaded: below it,
/// sending the file is one round trip just as the lookup is.
const HASH_BEFORE_UPLOAD: u64 = 1 << 20;

/// The CID the store gives the file at `path` (the same UnixFS DAG its upload builds), if
/// the store already holds it; None if it does not, or the lookup failed (then it is
/// uploaded as usual).
async fn already_stored(clients: &mut Clients, path: &Path) -> Option<String> {
    let owned = path.to_owned();
    let cid = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(&owned)?;
        let mut builder = shoal::content::unixfs::FileBuilder::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            builder.write(&buffer[..n]);
        }
        Ok(builder.finish().1.cid.to_string())
    })
    .await
    .ok()?
    .ok()?;
    let stat = clients
        .storage
        .stat(StatRequest {
            cid: cid.clone(),
            path: String::new(),
        })
        .await;
    stat.ok().map(|_| cid)
}

/// A local path is uploaded; a CID is kept. Returns the CID and a display name.
pub async fn resolve_source(
    clients: &mut Clients,
    source: &str,
    base: &Path,
    field: &str,
) -> anyhow::Result<(String, String)> {
    if source.is_empty() {
        bail!("{field} is required");
    }
    let path = base.join(source);
    if field == "program" && path.is_dir() {
        crate::usage!(
            "the program must be a file: {} is a directory",
            path.display()
        );
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        // A large file the store already holds (the same program, run again) is found by
        // its CID, computed here, instead of being sent again.
        let known = if meta.is_file() && meta.len() >= HASH_BEFORE_UPLOAD {
            already_stored(clients, &path).await
        } else {
            None
        };
        let cid = match known {
            Some(cid) => cid,
            None => super::data::upload(&mut clients.storage, &path, true).await?,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| cid.clone());
        return Ok((cid, name));
    }
    match source.parse::<shoal::spec::source::Source>() {
        Ok(shoal::spec::source::Source::Http(http)) => {
            return Ok((source.to_owned(), http.file_name()));
        }
        Ok(shoal::spec::source::Source::S3(s3)) => return Ok((source.to_owned(), s3.file_name())),
        _ => {}
    }
    if shoal::content::cid::looks_like_cid(source) {
        return Ok((
            source.to_owned(),
            source.trim_start_matches("ipfs://").to_owned(),
        ));
    }
    let error = std::fs::symlink_metadata(&path)
        .err()
        .unwrap_or_else(|| std::io::ErrorKind::NotFound.into());
    crate::usage!("{field}: {}", super::wasm::not_found(source, &error))
}

/// Submits `spec` and waits as `wait` says; returns the exit code.
pub async fn submit_and_wait(
    clients: &mut Clients,
    spec: JobSpec,
    wait: &WaitArgs,
) -> anyhow::Result<u8> {
    let job = submit(clients, spec)
        .instrument(tracing::info_span!("submit", otel.kind = "client"))
        .await?;
    if wait.id_only || wait.wait == Some(false) {
        crate::outln!("{}", job.id);
        return Ok(0);
    }
    eprintln!("Job {} submitted", job.id);
    // Ctrl-C stops the waiting, not the job: say how to stop that too.
    let output = if wait.follow {
        Output::Live
    } else {
        Output::Collected
    };
    let watched = tokio::select! {
        watched = watch(clients, &job.id, output) => watched?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "Stopped waiting; job {id} goes on. Stop it with: shoal job stop {id}",
                id = job.id
            );
            return Ok(EXIT_INTERRUPTED);
        }
    };
    let job = watched.job;
    match watched.collected {
        Some(chunks) => print_chunks(chunks)?,
        None if !wait.follow => print_logs(clients, &job.id).await?,
        None => {}
    }
    // A failed or timed-out execution keeps what it wrote: that is when it is wanted most.
    // A completed job carries its result; only another ending costs a lookup.
    let result = match &job.result {
        Some(result) => Some(result.clone()),
        None => latest_result(clients, &job.id).await?,
    };
    warn_if_truncated(&result);
    if let Some(dir) = &wait.download {
        let state = job.state().short_name();
        if result.is_some() {
            download_results(clients, &job.id, "", dir).await?;
            eprintln!(
                "Results of job {} ({state}) written to {}",
                job.id,
                dir.display()
            );
        } else {
            eprintln!(
                "Job {} {state} before it produced results: nothing to download to {}",
                job.id,
                dir.display()
            );
        }
    }
    Ok(exit_code(&job))
}

/// Says on stderr when the printed stdout or stderr is not all the program wrote.
fn warn_if_truncated(result: &Option<shoal::proto::ExecutionResult>) {
    let Some(result) = result else { return };
    for (stream, truncated, bytes) in [
        ("stdout", result.stdout_truncated, result.stdout_bytes),
        ("stderr", result.stderr_truncated, result.stderr_bytes),
    ] {
        if truncated {
            eprintln!(
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
            eprintln!("Error: job {} {}: {failure}", job.id, state.short_name());
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
    let logs = output == Output::Live;
    let mut collected = (output == Output::Collected).then(Vec::new);
    let mut collected_bytes = 0usize;
    let mut next = 0;
    let mut backoff = OUTAGE_RETRY.backoff();
    let mut last_progress = tokio::time::Instant::now();
    let mut phases = crate::progress::Phases::new(!logs);
    let mut queued = false;
    // Why a queued job waits changes without an event (it is the scheduler's note, not a
    // state): looked up now and then while the job is queued.
    // The first look is a second in: most jobs are placed long before, and a run should
    // not pay a call for it.
    let second = Duration::from_secs(1);
    let mut reason_check = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
    reason_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    let next_event = tokio::select! {
                        event = stream.next() => event,
                        _ = reason_check.tick(), if queued => {
                            if let Ok(job) = get_job(clients, job_id).await
                                && job.state() == JobState::Queued
                            {
                                phases.waiting(&job.status_message);
                            }
                            continue;
                        }
                    };
                    let event = match next_event {
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
                            } else if logs {
                                if chunk.stream() == LogStream::Stderr {
                                    let _ = std::io::stderr().write_all(&chunk.data);
                                } else {
                                    crate::output::write_stdout(&chunk.data)?;
                                }
                            }
                        }
                        Some(job_event::Event::StateChange(change)) => {
                            if change.state().is_terminal() {
                                drop(phases);
                                if logs {
                                    let state = change.state().short_name();
                                    eprintln!("[{state}] {}", change.message);
                                }
                                // The terminal event carries how the job ended: no call
                                // is needed to learn it.
                                let job = Job {
                                    id: job_id.to_owned(),
                                    state: change.state,
                                    execution_id: change.execution_id,
                                    failure: change.failure,
                                    result: change.result,
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
                            queued = change.state() == JobState::Queued;
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

/// Submits `spec` under an idempotency key of this invocation's own, retrying for up to
/// about a minute while the orchestrator is unreachable or answers UNAVAILABLE (a restart,
/// a full disk): the key makes a retry of a submission that did land return that job
/// instead of a second one.
async fn submit(clients: &mut Clients, spec: JobSpec) -> anyhow::Result<Job> {
    let request = SubmitJobRequest {
        spec: Some(spec),
        idempotency_key: uuid::Uuid::now_v7().to_string(),
    };
    let response = OUTAGE_RETRY
        .run("submitting the job", || {
            let (mut jobs, request) = (clients.jobs.clone(), request.clone());
            async move { jobs.submit_job(request).await }
        })
        .await?;
    response
        .into_inner()
        .job
        .context("the orchestrator returned no job")
}

/// Every execution of the job, oldest first.
async fn executions_of(
    clients: &mut Clients,
    job_id: String,
) -> anyhow::Result<Vec<shoal::proto::Execution>> {
    Ok(clients
        .jobs
        .list_executions(ListExecutionsRequest { job_id })
        .await?
        .into_inner()
        .executions)
}

async fn get_job(clients: &mut Clients, job_id: &str) -> anyhow::Result<Job> {
    clients
        .jobs
        .get_job(GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await?
        .into_inner()
        .job
        .context("the orchestrator returned no job")
}

/// Prints a job's stored stdout (to stdout) and stderr (to stderr).
pub async fn print_logs(clients: &mut Clients, job_id: &str) -> anyhow::Result<()> {
    let mut stream = clients
        .jobs
        .get_logs(GetLogsRequest {
            job_id: job_id.to_owned(),
            execution_id: String::new(),
        })
        .await?
        .into_inner();
    while let Some(chunk) = stream.next().await {
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
        std::io::stderr().write_all(&chunk.data)?;
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

async fn download_results(
    clients: &mut Clients,
    job_id: &str,
    path: &str,
    dest: &Path,
) -> anyhow::Result<shoal::content::transfer::DownloadSummary> {
    if let Some(result) = latest_result(clients, job_id).await?
        && !result.published_to.is_empty()
    {
        return download_from_s3(&result, path, dest).await;
    }
    let stream = clients
        .jobs
        .download_results(shoal::proto::DownloadResultsRequest {
            job_id: job_id.to_owned(),
            path: path.to_owned(),
        })
        .await?
        .into_inner();
    Ok(shoal::content::transfer::download_to(stream, dest).await?)
}

/// The result of the job's latest execution, if it has one (a failed job may still have
/// partial results).
async fn latest_result(
    clients: &mut Clients,
    job_id: &str,
) -> anyhow::Result<Option<shoal::proto::ExecutionResult>> {
    let job = clients
        .jobs
        .get_job(GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    if job.result.is_some() {
        return Ok(job.result);
    }
    let executions = executions_of(clients, job_id.to_owned()).await?;
    Ok(executions
        .into_iter()
        .find(|e| e.id == job.execution_id)
        .and_then(|e| e.result))
}

/// Fetches results an s3:// publisher uploaded, with the endpoint, region and addressing
/// the executor used and this machine's AWS credentials: the whole tree, or `path` in it
/// (a file, or a directory).
async fn download_from_s3(
    result: &shoal::proto::ExecutionResult,
    path: &str,
    dest: &Path,
) -> anyhow::Result<shoal::content::transfer::DownloadSummary> {
    shoal::content::transfer::check_tree_path(path)?;
    let location = format!("{}{path}", result.published_to);
    let Ok(shoal::spec::source::Source::S3(mut source)) =
        location.parse::<shoal::spec::source::Source>()
    else {
        bail!("the job's results are at {location:?}, which is not an s3:// location");
    };
    let s3 = shoal::data::s3::S3Fetcher::new(shoal::data::s3::S3Defaults::aws());
    let options = result.published_s3.as_ref();
    let fetched = match s3.fetch(&source, options, dest, u64::MAX).await {
        Ok(fetched) => fetched,
        // Not an object: a directory of the results.
        Err(_) if !path.is_empty() => {
            source.key.push('/');
            s3.fetch(&source, options, dest, u64::MAX)
                .await
                .map_err(|e| anyhow::anyhow!("cannot fetch {location}: {e}"))?
        }
        Err(e) => bail!("cannot fetch {location}: {e}"),
    };
    let files = if fetched.directory {
        let owned = dest.to_owned();
        tokio::task::spawn_blocking(move || {
            shoal::content::local_tree::walk(&owned, shoal::content::local_tree::TreeBounds::LOCAL)
        })
        .await??
        .iter()
        .filter(|e| e.kind == shoal::proto::EntryKind::File)
        .count() as u64
    } else {
        1
    };
    Ok(shoal::content::transfer::DownloadSummary {
        files,
        bytes: fetched.bytes,
        directory: fetched.directory,
    })
}
