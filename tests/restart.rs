//! The orchestrator and an executor as separate real processes: the orchestrator is
//! killed with SIGKILL and restarted on the same data directory and port.

mod common;

use common::{free_port, path, shoal, start_orchestrator, state, wait_connected};

/// After `kill -9` and a restart, finished jobs keep their results, queued jobs stay
/// queued, a job that was running when the orchestrator died completes once, and the
/// executor reconnects by itself.
#[tokio::test(flavor = "multi_thread")]
async fn orchestrator_restart_keeps_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let mut orchestrator = start_orchestrator(&data, port).await;
    let _executor = common::start_executor(
        &address,
        &dir.path().join("executor"),
        "restart-test",
        &["--label", "zone=a"],
    );
    wait_connected(&address).await;

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
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let job = shoal(&address, &["job", "describe", &running, "--output", "json"])
            .await
            .success()
            .json();
        if state(&job) == "JOB_STATE_RUNNING" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ran: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

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
