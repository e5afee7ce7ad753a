//! `shoal job run|list|describe|logs|get|stop|executions`: the commands; submitting and
//! waiting live in `waiting`, program and input sources in `sources`, results in
//! `results`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use shoal::proto::{CancelJobRequest, JobState, ListJobsRequest};
use shoal::spec::SpecDocument;

use super::describe::describe;
use super::results::{download_results, latest_result};
use super::sources::resolve_document;
use super::waiting::{
    Output, WaitArgs, print_execution_logs, print_logs, submit_and_wait, warn_if_truncated, watch,
};
use crate::client::{Target, connect};
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
        #[arg(long, value_parser = parse_state)]
        state: Vec<JobState>,
        /// Only jobs with this label, KEY=VALUE (repeatable).
        #[arg(long, short, value_name = "KEY=VALUE", value_parser = super::key_value)]
        label: Vec<(String, String)>,
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
        /// Of a partitioned job: the output of this partition (its latest attempt).
        #[arg(long, conflicts_with = "follow")]
        partition: Option<u32>,
    },
    /// Download a job's results (stdout, stderr, exitCode, outputs).
    Get {
        id: String,
        /// Where to put them (default: ./job-ID).
        dest: Option<PathBuf>,
        /// Only this path inside the results, e.g. outputs/report.txt.
        #[arg(long, default_value = "")]
        path: String,
        /// Of a partitioned job: only this partition's results (`partitions/<i>/`).
        #[arg(long)]
        partition: Option<u32>,
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
        /// Of a partitioned job: only the attempts of this partition.
        #[arg(long, value_name = "I")]
        partition: Option<u32>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
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
            let states = state.iter().map(|s| *s as i32).collect();
            let labels = label.into_iter().collect();
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
                crate::errln!(
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
            let job = clients.job(&id).await?;
            if output == Format::Table {
                let executions = clients.executions(job.id.clone()).await?;
                crate::out!("{}", describe(&job, &executions));
            } else {
                output::print_one(output, &job)?;
            }
            Ok(0)
        }
        JobCommand::Logs {
            id,
            follow,
            partition: Some(index),
        } => {
            debug_assert!(!follow);
            let execution = clients
                .partition_executions(id.clone(), Some(index))
                .await?
                .into_iter()
                .max_by_key(|e| e.attempt)
                .with_context(|| format!("job {id} has no execution of partition {index}"))?;
            print_execution_logs(&mut clients, &id, &execution.id).await?;
            warn_if_truncated(&execution.result);
            Ok(0)
        }
        JobCommand::Logs { id, follow, .. } => {
            if follow {
                watch(&mut clients, &id, Output::Live).await?;
            } else {
                print_logs(&mut clients, &id).await?;
            }
            warn_if_truncated(&latest_result(&mut clients, &id).await?);
            Ok(0)
        }
        JobCommand::Get {
            id,
            dest,
            path,
            partition,
        } => {
            let path = match partition {
                Some(index) if path.is_empty() => format!("partitions/{index}"),
                Some(index) => format!("partitions/{index}/{path}"),
                None => path,
            };
            let dest = dest.unwrap_or_else(|| PathBuf::from(format!("job-{id}")));
            let summary = download_results(&mut clients, &id, &path, &dest).await?;
            crate::errln!(
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
        JobCommand::Executions {
            id,
            partition,
            output,
        } => {
            let id_text = id.clone();
            let executions = clients.partition_executions(id, partition).await?;
            if output != Format::Table {
                return output::print_structured(output, &executions).map(|()| 0);
            }
            let partitioned = clients.job(&id_text).await?.partitions.is_some();
            let mut headers = vec![
                "ID", "ATTEMPT", "EXECUTOR", "STATE", "STARTED", "FINISHED", "FAILURE",
            ];
            if partitioned {
                headers.insert(1, "PARTITION");
            }
            let mut table = output::table(&headers);
            for e in &executions {
                let mut row = vec![
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
                ];
                if partitioned {
                    row.insert(1, e.partition.to_string());
                }
                table.add_row(row);
            }
            crate::outln!("{table}");
            Ok(0)
        }
    }
}

fn parse_state(text: &str) -> Result<JobState, String> {
    let name = format!(
        "JOB_STATE_{}",
        text.trim().to_ascii_uppercase().replace('-', "_")
    );
    JobState::from_str_name(&name)
        .filter(|s| *s != JobState::Unspecified)
        .ok_or_else(|| {
            format!("unknown job state {text:?} (queued, scheduled, staging, running, publishing, completed, failed, cancelled, timed-out)")
        })
}
