//! A real Shoal cluster for the end-to-end benchmarks: the orchestrator and executor
//! binaries built next to `shoal-bench` (same profile), on loopback ports, in a scratch
//! directory, plus gRPC clients and the few client calls the benchmarks share.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use shoal::net::auth::{AuthChannel, ClientSecurity};
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::node_service_client::NodeServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{
    JobSpec, JobState, ListJobsRequest, ListNodesRequest, NodeState, SubmitJobRequest,
    WatchJobRequest, job_event,
};
use shoal_harness::{Launch, OrchestratorProcess, process_usage};
use tokio::process::{Child, Command};

/// How long any one step may take before the benchmark gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// gRPC clients over one connection.
#[derive(Clone)]
pub struct Clients {
    pub jobs: JobServiceClient<AuthChannel>,
    pub storage: StorageServiceClient<AuthChannel>,
    pub nodes: NodeServiceClient<AuthChannel>,
}

impl Clients {
    /// Clients with Shoal's own connection settings (those of the CLI and executors).
    pub async fn connect(address: &str) -> anyhow::Result<Clients> {
        let endpoint = ClientSecurity::default().endpoint(address)?;
        Self::connect_endpoint(endpoint).await
    }

    /// Clients with tonic's and hyper's default HTTP/2 settings, as a baseline.
    pub async fn connect_with_http2_defaults(address: &str) -> anyhow::Result<Clients> {
        Self::connect_endpoint(tonic::transport::Endpoint::from_shared(address.to_owned())?).await
    }

    async fn connect_endpoint(endpoint: tonic::transport::Endpoint) -> anyhow::Result<Clients> {
        let address = endpoint.uri().to_string();
        let channel = endpoint
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {address}"))?;
        let bearer = ClientSecurity::default().bearer()?;
        let channel = AuthChannel::new(channel.into(), bearer);
        Ok(Clients {
            jobs: JobServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            storage: StorageServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            nodes: NodeServiceClient::new(channel),
        })
    }

    /// Uploads a file or directory into the orchestrator's content store; returns its CID.
    pub async fn put(&mut self, path: &Path) -> anyhow::Result<String> {
        let response = shoal::content::transfer::upload_path(
            &mut self.storage,
            path,
            shoal::content::transfer::TreeBounds::LOCAL,
            None,
        )
        .await
        .with_context(|| format!("uploading {}", path.display()))?;
        Ok(response.cid)
    }

    /// Submits a job running `program` (a CID) with `args`; returns the job id.
    pub async fn submit(&mut self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        self.submit_partitions(program, args, 0).await
    }

    /// Submits a job of `partitions` partitions (0: a plain job) running `program` with
    /// `args`; returns the job id.
    pub async fn submit_partitions(
        &mut self,
        program: &str,
        args: &[&str],
        partitions: u32,
    ) -> anyhow::Result<String> {
        let spec = JobSpec {
            program: program.to_owned(),
            program_name: "main.wasm".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            partitions,
            ..Default::default()
        };
        self.submit_spec(spec).await
    }

    /// Submits `spec`; returns the job id.
    pub async fn submit_spec(&mut self, spec: JobSpec) -> anyhow::Result<String> {
        let response = self
            .jobs
            .submit_job(SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
                stored_cids: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(response.job.context("SubmitJob answered no job")?.id)
    }

    /// Follows a job's events until it ends; returns its final state and the log bytes
    /// seen.
    pub async fn watch(
        &mut self,
        job_id: &str,
        states_only: bool,
    ) -> anyhow::Result<(JobState, u64, Option<Instant>)> {
        let mut events = self
            .jobs
            .watch_job(WatchJobRequest {
                job_id: job_id.to_owned(),
                from_sequence: 0,
                states_only,
            })
            .await?
            .into_inner();
        let mut log_bytes = 0;
        let mut last_log = None;
        while let Some(event) = events.message().await? {
            match event.event {
                Some(job_event::Event::Log(chunk)) => {
                    log_bytes += chunk.data.len() as u64;
                    last_log = Some(Instant::now());
                }
                Some(job_event::Event::StateChange(change)) if change.state().is_terminal() => {
                    return Ok((change.state(), log_bytes, last_log));
                }
                _ => {}
            }
        }
        bail!("the event stream of {job_id} ended before the job did")
    }

    /// Follows a job to its end; returns each state it entered with the orchestrator's
    /// time of the change.
    pub async fn watch_states(
        &mut self,
        job_id: &str,
    ) -> anyhow::Result<Vec<(JobState, std::time::SystemTime)>> {
        let mut events = self
            .jobs
            .watch_job(WatchJobRequest {
                job_id: job_id.to_owned(),
                from_sequence: 0,
                states_only: true,
            })
            .await?
            .into_inner();
        let mut states = Vec::new();
        while let Some(event) = events.message().await? {
            let time = event
                .time
                .and_then(|t| std::time::SystemTime::try_from(t).ok())
                .unwrap_or(std::time::UNIX_EPOCH);
            if let Some(job_event::Event::StateChange(change)) = event.event {
                states.push((change.state(), time));
                if change.state().is_terminal() {
                    return Ok(states);
                }
            }
        }
        bail!("the event stream of {job_id} ended before the job did")
    }

    /// How many jobs the orchestrator lists, and how many of them are in `state`.
    pub async fn count_jobs(&mut self, state: JobState) -> anyhow::Result<(usize, usize)> {
        let (mut all, mut in_state) = (0, 0);
        let mut page_token = String::new();
        loop {
            let page = self
                .jobs
                .list_jobs(ListJobsRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            all += page.jobs.len();
            in_state += page.jobs.iter().filter(|j| j.state() == state).count();
            if page.next_page_token.is_empty() {
                return Ok((all, in_state));
            }
            page_token = page.next_page_token;
        }
    }

    /// Waits until `count` executors are connected.
    pub async fn wait_executors(&mut self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let nodes = self.nodes.list_nodes(ListNodesRequest::default()).await?;
            let connected = nodes
                .into_inner()
                .nodes
                .iter()
                .filter(|n| n.state() == NodeState::Connected)
                .count();
            if connected >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {connected} of {count} executors connected");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An orchestrator and its executors, killed when dropped.
pub struct Stack {
    pub address: String,
    pub orchestrator: OrchestratorProcess,
    /// How the orchestrator was started: a restart reuses it, on the port it took.
    launch: Launch,
    pub executors: Vec<Child>,
    /// Where executors keep their work directories (default: beside the orchestrator's).
    executor_root: PathBuf,
    _executor_scratch: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts an orchestrator with `orchestrator_args` in `dir` on a port it binds itself,
    /// logging only warnings (its log would cost time), and waits until it answers.
    pub async fn start(dir: &Path, orchestrator_args: &[&str]) -> anyhow::Result<Stack> {
        let mut launch = Launch::new(&dir.join("orchestrator"), 0)
            .args(orchestrator_args)
            .quiet();
        let orchestrator = launch.start().await?;
        launch.port = orchestrator.port;
        let mut stack = Stack {
            address: orchestrator.address.clone(),
            orchestrator,
            launch,
            executors: Vec::new(),
            executor_root: dir.to_owned(),
            _executor_scratch: None,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Waits until the orchestrator answers a call (it listens before it serves).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let answered = match Clients::connect(&self.address).await {
                Ok(mut clients) => clients
                    .nodes
                    .list_nodes(ListNodesRequest::default())
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if answered {
                return Ok(());
            }
            if let Some(status) = self.orchestrator.child.try_wait()? {
                bail!("the orchestrator exited with {status}");
            }
            if started.elapsed() > STEP_TIMEOUT {
                bail!("the orchestrator never answered");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the orchestrator with SIGTERM and waits for it to exit.
    pub async fn stop_orchestrator(&mut self) -> anyhow::Result<()> {
        self.orchestrator.terminate().await?;
        Ok(())
    }

    /// Starts the orchestrator again on the same port and data directory; returns how long
    /// it took to answer a call.
    pub async fn restart_orchestrator(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.orchestrator = self.launch.start().await?;
        self.wait_ready().await?;
        Ok(started.elapsed())
    }

    /// Puts the work directories of executors started from now on in a fresh directory
    /// under `root` (e.g. a tmpfs, to see what the filesystem costs).
    pub fn set_executor_root(&mut self, root: &Path) -> anyhow::Result<()> {
        let scratch = tempfile::tempdir_in(root)?;
        self.executor_root = scratch.path().to_owned();
        self._executor_scratch = Some(scratch);
        Ok(())
    }

    /// Starts an executor named `id` with `args`.
    pub fn add_executor(&mut self, id: &str, args: &[&str]) -> anyhow::Result<()> {
        let command = self.executor_command(id, args)?;
        self.executors.push(spawn_quiet(command, "an executor")?);
        Ok(())
    }

    /// [`add_executor`](Self::add_executor), keeping its info-level log to wait on.
    pub fn add_executor_logged(
        &mut self,
        id: &str,
        args: &[&str],
    ) -> anyhow::Result<shoal_harness::Lines> {
        let mut command = self.executor_command(id, args)?;
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting an executor")?;
        let stderr = child.stderr.take().context("the executor's stderr")?;
        let lines = shoal_harness::collect(tokio::io::BufReader::new(stderr));
        self.executors.push(child);
        Ok(lines)
    }

    fn executor_command(&self, id: &str, args: &[&str]) -> anyhow::Result<Command> {
        let work = self.executor_root.join(format!("executor-{id}"));
        let mut command = Command::new(shoal_harness::binary("shoal-executor")?);
        command
            .args(["--orchestrator", &self.address, "--executor-id", id])
            .arg("--work-dir")
            .arg(&work)
            .args(args);
        Ok(command)
    }

    pub async fn clients(&self) -> anyhow::Result<Clients> {
        Clients::connect(&self.address).await
    }

    /// CPU time used so far by the orchestrator and by all executors together.
    pub fn cpu_times(&self) -> anyhow::Result<(Duration, Duration)> {
        let (_, orchestrator) = self.orchestrator_usage()?;
        let mut executors = Duration::ZERO;
        for executor in &self.executors {
            let pid = executor.id().context("an executor has exited")?;
            executors += process_usage(pid)?.1;
        }
        Ok((orchestrator, executors))
    }

    /// The CPU time of the orchestrator's threads, to the nanosecond.
    pub fn orchestrator_thread_time(&self) -> anyhow::Result<shoal_harness::usage::ThreadTimes> {
        let pid = self
            .orchestrator
            .child
            .id()
            .context("the orchestrator has exited")?;
        shoal_harness::thread_cpu_time(pid)
    }

    /// The orchestrator's resident memory in bytes and its CPU time so far.
    pub fn orchestrator_usage(&self) -> anyhow::Result<(u64, Duration)> {
        let pid = self
            .orchestrator
            .child
            .id()
            .context("the orchestrator has exited")?;
        process_usage(pid)
    }
}

/// Starts a daemon with warnings-only logging and no output (its log would cost time in a
/// benchmark), killed when its handle is dropped.
fn spawn_quiet(mut command: Command, what: &str) -> anyhow::Result<Child> {
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))
}
