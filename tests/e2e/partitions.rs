//! Fan-out through the real CLI and a real devstack: a job of N partitions, each with its
//! partition index in its environment, laid out as `partitions/<i>/` by `job get`; a
//! partition that fails for good ends the job naming it; bad counts are refused at submit.

use crate::common::{Devstack, path, state, wat};

/// Every partition runs once with its own index and the count, and the job's one result
/// tree holds each partition's stdout, stderr and exit code under `partitions/<i>/`.
#[tokio::test(flavor = "multi_thread")]
async fn each_partition_sees_its_index_and_the_results_are_laid_out_by_partition() {
    let stack = Devstack::start(&[]).await;
    let hello = path("examples/hello/hello.wasm");
    let out = stack
        .shoal(&["wasm", "run", "--count", "6", &hello])
        .await
        .success();
    assert!(
        out.stderr
            .contains("Partitions: 6 of 6 completed, 0 failed, 0 cancelled"),
        "{}",
        out.stderr
    );
    let id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Job ")?.strip_suffix(" submitted"))
        .expect("the job id")
        .to_owned();
    let job = stack.job(&id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    for i in 0..6 {
        let dir = results.join(format!("partitions/{i}"));
        let stderr = std::fs::read_to_string(dir.join("stderr")).expect("stderr");
        assert!(
            stderr.contains(&format!("env SHOAL_PARTITION_INDEX={i}\n")),
            "{i}: {stderr}"
        );
        assert!(
            stderr.contains("env SHOAL_PARTITION_COUNT=6\n"),
            "{i}: {stderr}"
        );
        let stdout = std::fs::read_to_string(dir.join("stdout")).expect("stdout");
        assert!(stdout.starts_with("Hello from"), "{i}: {stdout}");
        assert_eq!(
            std::fs::read_to_string(dir.join("exitCode")).expect("exitCode"),
            "0"
        );
    }
    // One partition's results alone, and its logs.
    let one = stack.scratch("one");
    stack
        .shoal(&[
            "job",
            "get",
            &id,
            &one.to_string_lossy(),
            "--partition",
            "3",
        ])
        .await
        .success();
    let stderr = std::fs::read_to_string(one.join("stderr")).expect("stderr");
    assert!(stderr.contains("env SHOAL_PARTITION_INDEX=3\n"), "{stderr}");
    let logs = stack
        .shoal(&["job", "logs", &id, "--partition", "2"])
        .await
        .success();
    assert!(
        logs.stderr.contains("env SHOAL_PARTITION_INDEX=2\n"),
        "{}",
        logs.stderr
    );
    assert!(logs.stdout.starts_with("Hello from"), "{}", logs.stdout);
    let whole = stack.shoal(&["job", "logs", &id]).await;
    assert_eq!(whole.code, 1, "{whole:?}");
    assert!(whole.stderr.contains("has partitions"), "{}", whole.stderr);
    assert!(
        out.stderr.contains("--partition I"),
        "the run says where the output is: {}",
        out.stderr
    );
    let missing = stack.shoal(&["job", "logs", &id, "--partition", "6"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("no execution of partition 6"),
        "{}",
        missing.stderr
    );
    // One execution per partition, each its own.
    let executions = stack
        .shoal(&["job", "executions", &id, "--output", "json"])
        .await
        .success()
        .json();
    let mut partitions: Vec<u64> = executions
        .as_array()
        .expect("executions")
        .iter()
        .map(|e| e["partition"].as_u64().unwrap_or(0))
        .collect();
    partitions.sort();
    assert_eq!(partitions, [0, 1, 2, 3, 4, 5], "{executions}");
}

/// A partition that traps on every attempt ends the job FAILED, naming it, and the CLI
/// exits non-zero; counts past the bounds are refused before anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_partition_fails_the_job_and_bad_counts_are_refused() {
    let stack = Devstack::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let trap = wat(dir.path(), "trap");
    let out = stack.shoal(&["wasm", "run", "--count", "3", &trap]).await;
    assert_eq!(out.code, 125, "the job did not complete: {out:?}");
    assert!(
        out.stderr.contains("FAILED: TRAP: partition "),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("wasm trap"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Partitions: 0 of 3 completed, 1 failed, 2 cancelled"),
        "{}",
        out.stderr
    );

    let hello = path("examples/hello/hello.wasm");
    let zero = stack.shoal(&["wasm", "run", "--count", "0", &hello]).await;
    assert_eq!(zero.code, 2, "{zero:?}");
    let many = stack
        .shoal(&["wasm", "run", "--count", "10001", &hello])
        .await;
    assert_eq!(many.code, 1, "{many:?}");
    assert!(
        many.stderr.contains("partitions: must be at most 10000"),
        "{}",
        many.stderr
    );
    let cap = stack
        .shoal(&["wasm", "run", "--count", "2", "--max-parallel", "3", &hello])
        .await;
    assert_eq!(cap.code, 1, "{cap:?}");
    assert!(cap.stderr.contains("max_parallel"), "{}", cap.stderr);
}
