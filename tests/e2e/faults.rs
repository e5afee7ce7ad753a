//! Faults while work is in flight: the orchestrator killed with SIGKILL twice while 500
//! jobs arrive from concurrent clients; an executor killed mid-job; an executor cut off the
//! network by a proxy. Every acknowledged job must end in exactly one terminal state, with
//! its results intact, and nothing may run to completion twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{path, start_orchestrator};
use shoal::net::auth::{AuthChannel, CallerMetadata};
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{
    DownloadResultsRequest, ExecutionState, GetLogsRequest, JobSpec, JobState,
    ListExecutionsRequest, LogStream, SubmitJobRequest, WatchJobRequest,
};

pub const JOBS: usize = 500;
const CLIENTS: usize = 5;

/// A channel to `address`, or to whichever of the comma-separated replicas leads.
fn channel(address: &str) -> AuthChannel {
    let replicas = shoal::net::auth::ClientSecurity::default()
        .replicas(address, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
        })
        .expect("addresses");
    AuthChannel::new(replicas, CallerMetadata::default())
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_jobs_survive_two_orchestrator_kills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = start_orchestrator(&data, 0).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let _executor = crate::common::start_executor(
        &address,
        &dir.path().join("executor"),
        "steady",
        &["--slots", "8"],
    );
    let load = Load::start(&address, "faults").await;
    for kill_at in [JOBS / 4, JOBS * 2 / 3] {
        load.wait_acked(kill_at).await;
        orchestrator.kill().await.expect("kill -9 the orchestrator");
        orchestrator.child.wait().await.expect("reaped");
        orchestrator = start_orchestrator(&data, port).await;
    }
    load.check(&address).await;
}

/// [`JOBS`] jobs submitted by [`CLIENTS`] concurrent clients that retry whatever fails (the
/// orchestrator may be down, or a standby), each with an idempotency key of its own.
pub struct Load {
    acked: Arc<tokio::sync::watch::Sender<usize>>,
    clients: Vec<tokio::task::JoinHandle<BTreeMap<String, usize>>>,
}

impl Load {
    /// Uploads the program and starts the clients, on `address` (one, or a comma-separated
    /// list of replicas); `name` tells the keys apart from other tests'.
    pub async fn start(address: &str, name: &str) -> Load {
        let mut storage = StorageServiceClient::new(channel(address));
        let program = shoal::content::transfer::upload_path(
            &mut storage,
            std::path::Path::new(&path("examples/hello/hello.wasm")),
            shoal::content::transfer::TreeBounds::LOCAL,
            None,
        )
        .await
        .expect("upload")
        .cid;
        // A job counts once the orchestrator acknowledged it.
        let acked = Arc::new(tokio::sync::watch::Sender::new(0usize));
        let mut clients = Vec::new();
        for client in 0..CLIENTS {
            let (address, program, acked) = (address.to_owned(), program.clone(), acked.clone());
            let name = name.to_owned();
            clients.push(tokio::spawn(async move {
                let mut jobs = JobServiceClient::new(channel(&address));
                let mut mine = BTreeMap::new();
                for n in (client..JOBS).step_by(CLIENTS) {
                    let spec = JobSpec {
                        program: program.clone(),
                        args: vec![format!("job-{n}")],
                        ..Default::default()
                    };
                    // One key per job: a retry of a submission whose answer was lost (the
                    // orchestrator died after its commit) returns that job, not a second one.
                    let key = format!("{name}-{n}");
                    loop {
                        match jobs
                            .submit_job(SubmitJobRequest {
                                spec: Some(spec.clone()),
                                idempotency_key: key.clone(),
                                stored_cids: Vec::new(),
                            })
                            .await
                        {
                            Ok(response) => {
                                let job = response.into_inner().job.expect("job");
                                mine.insert(job.id, n);
                                acked.send_modify(|n| *n += 1);
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
                mine
            }));
        }
        Load { acked, clients }
    }

    /// Waits until `count` jobs have been acknowledged (each acknowledgement wakes it).
    pub async fn wait_acked(&self, count: usize) {
        let mut seen = self.acked.subscribe();
        tokio::time::timeout(crate::common::TIMEOUT * 4, seen.wait_for(|n| *n >= count))
            .await
            .expect("submissions stalled")
            .expect("the counter lives as long as the test");
    }

    /// Waits for the clients, then checks through `address` that every submission was
    /// acknowledged and stored once, and that every job completed once with its own
    /// output, in its results and in its live log.
    pub async fn check(self, address: &str) {
        let mut submitted = BTreeMap::new();
        for client in self.clients {
            submitted.extend(client.await.expect("client"));
        }
        // Each of the JOBS submissions got a job of its own: two submissions answered with
        // one job (an idempotency key matched to the wrong job) would leave a number out.
        let numbers: std::collections::BTreeSet<usize> = submitted.values().copied().collect();
        assert_eq!(
            numbers,
            (0..JOBS).collect(),
            "every submission was acknowledged with a job of its own"
        );
        // And stored once: no retry created a duplicate.
        let mut jobs = JobServiceClient::new(channel(address));
        let mut stored = 0;
        let mut page_token = String::new();
        loop {
            let page = jobs
                .list_jobs(shoal::proto::ListJobsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner();
            stored += page.jobs.len();
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(stored, JOBS, "every job was stored once");
        // Each job's watch stream ends with its terminal event: one after another, each
        // wait is for that event, not a poll.
        let all_done = async {
            for id in submitted.keys() {
                let mut events = jobs
                    .watch_job(WatchJobRequest {
                        job_id: id.clone(),
                        from_sequence: 0,
                        states_only: true,
                    })
                    .await
                    .expect("every acknowledged job is known")
                    .into_inner();
                while events.message().await.expect("watch").is_some() {}
                let job = jobs
                    .get_job(shoal::proto::GetJobRequest { job_id: id.clone() })
                    .await
                    .expect("job")
                    .into_inner()
                    .job
                    .expect("job");
                assert_eq!(job.state(), JobState::Completed, "{job:?}");
            }
        };
        tokio::time::timeout(crate::common::TIMEOUT * 6, all_done)
            .await
            .expect("every acknowledged job finishes");
        for (id, n) in &submitted {
            check_once(&mut jobs, id, *n).await;
        }
    }
}

/// Job `id` (the `n`th submitted) completed in exactly one execution, and its stdout, in
/// the results and in the live log, is its own.
async fn check_once(jobs: &mut JobServiceClient<AuthChannel>, id: &str, n: usize) {
    let executions = jobs
        .list_executions(ListExecutionsRequest {
            job_id: id.to_owned(),
            partition: None,
        })
        .await
        .expect("executions")
        .into_inner()
        .executions;
    let completed = executions
        .iter()
        .filter(|e| e.state() == ExecutionState::Completed)
        .count();
    assert_eq!(completed, 1, "job {id}: {executions:?}");
    let stream = jobs
        .download_results(DownloadResultsRequest {
            job_id: id.to_owned(),
            path: "stdout".into(),
        })
        .await
        .expect("results")
        .into_inner();
    let stdout = shoal::content::transfer::download_bytes(stream, 1 << 20)
        .await
        .expect("stdout");
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        stdout.contains(&format!("arg[1]=job-{n}\n")),
        "job {id}: {stdout}"
    );
    // Its live log too: chunks whose commit a kill cut off are resent by the executor
    // until they are acknowledged.
    let mut chunks = jobs
        .get_logs(GetLogsRequest {
            job_id: id.to_owned(),
            execution_id: String::new(),
        })
        .await
        .expect("logs")
        .into_inner();
    let mut logged = Vec::new();
    while let Some(chunk) = chunks.message().await.expect("log chunk") {
        if chunk.stream == LogStream::Stdout as i32 {
            logged.extend_from_slice(&chunk.data);
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&logged),
        stdout,
        "job {id}: the logged stdout is the stored stdout"
    );
}

/// An executor killed with SIGKILL mid-job: after its lease the job runs on another.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_executors_job_finishes_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orchestrator = crate::common::start_orchestrator_with(
        &dir.path().join("o"),
        0,
        &["--lease", "2s", "--heartbeat-interval", "500ms"],
    )
    .await;
    let address = orchestrator.address.clone();
    let mut doomed = crate::common::start_executor(
        &address,
        &dir.path().join("doomed"),
        "doomed",
        &["--slots", "1"],
    );
    crate::common::wait_connected(&orchestrator, "doomed").await;
    // A user waiting on the job through all of it.
    let ticker = path("tests/fixtures/ticker.wasm");
    let crate::common::Waiting {
        child: waiting,
        id,
        stderr,
    } = crate::common::start_waiting_run(&address, &[&ticker, "3"]).await;
    crate::common::drain(stderr);
    let _follower = crate::common::follow_until(&address, &id, "tick 0").await;
    doomed.kill().await.expect("kill -9 the executor");
    let _rescuer = crate::common::start_executor(
        &address,
        &dir.path().join("rescuer"),
        "rescuer",
        &["--slots", "1"],
    );
    let job = crate::common::wait_terminal(&address, &id).await;
    assert_eq!(crate::common::state(&job), "JOB_STATE_COMPLETED", "{job}");
    // The waiting user sees the output of the run that completed, once: not the lost
    // run's ticks before it.
    let printed = tokio::time::timeout(crate::common::TIMEOUT, waiting.wait_with_output())
        .await
        .expect("wasm run ends")
        .expect("output");
    assert_eq!(printed.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        "tick 0\ntick 1\ntick 2\n"
    );
    let runs = crate::common::executions_of(&address, &id).await;
    assert_eq!(
        runs,
        [
            (
                "doomed".into(),
                "EXECUTION_STATE_FAILED".into(),
                "FAILURE_KIND_EXECUTOR_LOST".into()
            ),
            (
                "rescuer".into(),
                "EXECUTION_STATE_COMPLETED".into(),
                String::new()
            ),
        ]
    );
}

/// Two executor processes given one id: the second is refused, and both it and the
/// orchestrator say why, instead of taking the first one's stream and failing its
/// execution as lost; once the first is gone, the second has the id and runs the next job.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_executor_with_the_same_id_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orchestrator = crate::common::start_orchestrator_logged(
        &dir.path().join("o"),
        0,
        &["--lease", "2s", "--heartbeat-interval", "500ms"],
        &[],
    )
    .await;
    let address = orchestrator.address.clone();
    let orchestrator_log = orchestrator.lines.clone();
    let mut first = crate::common::start_executor(
        &address,
        &dir.path().join("first"),
        "twin",
        &["--slots", "1"],
    );
    crate::common::wait_connected(&orchestrator, "twin").await;
    let id = crate::common::submit(&address, &[&path("tests/fixtures/ticker.wasm"), "3"]).await;
    let _follower = crate::common::follow_until(&address, &id, "tick 0").await;

    let (_second, second_log) = crate::common::start_executor_logged(
        &address,
        &dir.path().join("second"),
        "twin",
        &["--slots", "1"],
        &[],
    );
    let refusal = crate::common::json_log_line(&second_log, "about the refusal", |line| {
        line["message"] == "the orchestrator refused this executor: its id is in use"
    })
    .await;
    assert_eq!(refusal["level"], "ERROR", "{refusal}");
    assert!(
        refusal["error"]
            .as_str()
            .is_some_and(|e| e.contains("twin") && e.contains("--executor-id")),
        "{refusal}"
    );
    crate::common::json_log_line(&orchestrator_log, "\"executor refused\"", |line| {
        line["message"] == "executor refused" && line["executor_id"] == "twin"
    })
    .await;

    let job = crate::common::wait_terminal(&address, &id).await;
    assert_eq!(crate::common::state(&job), "JOB_STATE_COMPLETED", "{job}");
    assert_eq!(
        crate::common::executions_of(&address, &id).await,
        [(
            "twin".into(),
            "EXECUTION_STATE_COMPLETED".into(),
            String::new()
        )],
        "the first executor's execution was not disturbed"
    );

    first.kill().await.expect("kill the first executor");
    crate::common::json_log_line(&second_log, "about registering", |line| {
        line["message"] == "registered with the orchestrator"
    })
    .await;
    let next = crate::common::submit(&address, &[&path("tests/fixtures/ticker.wasm"), "1"]).await;
    let job = crate::common::wait_terminal(&address, &next).await;
    assert_eq!(crate::common::state(&job), "JOB_STATE_COMPLETED", "{job}");
}

/// An executor whose connection is cut mid-job reconnects, reports the execution still
/// running, and the job completes once, on the same execution.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_recovers_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orchestrator = crate::common::start_orchestrator_with(
        &dir.path().join("o"),
        0,
        &["--lease", "10s", "--heartbeat-interval", "500ms"],
    )
    .await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let proxy = crate::common::Proxy::start(port).await;
    let _executor = crate::common::start_executor(
        &format!("http://127.0.0.1:{}", proxy.port),
        &dir.path().join("e"),
        "behind-proxy",
        &["--slots", "2"],
    );
    crate::common::wait_connected(&orchestrator, "behind-proxy").await;
    let id = crate::common::submit(&address, &[&path("tests/fixtures/ticker.wasm"), "12"]).await;
    let _follower = crate::common::follow_until(&address, &id, "tick 0").await;
    proxy.cut();
    // The cut is real: the executor comes back on a new stream, and it landed mid-run: the
    // job is still running on its first execution, its last lines not yet printed.
    crate::common::wait_connections(&orchestrator, "behind-proxy", 2).await;
    let during = crate::common::shoal(&address, &["job", "describe", &id, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(
        crate::common::state(&during),
        "JOB_STATE_RUNNING",
        "{during}"
    );
    assert_eq!(during["attempts"], 1, "{during}");
    let so_far = crate::common::shoal(&address, &["job", "logs", &id])
        .await
        .success();
    assert!(
        !so_far.stdout.contains("tick 5"),
        "the job ended before the cut: {so_far:?}"
    );
    let job = crate::common::wait_terminal(&address, &id).await;
    assert_eq!(crate::common::state(&job), "JOB_STATE_COMPLETED", "{job}");
    let runs = crate::common::executions_of(&address, &id).await;
    assert_eq!(
        runs,
        [(
            "behind-proxy".into(),
            "EXECUTION_STATE_COMPLETED".into(),
            String::new()
        )],
        "one execution, completed once"
    );
    let logs = crate::common::shoal(&address, &["job", "logs", &id])
        .await
        .success();
    for tick in 0..12 {
        assert_eq!(
            logs.stdout.matches(&format!("tick {tick}\n")).count(),
            1,
            "log lines are neither lost nor doubled: {}",
            logs.stdout
        );
    }
}

/// An executor whose log pipe is closed (its log collector died) keeps working: a failed
/// log write must not take the daemon down.
#[tokio::test(flavor = "multi_thread")]
async fn an_executor_outlives_its_log_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orchestrator = start_orchestrator(&dir.path().join("o"), 0).await;
    let address = orchestrator.address.clone();
    let mut executor = tokio::process::Command::new(crate::common::bin("shoal-executor"))
        .args([
            "--orchestrator",
            &address,
            "--executor-id",
            "mute",
            "--work-dir",
        ])
        .arg(dir.path().join("e"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn executor");
    drop(executor.stderr.take()); // the collector is gone before the first line
    crate::common::wait_connected(&orchestrator, "mute").await;
    let out = crate::common::shoal(
        &address,
        &["wasm", "run", &path("examples/hello/hello.wasm"), "mute"],
    )
    .await
    .success();
    assert!(out.stdout.contains("arg[1]=mute"), "{}", out.stdout);
    assert!(
        executor.try_wait().expect("status").is_none(),
        "the executor died"
    );
}
