//! The orchestrator's data directory under stress, with the orchestrator and an executor
//! as separate real processes: `kill -9` and a restart on the same directory and port, a
//! write-ahead log damaged while it was down, and a disk that fills up and is freed.

use crate::common::small_disk::SmallDisk;
use crate::common::{bin, path, shoal, start_orchestrator, state, wait_connected};
use shoal::net::auth::{AuthChannel, CallerMetadata};
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::{JobSpec, SubmitJobRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// After `kill -9` and a restart, finished jobs keep their results, queued jobs stay
/// queued, a job that was running when the orchestrator died completes once, and the
/// executor reconnects by itself.
#[tokio::test(flavor = "multi_thread")]
async fn orchestrator_restart_keeps_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = start_orchestrator(&data, 0).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let _executor = crate::common::start_executor(
        &address,
        &dir.path().join("executor"),
        "restart-test",
        &["--label", "zone=a"],
    );
    wait_connected(&orchestrator, "restart-test").await;

    let hello = path("examples/hello/hello.wasm");
    let finished = shoal(&address, &["wasm", "run", "--id-only", &hello, "before"])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    shoal(&address, &["job", "logs", "-f", &finished])
        .await
        .success();
    let queued = shoal(
        &address,
        &["wasm", "run", "--id-only", &hello, "-s", "zone=b"],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    let running = shoal(
        &address,
        &[
            "wasm",
            "run",
            "--id-only",
            &path("tests/fixtures/ticker.wasm"),
            "3",
        ],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    crate::common::wait_job_state(&address, &running, "RUNNING", |job| {
        state(job) == "JOB_STATE_RUNNING"
    })
    .await;

    orchestrator.kill().await.expect("kill -9 the orchestrator");
    let _orchestrator = start_orchestrator(&data, port).await;

    let job = shoal(
        &address,
        &["job", "describe", &finished, "--output", "json"],
    )
    .await
    .success()
    .json();
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let results = dir.path().join("results");
    shoal(
        &address,
        &["job", "get", &finished, &results.to_string_lossy()],
    )
    .await
    .success();
    let stdout = std::fs::read_to_string(results.join("stdout")).expect("stdout");
    assert!(stdout.contains("arg[1]=before"), "{stdout}");
    let job = shoal(&address, &["job", "describe", &queued, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_QUEUED", "{job}");

    // The executor comes back by itself and keeps the execution it was running.
    let logs = shoal(&address, &["job", "logs", "-f", &running])
        .await
        .success();
    let job = shoal(&address, &["job", "describe", &running, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}\n{logs:?}");
    assert_eq!(job["attempts"], 1, "ran once: {job}");
    let after = shoal(&address, &["wasm", "run", &hello, "after"])
        .await
        .success();
    assert!(after.stdout.contains("arg[1]=after"));
}

/// An executor whose guest ends while the orchestrator is down keeps retrying the upload
/// of its results (store calls are retried for up to 10 minutes; 3 MiB of output is too
/// large to travel inline with the completion) and, once the orchestrator is back on the
/// same directory and port, the job completes on its one execution with all of its output.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_that_meets_an_orchestrator_outage_completes_once_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = start_orchestrator(&data, 0).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let (_executor, executor_log) = crate::common::start_executor_logged(
        &address,
        &dir.path().join("executor"),
        "outage-test",
        &[],
        &[],
    );
    wait_connected(&orchestrator, "outage-test").await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let id = crate::common::submit(&address, &[&ticker, "4", "3145728"]).await;
    crate::common::wait_job_state(&address, &id, "RUNNING", |job| {
        state(job) == "JOB_STATE_RUNNING"
    })
    .await;

    orchestrator.kill().await.expect("kill -9 the orchestrator");
    // The guest ends meanwhile; its results cannot be uploaded and the executor says so.
    crate::common::json_log_line(&executor_log, "a retried upload", |line| {
        line["message"] == "retrying" && line["what"] == "uploading results"
    })
    .await;
    let _orchestrator = start_orchestrator(&data, port).await;

    let job = crate::common::wait_terminal(&address, &id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    assert_eq!(job["attempts"], 1, "ran once: {job}");
    let results = dir.path().join("results");
    shoal(&address, &["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    let stdout = std::fs::read_to_string(results.join("stdout")).expect("stdout");
    assert_eq!(stdout, "tick 0\ntick 1\ntick 2\ntick 3\n", "{job}");
    let bytes = std::fs::read(results.join("outputs/bytes")).expect("the output");
    assert_eq!(bytes.len(), 3 << 20);
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8)
    );
}

/// A byte flipped in the middle of `state.wal` while the orchestrator was down (after a
/// `kill -9`, so the log holds acknowledged jobs) stops start-up with the offset and the
/// way out, and leaves the log as it was; `--recover-wal` then starts with the jobs before
/// the damage and keeps the damaged log aside.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_log_stops_start_up_until_recovered_explicitly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = start_orchestrator(&data, 0).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let hello = path("examples/hello/hello.wasm");
    let program = shoal(&address, &["data", "put", &hello])
        .await
        .success()
        .stdout;
    let program = program.trim().to_owned();
    let mut jobs = Vec::new();
    for n in 0..4 {
        let id = shoal(
            &address,
            &["wasm", "run", "--id-only", &program, &n.to_string()],
        )
        .await
        .success()
        .stdout;
        jobs.push(id.trim().to_owned());
    }
    orchestrator.kill().await.expect("kill -9 the orchestrator");
    orchestrator.child.wait().await.expect("reaped");

    let log = data.join("state.wal");
    let mut bytes = std::fs::read(&log).expect("read the log");
    assert!(
        bytes.len() > 1000,
        "the jobs are in the log: {} bytes",
        bytes.len()
    );
    // The log's frames (after its 16-byte header, each `[length][crc][header crc]` then the
    // payload): the last four are the four submissions. Damage the payload of the third.
    let mut starts = Vec::new();
    let mut at = 16;
    while at + 12 <= bytes.len() {
        starts.push(at);
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        at += 12 + length as usize;
    }
    assert_eq!(at, bytes.len(), "whole frames");
    bytes[starts[starts.len() - 2] + 12 + 3] ^= 0x08;
    std::fs::write(&log, &bytes).expect("damage the log");

    let refused = tokio::process::Command::new(bin("shoal-orchestrator"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .output();
    let refused = tokio::time::timeout(crate::common::TIMEOUT, refused)
        .await
        .expect("the orchestrator exits")
        .expect("run the orchestrator");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "started on a damaged log: {stderr}"
    );
    assert!(stderr.contains("is damaged at byte"), "{stderr}");
    assert!(stderr.contains("--recover-wal"), "{stderr}");
    assert_eq!(
        std::fs::read(&log).expect("read"),
        bytes,
        "the log was left as it was"
    );

    let _orchestrator =
        crate::common::start_orchestrator_with(&data, port, &["--recover-wal"]).await;
    let listed = shoal(&address, &["job", "list", "--output", "json"])
        .await
        .success();
    let kept: Vec<bool> = jobs
        .iter()
        .map(|id| listed.stdout.contains(id.as_str()))
        .collect();
    assert_eq!(kept, [true, true, false, false], "{}", listed.stdout);
    let aside = std::fs::read_dir(&data)
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.wal.damaged-")
        })
        .count();
    assert_eq!(aside, 1, "the damaged log is kept aside");
}

fn channel(address: &str) -> AuthChannel {
    let channel = tonic::transport::Endpoint::from_shared(address.to_owned())
        .expect("address")
        .connect_lazy();
    AuthChannel::new(channel.into(), CallerMetadata::default())
}

/// A full disk under the orchestrator's data directory (a real tmpfs filled up): a
/// submission gets UNAVAILABLE (retry later), not INTERNAL, and health says NOT_SERVING;
/// once the disk is freed the orchestrator recovers by itself — health SERVING again, and
/// the queue moves: the slot that the failed submission's assignment took in memory is
/// free again, so jobs run on the one-slot executor. The failed submission is not there.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_work_then_recovers_by_itself() {
    let disk = SmallDisk::mount("32m");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = disk.path().join("orchestrator");
    let orchestrator = start_orchestrator(&data, 0).await;
    let address = orchestrator.address.clone();
    let _executor = crate::common::start_executor(
        &address,
        &dir.path().join("executor"),
        "full-disk",
        &["--slots", "1"],
    );
    wait_connected(&orchestrator, "full-disk").await;
    let hello = path("examples/hello/hello.wasm");
    let program = shoal(&address, &["data", "put", &hello])
        .await
        .success()
        .stdout;
    let program = program.trim().to_owned();
    shoal(&address, &["wasm", "run", &program, "before"])
        .await
        .success();

    // A disk filled to the last page still takes a small write into a page a file already
    // has: submit until the disk is really out of room.
    let filler = disk.fill_leaving(0);
    let mut jobs = JobServiceClient::new(channel(&address));
    let mut acknowledged = Vec::new();
    let refused = loop {
        let arg = format!("probe-{}", acknowledged.len());
        let submitted = jobs.submit_job(probe(&program, &arg)).await;
        match submitted {
            Ok(response) => acknowledged.push(response.into_inner().job.expect("job").id),
            Err(status) => break (status, arg),
        }
        assert!(acknowledged.len() < 200, "a full disk took 200 submissions");
    };
    let (refused, lost) = refused;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // The refused job is in memory, not on disk: a retry with the same key must not be
    // answered with it (it would be acknowledged, then forgotten by the reload).
    let retried = jobs.submit_job(probe(&program, &lost)).await;
    assert_eq!(
        retried.as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::Unavailable),
        "{retried:?}"
    );
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(address.clone())
            .expect("address")
            .connect_lazy(),
    );
    let serving = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let mut watch = health
        .watch(serving("shoal.v1.JobService"))
        .await
        .expect("watch health")
        .into_inner();
    // The health service follows the store a moment after the refusal.
    let mut status = next_status(&mut watch).await;
    while status != ServingStatus::NotServing {
        status = next_status(&mut watch).await;
    }

    std::fs::remove_file(&filler).expect("free the disk");
    while status != ServingStatus::Serving {
        status = next_status(&mut watch).await;
    }
    for n in 0..3 {
        let arg = format!("after-{n}");
        let out = shoal(&address, &["wasm", "run", &program, &arg])
            .await
            .success();
        assert!(
            out.stdout.contains(&format!("arg[1]={arg}")),
            "{}",
            out.stdout
        );
    }
    // Every acknowledged submission runs; the refused one does not exist.
    for id in &acknowledged {
        let job = crate::common::wait_terminal(&address, id).await;
        assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    }
    let listed = shoal(&address, &["job", "list", "--output", "json"])
        .await
        .success();
    let count = listed.json().as_array().map(Vec::len);
    assert_eq!(count, Some(acknowledged.len() + 4), "{}", listed.stdout);
    assert!(
        !listed.stdout.contains(&format!("\"{lost}\"")),
        "{}",
        listed.stdout
    );
}

/// A submission of `program` with `arg`, its idempotency key derived from `arg`.
fn probe(program: &str, arg: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec {
            program: program.to_owned(),
            args: vec![arg.to_owned()],
            ..Default::default()
        }),
        idempotency_key: format!("full-disk-{arg}"),
        stored_cids: Vec::new(),
    }
}

/// The next serving status a health watch reports.
async fn next_status(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    tokio::time::timeout(crate::common::TIMEOUT, watch.message())
        .await
        .expect("a health change")
        .expect("health stream")
        .expect("health stream open")
        .status()
}
