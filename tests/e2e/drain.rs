//! Taking executors out of service: `node cordon|uncordon|drain`, and SIGTERM on an
//! executor, which drains it (no new work; running executions finish within the drain
//! timeout; the rest are handed back and retried elsewhere).

use crate::common::{Devstack, path, shoal, start_orchestrator, state, wait_connected};
use tokio::process::Child;

/// A cordoned executor gets no work; a drain stops what runs past the grace period and the
/// job is retried on another executor; uncordon lets work in again.
#[tokio::test(flavor = "multi_thread")]
async fn cordon_uncordon_and_drain() {
    let stack = Devstack::start(&["--slots", "1"]).await;
    let ticker = path("tests/fixtures/ticker.wasm");
    stack
        .shoal(&["node", "cordon", "devstack-0"])
        .await
        .success();
    let listed = stack.shoal(&["node", "list"]).await.success();
    assert!(
        listed.stdout.contains("CONNECTED,CORDONED"),
        "{}",
        listed.stdout
    );
    let id = stack.submit(&[&ticker, "600"]).await;
    let _follower = crate::common::follow_until(&stack.address, &id, "tick 0").await;
    assert_eq!(
        crate::common::executions_of(&stack.address, &id).await[0].0,
        "devstack-1",
        "the cordoned executor got work"
    );

    // Draining devstack-1 with no grace requeues the job; devstack-0 is cordoned, so it
    // waits, and says why.
    let drained = stack
        .shoal(&["node", "drain", "devstack-1", "--grace", "0s"])
        .await
        .success();
    assert!(
        drained
            .stdout
            .contains("0 execution(s) finished, 1 stopped and requeued"),
        "{}",
        drained.stdout
    );
    stack
        .wait_job(
            &id,
            "queued again, waiting for an uncordoned executor",
            |j| {
                state(j) == "JOB_STATE_QUEUED"
                    && j["statusMessage"]
                        .as_str()
                        .is_some_and(|m| m.contains("all 2 connected are cordoned"))
            },
        )
        .await;
    stack
        .shoal(&["node", "uncordon", "devstack-0"])
        .await
        .success();
    let _follower = crate::common::follow_until(&stack.address, &id, "tick 0").await;
    let runs = crate::common::executions_of(&stack.address, &id).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        runs[0],
        (
            "devstack-1".into(),
            "EXECUTION_STATE_FAILED".into(),
            "FAILURE_KIND_EXECUTOR_LOST".into()
        )
    );
    assert_eq!(runs[1].0, "devstack-0");
    stack.shoal(&["job", "stop", &id]).await.success();

    // Unknown executors are NOT_FOUND.
    let out = stack.shoal(&["node", "cordon", "no-such-executor"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no executor no-such-executor"),
        "{}",
        out.stderr
    );
}

/// A drain whose grace period outlasts the running work lets it finish where it runs: the
/// job completes on its first and only execution, nothing is requeued, and the drained
/// executor stays cordoned: work submitted after goes to the other one.
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_lets_running_work_finish_within_its_grace() {
    let stack = Devstack::start(&["--slots", "1"]).await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let id = stack.submit(&[&ticker, "8"]).await;
    let _follower = crate::common::follow_until(&stack.address, &id, "tick 0").await;
    let draining = crate::common::executions_of(&stack.address, &id).await[0]
        .0
        .clone();
    let drain = {
        let address = stack.address.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            shoal(&address, &["node", "drain", &draining, "--grace", "2m"]).await
        })
    };
    stack
        .wait_job(&id, "completed", |j| state(j) == "JOB_STATE_COMPLETED")
        .await;
    let drained = drain.await.expect("drain task").success();
    assert!(
        drained
            .stdout
            .contains("1 execution(s) finished, 0 stopped and requeued"),
        "{}",
        drained.stdout
    );
    let runs = crate::common::executions_of(&stack.address, &id).await;
    assert_eq!(
        runs,
        [(
            draining.clone(),
            "EXECUTION_STATE_COMPLETED".into(),
            String::new()
        )]
    );
    let listed = stack.shoal(&["node", "list"]).await.success().stdout;
    let row = listed
        .lines()
        .find(|l| l.trim_start().starts_with(&draining))
        .unwrap_or_else(|| panic!("no row for {draining}: {listed}"));
    assert!(row.contains("CORDONED"), "{row}");
    let hello = path("examples/hello/hello.wasm");
    for _ in 0..4 {
        let after = stack.shoal(&["wasm", "run", &hello]).await.success();
        let later = crate::common::executions_of(&stack.address, &after.submitted_job()).await;
        assert_ne!(later[0].0, draining, "a drained executor got work");
    }
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running") as i32;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// SIGTERM on an executor: it reports DRAINING, lets the running job finish, then exits
/// cleanly; with a drain timeout shorter than the job, the job is handed back instead.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_executor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orchestrator = start_orchestrator(&dir.path().join("orchestrator"), 0).await;
    let address = orchestrator.address.clone();
    let ticker = path("tests/fixtures/ticker.wasm");

    let mut executor = crate::common::start_executor(
        &address,
        &dir.path().join("e1"),
        "drainee",
        &["--drain-timeout", "2m"],
    );
    wait_connected(&orchestrator, "drainee").await;
    // The first run fetches the program into its scratch directory, which is then deleted;
    // the next, from the module cache, leaves a clean one that is kept for reuse.
    let warm_up = crate::common::submit(&address, &[&ticker, "0"]).await;
    crate::common::wait_terminal(&address, &warm_up).await;
    let id = crate::common::submit(&address, &[&ticker, "3"]).await;
    let _follower = crate::common::follow_until(&address, &id, "tick 0").await;
    sigterm(&executor);
    // The orchestrator says when it records the drain; the node then shows it (the job
    // keeps it draining for seconds yet).
    crate::common::json_log_line(&orchestrator.lines, "of the drain", |line| {
        line["message"] == "executor draining" && line["executor_id"] == "drainee"
    })
    .await;
    let describe = ["node", "describe", "drainee", "--output", "json"];
    let node = shoal(&address, &describe).await.success().json();
    assert_eq!(node["state"], "NODE_STATE_DRAINING", "{node}");
    let status = tokio::time::timeout(crate::common::TIMEOUT, executor.wait())
        .await
        .expect("the executor exits after its drain")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let job = shoal(&address, &["job", "describe", &id, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    // Its scratch directory (kept for reuse after the job) went with the executor.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("e1/executions"))
        .expect("the executions directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "scratch directories left behind: {left:?}");

    // A drain timeout shorter than the job: the job goes back to the queue.
    let mut executor = crate::common::start_executor(
        &address,
        &dir.path().join("e2"),
        "drainee",
        &["--drain-timeout", "1s"],
    );
    crate::common::wait_connections(&orchestrator, "drainee", 2).await;
    let id = crate::common::submit(&address, &[&ticker, "600"]).await;
    let _follower = crate::common::follow_until(&address, &id, "tick 0").await;
    sigterm(&executor);
    let status = tokio::time::timeout(crate::common::TIMEOUT, executor.wait())
        .await
        .expect("the executor exits after its drain timeout")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let job = shoal(&address, &["job", "describe", &id, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_QUEUED", "{job}");
    let runs = shoal(&address, &["job", "executions", &id, "--output", "json"])
        .await
        .success()
        .json();
    let failure = runs[0]["failure"].to_string();
    assert!(
        failure.contains("FAILURE_KIND_EXECUTOR_LOST") && failure.contains("drain timeout (1s)"),
        "{runs}"
    );
}

/// SIGTERM on the orchestrator: it stops cleanly (exit 0, store closed), and a restart on
/// the same data directory has every job as it was.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_orchestrator_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = start_orchestrator(&data, 0).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let _executor = crate::common::start_executor(&address, &dir.path().join("e"), "drainee", &[]);
    wait_connected(&orchestrator, "drainee").await;
    let hello = path("examples/hello/hello.wasm");
    shoal(&address, &["wasm", "run", &hello, "before"])
        .await
        .success();
    let queued_behind_a_constraint = shoal(
        &address,
        &["wasm", "run", "--id-only", &hello, "-s", "zone=nowhere"],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    sigterm(&orchestrator.child);
    let status = tokio::time::timeout(crate::common::TIMEOUT, orchestrator.child.wait())
        .await
        .expect("the orchestrator exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let _orchestrator = start_orchestrator(&data, port).await;
    let jobs = shoal(&address, &["job", "list", "--output", "json"])
        .await
        .success()
        .json();
    let states: Vec<&str> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states.len(), 2, "{jobs}");
    assert!(states.contains(&"JOB_STATE_COMPLETED"), "{jobs}");
    let queued = shoal(
        &address,
        &[
            "job",
            "describe",
            &queued_behind_a_constraint,
            "--output",
            "json",
        ],
    )
    .await
    .success()
    .json();
    assert_eq!(state(&queued), "JOB_STATE_QUEUED", "{queued}");
}
