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
    JobSpec, JobState, ListNodesRequest, NodeState, SubmitJobRequest, WatchJobRequest, job_event,
};
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
        let endpoint = ClientSecurity::default()
            .endpoint(address)
            .map_err(anyhow::Error::msg)?;
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
        let bearer = ClientSecurity::default()
            .bearer()
            .map_err(anyhow::Error::msg)?;
        let channel = AuthChannel::new(channel, bearer);
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
        let spec = JobSpec {
            program: program.to_owned(),
            program_name: "main.wasm".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        };
        let response = self
            .jobs
            .submit_job(SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
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

/// A binary built next to this one.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the benchmark binary has no directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (scripts/bench.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An orchestrator and its executors, killed when dropped.
pub struct Stack {
    pub address: String,
    dir: PathBuf,
    pub orchestrator: Child,
    orchestrator_args: Vec<String>,
    port: u16,
    pub executors: Vec<Child>,
    /// Where executors keep their work directories (default: beside the orchestrator's).
    executor_root: PathBuf,
    _executor_scratch: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts an orchestrator with `orchestrator_args` in `dir` and waits until it answers.
    pub async fn start(dir: &Path, orchestrator_args: &[&str]) -> anyhow::Result<Stack> {
        let port = free_port()?;
        let mut stack = Stack {
            address: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
            orchestrator: spawn_orchestrator(dir, port, orchestrator_args)?,
            orchestrator_args: orchestrator_args.iter().map(|a| (*a).to_owned()).collect(),
            port,
            executors: Vec::new(),
            executor_root: dir.to_owned(),
            _executor_scratch: None,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Waits until the orchestrator answers a call; returns how long that took.
    pub async fn wait_ready(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Ok(mut clients) = Clients::connect(&self.address).await
                && clients
                    .nodes
                    .list_nodes(ListNodesRequest::default())
                    .await
                    .is_ok()
            {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.orchestrator.try_wait()? {
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
        if let Some(pid) = self.orchestrator.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        tokio::time::timeout(STEP_TIMEOUT, self.orchestrator.wait())
            .await
            .context("the orchestrator did not stop")??;
        Ok(())
    }

    /// Starts the orchestrator again on the same port and data directory.
    pub fn restart_orchestrator(&mut self) -> anyhow::Result<()> {
        let args: Vec<&str> = self.orchestrator_args.iter().map(String::as_str).collect();
        self.orchestrator = spawn_orchestrator(&self.dir, self.port, &args)?;
        Ok(())
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
        let work = self.executor_root.join(format!("executor-{id}"));
        let mut command = Command::new(binary("shoal-executor")?);
        command
            .args(["--orchestrator", &self.address, "--executor-id", id])
            .arg("--work-dir")
            .arg(&work)
            .args(args);
        self.executors.push(spawn_quiet(command, "an executor")?);
        Ok(())
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

    /// The orchestrator's resident memory in bytes and its CPU time so far.
    pub fn orchestrator_usage(&self) -> anyhow::Result<(u64, Duration)> {
        let pid = self
            .orchestrator
            .id()
            .context("the orchestrator has exited")?;
        process_usage(pid)
    }
}

fn spawn_orchestrator(dir: &Path, port: u16, args: &[&str]) -> anyhow::Result<Child> {
    let mut command = Command::new(binary("shoal-orchestrator")?);
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("orchestrator"))
        .args(args);
    spawn_quiet(command, "the orchestrator")
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

/// Resident memory (bytes) and user+system CPU time of a process, from /proc.
pub fn process_usage(pid: u32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line (1-based): 11 and 12 (0-based)
    // after the ')' that ends the command name.
    let cpu_ticks = ticks(11) + ticks(12);
    // Linux reports these in USER_HZ, 100 per second on every mainstream configuration.
    Ok((rss_kib * 1024, Duration::from_millis(cpu_ticks * 10)))
}
