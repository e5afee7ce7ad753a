//! Test harness for the end-to-end tests: on top of the process harness the benchmarks
//! share (`shoal-harness`: binaries, daemons on ports they bind, log lines), it starts a
//! devstack, runs the CLI against the daemons and waits for events with generous timeouts
//! (never sleeps to synchronise). Harness errors become panics naming what failed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::process::{Child, Command};

pub use shoal_harness::{Lines, collect, drain, small_disk};

/// Generous upper bound for anything a test waits for.
pub const TIMEOUT: Duration = shoal_harness::TIMEOUT;

/// The path of a workspace binary, built next to this test's executable.
pub fn bin(name: &str) -> PathBuf {
    shoal_harness::binary(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture or example path relative to the repository root.
pub fn path(relative: &str) -> String {
    root().join(relative).to_string_lossy().into_owned()
}

/// Compiles a `.wat` fixture to a `.wasm` file in `dir`.
pub fn wat(dir: &Path, name: &str) -> String {
    let source = root().join("tests/fixtures").join(format!("{name}.wat"));
    let bytes = wat::parse_file(&source).expect("fixture compiles");
    let out = dir.join(format!("{name}.wasm"));
    std::fs::write(&out, bytes).expect("write wasm");
    out.to_string_lossy().into_owned()
}

/// What a finished CLI call printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the call exited 0.
    pub fn success(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// The id of the job a waiting `wasm run` or `job run` submitted, from its
    /// `Job ID submitted` line on stderr.
    pub fn submitted_job(&self) -> String {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("Job ")?.strip_suffix(" submitted"))
            .unwrap_or_else(|| panic!("no job id in {}", self.stderr))
            .to_owned()
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the `shoal` CLI against `address`.
pub async fn shoal(address: &str, args: &[&str]) -> Output {
    shoal_with_env(address, args, &[]).await
}

/// Runs the `shoal` CLI against `address` with extra environment variables.
pub async fn shoal_with_env(address: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let mut command = Command::new(bin("shoal"));
    command
        .args(args)
        .env("SHOAL_ORCHESTRATOR", address)
        .envs(env.iter().map(|(k, v)| (k, v)));
    run_to_end(command, &format!("shoal {args:?}")).await
}

/// Runs `command` (stdin closed, stdout and stderr captured) to its end, within the
/// timeout; `what` names it if it does not end.
pub async fn run_to_end(mut command: Command, what: &str) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TIMEOUT:?}"))
        .expect("output");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Reads lines from a child's stream until one contains `needle`; returns that line.
pub async fn wait_for_line<R>(reader: &mut BufReader<R>, needle: &str) -> String
where
    R: tokio::io::AsyncRead + Unpin,
{
    shoal_harness::wait_for_line(reader, needle)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A `shoal devstack` process with its own data directory and port.
pub struct Devstack {
    pub address: String,
    /// What the devstack printed after its ready line.
    pub banner: String,
    /// Held so the devstack lives as long as this value; killed when it is dropped.
    _child: Child,
    pub dir: tempfile::TempDir,
    /// Environment given to the devstack, and to every CLI call made through it.
    env: Vec<(String, String)>,
}

impl Devstack {
    /// Starts a devstack with two executors; extra flags are passed on.
    pub async fn start(extra: &[&str]) -> Devstack {
        Self::start_with_env(extra, &[]).await
    }

    /// Starts a devstack with extra flags and environment variables (also given to the CLI
    /// calls made through it).
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Devstack {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut command = Command::new(bin("shoal"));
        command
            .args(["devstack", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data);
        if let Some(url) = shoal_harness::test_store(&data)
            .await
            .expect("the test store")
        {
            command.args(["--store", &url]);
        }
        let mut child = command
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn devstack");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let line = wait_for_line(&mut stdout, "ready: orchestrator at ").await;
        let address = line
            .split("orchestrator at ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in the ready line")
            .to_owned();
        // The rest of the banner, up to its last line.
        let mut banner = String::new();
        loop {
            let line = wait_for_line(&mut stdout, "").await;
            banner.push_str(&line);
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
        drain(stdout);
        Devstack {
            address,
            banner,
            _child: child,
            dir,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The devstack's process id.
    pub fn pid(&self) -> u32 {
        self._child.id().expect("the devstack is running")
    }

    /// Its data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs the CLI against this devstack.
    pub async fn shoal(&self, args: &[&str]) -> Output {
        shoal_with_env(&self.address, args, &self.env).await
    }

    /// A scratch path inside this devstack's temporary directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Submits `args` to `wasm run --id-only` and returns the job id.
    pub async fn submit(&self, args: &[&str]) -> String {
        submit(&self.address, args).await
    }

    /// The trustless gateway's address, `http://HOST:PORT/ipfs/`, from the banner of a
    /// devstack started with `--gateway-listen`.
    pub fn gateway_url(&self) -> String {
        self.banner
            .lines()
            .find_map(|l| l.strip_prefix("IPFS gateway at "))
            .expect("a gateway line in the banner (--gateway-listen)")
            .trim()
            .to_owned()
    }

    /// The job as JSON (`job describe --output json`).
    pub async fn job(&self, id: &str) -> serde_json::Value {
        self.shoal(&["job", "describe", id, "--output", "json"])
            .await
            .success()
            .json()
    }

    /// The job once `done` holds for it, checked at each of its events ([`wait_job_state`]).
    pub async fn wait_job(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_job_state(&self.address, id, what, done).await
    }
}

/// A job's state name, e.g. "JOB_STATE_COMPLETED".
pub fn state(job: &serde_json::Value) -> &str {
    job["state"].as_str().unwrap_or_default()
}

/// A job's failure kind name, e.g. "FAILURE_KIND_TRAP".
pub fn failure_kind(job: &serde_json::Value) -> &str {
    job["failure"]["kind"].as_str().unwrap_or_default()
}

/// Deterministic bytes that do not repeat within a chunk (so identical leaves cannot hide
/// a mistake in a DAG), varied by `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A started `shoal-orchestrator` (see [`shoal_harness::OrchestratorProcess`]).
pub type Orchestrator = shoal_harness::OrchestratorProcess;

/// Starts `shoal-orchestrator` on `port` (0 for one of its own) with its data in `data`;
/// returns once it listens.
pub async fn start_orchestrator(data: &Path, port: u16) -> Orchestrator {
    start_orchestrator_with(data, port, &["--lease", "30s"]).await
}

/// Starts `shoal-orchestrator` with extra flags (which come last, so they win).
pub async fn start_orchestrator_with(data: &Path, port: u16, extra: &[&str]) -> Orchestrator {
    start_orchestrator_logged(data, port, extra, &[]).await
}

/// Starts `shoal-orchestrator` with extra flags and environment; returns once it listens.
pub async fn start_orchestrator_logged(
    data: &Path,
    port: u16,
    extra: &[&str],
    env: &[(String, String)],
) -> Orchestrator {
    shoal_harness::Launch::new(data, port)
        .args(extra)
        .env(env)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits for the first of the JSON log lines collected in `lines` that `wanted` accepts
/// (`what` names it in the failure); every line must be JSON. Woken by each new line.
pub async fn json_log_line(
    lines: &Lines,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    lines
        .wait_for(what, |line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("a log line is not JSON ({e}): {line}"))?;
            Ok(wanted(&value).then_some(value))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until `orchestrator` has said that `executor_id` connected: its `executor
/// connected` log line, written once the registration is committed (an event, not a poll).
pub async fn wait_connected(orchestrator: &Orchestrator, executor_id: &str) {
    wait_connections(orchestrator, executor_id, 1).await;
}

/// Waits until `orchestrator` has said `times` times in all that `executor_id` connected
/// (a restarted executor's new connection).
pub async fn wait_connections(orchestrator: &Orchestrator, executor_id: &str, times: usize) {
    let connected = |line: &String| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| {
            value["message"] == "executor connected" && value["executor_id"] == executor_id
        })
    };
    let what = format!("of {executor_id} connecting {times} time(s)");
    orchestrator
        .lines
        .wait_until(&what, |lines| {
            lines.iter().filter(|line| connected(line)).count() >= times
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Follows a job's logs (`job logs -f`) until `line` appears, so the program is known to be
/// running; the follower is returned to keep it alive (or drop it).
pub async fn follow_until(address: &str, job: &str, line: &str) -> Child {
    let mut follower = Command::new(bin("shoal"))
        .args(["job", "logs", "-f", job])
        .env("SHOAL_ORCHESTRATOR", address)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn follower");
    let mut stdout = BufReader::new(follower.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, line).await;
    drain(stdout);
    follower
}

/// A `shoal wasm run ARGS` left waiting on its job, with the job's id (from its
/// "Job ID submitted" line) and the rest of its stderr.
pub struct Waiting {
    pub child: Child,
    pub id: String,
    pub stderr: BufReader<tokio::process::ChildStderr>,
}

/// Starts `shoal wasm run ARGS` against `address` and returns once it has submitted.
pub async fn start_waiting_run(address: &str, args: &[&str]) -> Waiting {
    let mut child = Command::new(bin("shoal"))
        .args(["wasm", "run"])
        .args(args)
        .env("SHOAL_ORCHESTRATOR", address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shoal");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let submitted = wait_for_line(&mut stderr, "submitted").await;
    let id = submitted
        .split_whitespace()
        .nth(1)
        .expect("Job ID submitted")
        .to_owned();
    Waiting { child, id, stderr }
}

/// (executor, state, failure kind) of each of a job's executions, in order.
pub async fn executions_of(address: &str, job: &str) -> Vec<(String, String, String)> {
    let out = shoal(address, &["job", "executions", job, "--output", "json"])
        .await
        .success()
        .json();
    out.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                field(&e["executorId"]),
                field(&e["state"]),
                field(&e["failure"]["kind"]),
            )
        })
        .collect()
}

/// Starts `shoal-executor` as `id` against `address`, working in `dir`, with extra flags;
/// its output is discarded.
pub fn start_executor(address: &str, dir: &Path, id: &str, extra: &[&str]) -> Child {
    executor_command(address, dir, id, extra)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn executor")
}

/// Starts `shoal-executor` like [`start_executor`], with environment, logging JSON; returns
/// its log lines.
pub fn start_executor_logged(
    address: &str,
    dir: &Path,
    id: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> (Child, Lines) {
    let mut child = executor_command(address, dir, id, extra)
        .args(["--log-format", "json"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn executor");
    let lines = collect(BufReader::new(child.stderr.take().expect("stderr")));
    (child, lines)
}

fn executor_command(address: &str, dir: &Path, id: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(bin("shoal-executor"));
    command
        .args(["--orchestrator", address, "--executor-id", id, "--work-dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Submits `args` to `wasm run --id-only` against `address`; returns the job id.
pub async fn submit(address: &str, args: &[&str]) -> String {
    let mut full = vec!["wasm", "run", "--id-only"];
    full.extend_from_slice(args);
    shoal(address, &full)
        .await
        .success()
        .stdout
        .trim()
        .to_owned()
}

/// A gRPC channel to `address`, connected.
pub async fn connect(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(address.to_owned())
        .expect("address")
        .connect()
        .await
        .expect("connect")
}

/// The job `id` (`job describe --output json`) once `done` holds for it, checked at every
/// event of the job's watch stream (a state change, or a new reason why it waits in the
/// queue: events, not a poll); fails after the timeout, naming `what`.
pub async fn wait_job_state(
    address: &str,
    id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use shoal::proto::WatchJobRequest;
    use shoal::proto::job_service_client::JobServiceClient;
    use tokio_stream::StreamExt as _;
    let channel = connect(address).await;
    let request = WatchJobRequest {
        job_id: id.to_owned(),
        from_sequence: 0,
        states_only: true,
    };
    let mut events = JobServiceClient::new(channel)
        .watch_job(request)
        .await
        .expect("watch the job")
        .into_inner();
    let describe = ["job", "describe", id, "--output", "json"];
    let wait = async {
        loop {
            let job = shoal(address, &describe).await.success().json();
            if done(&job) {
                return job;
            }
            // The next state change (a terminal one ends the stream).
            if events.next().await.is_none() {
                let job = shoal(address, &describe).await.success().json();
                assert!(done(&job), "job {id} ended without {what}: {job}");
                return job;
            }
        }
    };
    tokio::time::timeout(TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("job {id}: never reached {what} within {TIMEOUT:?}"))
}

/// Waits until the job at `address` is in a terminal state; returns it.
pub async fn wait_terminal(address: &str, job: &str) -> serde_json::Value {
    wait_job_state(address, job, "a terminal state", |j| {
        ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
            .iter()
            .any(|s| state(j).ends_with(s))
    })
    .await
}

/// A TCP proxy to a loopback port that can cut every connection through it at once, or
/// stall them: stop forwarding while keeping them open, as a network partition does.
pub struct Proxy {
    pub port: u16,
    cuts: tokio::sync::watch::Sender<u64>,
    stalled: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let cuts = tokio::sync::watch::Sender::new(0u64);
        let stalled = tokio::sync::watch::Sender::new(false);
        let (cut_rx, stalled_rx) = (cuts.subscribe(), stalled.subscribe());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (mut cuts, mut stalled) = (cut_rx.clone(), stalled_rx.clone());
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    // A stalled connection is held open, silent, until the test ends.
                    let hold = |held: Vec<tokio::net::TcpStream>| async move {
                        let _held = held;
                        std::future::pending::<()>().await
                    };
                    let stalled_now = *stalled.borrow();
                    if stalled_now {
                        return hold(vec![inbound]).await;
                    }
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    // Dropping both sockets mid-stream is the cut.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                        _ = async { drop(stalled.wait_for(|stalled| *stalled).await) } => {
                            hold(vec![inbound, outbound]).await
                        }
                    }
                });
            }
        });
        Proxy {
            port,
            cuts,
            stalled,
        }
    }

    /// Closes every connection through it (new ones are forwarded again).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Stops forwarding on every connection, present and future, keeping them open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }
}
