//! Fan-out through the real CLI and real daemons: a job of N partitions, each with its
//! partition index in its environment, laid out as `partitions/<i>/` by `job get`; a
//! partition that fails for good ends the job naming it; bad counts are refused at submit;
//! a sharded directory, one file per partition, and fan-in by the result's CID; a `kill
//! -9` of the orchestrator mid-job and a cancel of 1,000 partitions.

use crate::common::{
    Devstack, path, shoal, start_executor, start_orchestrator, state, submit, wait_connected,
    wait_terminal, wat,
};

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
    let id = out.submitted_job();
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
        missing.stderr.contains("6 is past the job's 6 partitions"),
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

/// A partition that fails once is retried alone and the job completes; a partition that
/// traps on every attempt ends the job FAILED, naming it, and the CLI exits non-zero;
/// counts past the bounds are refused before anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_partition_is_retried_alone_or_fails_the_job_and_bad_counts_are_refused() {
    // The marker input comes from the test's own server on loopback: allowed explicitly.
    let stack = Devstack::start(&["--allow-url", "127.0.0.1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");

    // A partition whose first attempt fails (the marker says "fail" once, to whichever
    // partition fetches it first) is retried alone under the job's policy, and the job
    // completes: one partition with two attempts, the others with one.
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served = hits.clone();
    let app = axum::Router::new().route(
        "/marker",
        axum::routing::get(move || {
            let first = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move { if first { "fail" } else { "ok" } }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let marker = format!("http://{}/marker", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let spec = dir.path().join("retried.yaml");
    std::fs::write(
        &spec,
        format!(
            "program: {}\npartitions: 3\ninputs:\n  - {{source: \"{marker}\", target: /inputs/marker}}\nretry: {{max_attempts: 2, retry_on: [trap]}}\n",
            path("tests/fixtures/marker.wasm")
        ),
    )
    .expect("write the spec");
    let out = stack
        .shoal(&["job", "run", &spec.to_string_lossy()])
        .await
        .success();
    assert!(
        out.stderr
            .contains("Partitions: 3 of 3 completed, 0 failed, 0 cancelled"),
        "{}",
        out.stderr
    );
    let id = out.submitted_job();
    let executions = stack
        .shoal(&["job", "executions", &id, "--output", "json"])
        .await
        .success()
        .json();
    let mut attempts: Vec<(u64, u64, String)> = executions
        .as_array()
        .expect("executions")
        .iter()
        .map(|e| {
            (
                e["partition"].as_u64().unwrap_or(0),
                e["attempt"].as_u64().unwrap_or(0),
                e["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    attempts.sort();
    let failed: Vec<_> = attempts
        .iter()
        .filter(|a| a.2 == "EXECUTION_STATE_FAILED")
        .collect();
    assert_eq!(failed.len(), 1, "one attempt failed: {attempts:?}");
    let retried = failed[0].0;
    for partition in 0..3 {
        let mine: Vec<_> = attempts.iter().filter(|a| a.0 == partition).collect();
        let expected = if partition == retried { 2 } else { 1 };
        assert_eq!(mine.len(), expected, "partition {partition}: {attempts:?}");
        assert_eq!(
            mine.last().map(|a| a.2.as_str()),
            Some("EXECUTION_STATE_COMPLETED"),
            "partition {partition}: {attempts:?}"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "one fetch per attempt"
    );
    // One partition's attempts alone, and an index past the count refused.
    let retried_text = retried.to_string();
    let mine = stack
        .shoal(&[
            "job",
            "executions",
            &id,
            "--partition",
            &retried_text,
            "--output",
            "json",
        ])
        .await
        .success()
        .json();
    let mine: Vec<_> = mine.as_array().expect("executions").iter().collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    // Protobuf's JSON leaves out zero values: partition 0 has no "partition" field.
    assert!(
        mine.iter()
            .all(|e| e["partition"].as_u64().unwrap_or(0) == retried),
        "{mine:?}"
    );
    let past = stack
        .shoal(&["job", "executions", &id, "--partition", "3"])
        .await;
    assert_eq!(past.code, 1, "{past:?}");
    assert!(
        past.stderr.contains("past the job's 3 partitions"),
        "{}",
        past.stderr
    );

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
    // The failed partition has a line of its own, in the run and in `job describe`, and
    // `job executions` says which partition each attempt ran.
    let failed_line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("Failed partition "))
        .unwrap_or_else(|| panic!("a line for the failed partition: {}", out.stderr));
    assert!(
        failed_line.contains("(attempt 1 on devstack-"),
        "{failed_line}"
    );
    assert!(failed_line.contains("TRAP"), "{failed_line}");
    let id = out.submitted_job();
    let described = stack.shoal(&["job", "describe", &id]).await.success();
    let failed = failed_line.trim_start_matches("Failed ");
    assert!(
        described
            .stdout
            .contains(&format!("Failed partitions:\n  {failed}")),
        "{}",
        described.stdout
    );
    let table = stack.shoal(&["job", "executions", &id]).await.success();
    assert!(table.stdout.contains("PARTITION"), "{}", table.stdout);

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

/// 100 files in a directory, `--shard`: one partition per file, each seeing exactly its
/// own file (wordcount writes what it counted), never more than `--max-parallel` running
/// at once (from the executions' times), laid out by `job get` and one by `--partition`;
/// then a second job takes the whole result tree by its one CID (fan-in) and sees every
/// partition's count. Bad shards are refused at submit: a file, an empty directory, a
/// target no input is mounted at.
#[tokio::test(flavor = "multi_thread")]
async fn a_sharded_directory_runs_a_partition_per_file_and_fans_in_by_cid() {
    let stack = Devstack::start(&[]).await;
    let data = stack.scratch("files");
    std::fs::create_dir(&data).expect("mkdir");
    for i in 0..100 {
        // File i has i + 1 lines, so each partition's count says which file it saw.
        let body: String = (0..=i).map(|l| format!("line {l}\n")).collect();
        std::fs::write(data.join(format!("f{i:03}.txt")), body).expect("write");
    }
    let wordcount = path("examples/wordcount/wordcount.wasm");
    let input = format!("{}:/inputs/data", data.display());
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            "-i",
            &input,
            "--shard",
            "/inputs/data",
            "--max-parallel",
            "2",
            &wordcount,
        ])
        .await
        .success();
    assert!(
        out.stderr
            .contains("Partitions: 100 of 100 completed, 0 failed, 0 cancelled"),
        "{}",
        out.stderr
    );
    let id = out.submitted_job();
    let job = stack.job(&id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    assert_eq!(
        job["spec"]["partitions"], 100,
        "the count is derived: {job}"
    );
    assert_eq!(job["shardEntries"], 100, "{job}");
    let described = stack.shoal(&["job", "describe", &id]).await.success();
    assert!(
        described
            .stdout
            .contains("(sharded: 100 entries, 1 per partition)"),
        "{}",
        described.stdout
    );

    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    let mut lines = 0;
    for i in 0..100 {
        let summary =
            std::fs::read_to_string(results.join(format!("partitions/{i}/outputs/summary.txt")))
                .expect("summary");
        let expected = format!("data/f{i:03}.txt: {} lines, {} words,", i + 1, 2 * (i + 1));
        assert!(summary.starts_with(&expected), "{i}: {summary}");
        assert!(
            summary.contains("total: 1 files,"),
            "partition {i} saw only its file: {summary}"
        );
        lines += i + 1;
    }
    assert_eq!(lines, 5050);
    let one = stack.scratch("one");
    stack
        .shoal(&[
            "job",
            "get",
            &id,
            &one.to_string_lossy(),
            "--partition",
            "42",
        ])
        .await
        .success();
    let summary = std::fs::read_to_string(one.join("outputs/summary.txt")).expect("summary");
    assert!(summary.starts_with("data/f042.txt: 43 lines"), "{summary}");

    // The cap, from the executions' times: at no moment were 3 partitions assigned and
    // not yet ended.
    let executions = stack
        .shoal(&["job", "executions", &id, "--output", "json"])
        .await
        .success()
        .json();
    let time = |value: &serde_json::Value| -> std::time::SystemTime {
        let text = value.as_str().expect("a timestamp");
        text.parse::<prost_types::Timestamp>()
            .expect("RFC 3339")
            .try_into()
            .expect("a time")
    };
    let spans: Vec<_> = executions
        .as_array()
        .expect("executions")
        .iter()
        .map(|e| (time(&e["createdAt"]), time(&e["finishedAt"])))
        .collect();
    assert_eq!(spans.len(), 100, "one execution per partition");
    for (start, _) in &spans {
        let running = spans
            .iter()
            .filter(|(s, f)| s <= start && start < f)
            .count();
        assert!(running <= 2, "{running} partitions ran at once");
    }

    // Fan-in: the whole result tree, by its CID, is the next job's input.
    let root = job["result"]["resultCid"].as_str().expect("result CID");
    let all = format!("{root}:/inputs");
    let fan_in = stack
        .shoal(&["wasm", "run", "-i", &all, &wordcount])
        .await
        .success();
    assert!(fan_in.stdout.contains("in 500 files"), "{}", fan_in.stdout);
    let merged = stack.scratch("merged");
    let fan_in_id = fan_in.submitted_job();
    stack
        .shoal(&["job", "get", &fan_in_id, &merged.to_string_lossy()])
        .await
        .success();
    let summary = std::fs::read_to_string(merged.join("outputs/summary.txt")).expect("summary");
    for i in 0..100 {
        let count =
            format!("partitions/{i}/outputs/counts/data/f{i:03}.txt.count: 1 lines, 3 words,");
        assert!(summary.contains(&count), "partition {i} missing: {summary}");
    }

    // Bad shards, refused at submit with the reason: by the orchestrator (exit 1) or, when
    // the flags alone say so, by the CLI before anything is sent (exit 2).
    let file_cid = stack
        .shoal(&["data", "put", &data.join("f001.txt").to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let empty = stack.scratch("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let cases = [
        (
            format!("{file_cid}:/inputs/f"),
            "/inputs/f",
            1,
            "is a file, not a directory",
        ),
        (
            format!("{}:/inputs/e", empty.display()),
            "/inputs/e",
            1,
            "has no entries",
        ),
        (
            input.clone(),
            "/inputs/other",
            2,
            "no input is mounted there",
        ),
        (
            input.clone(),
            "/inputs/data --count 3",
            2,
            "cannot be used with",
        ),
    ];
    for (input, shard, code, reason) in cases {
        let mut args = vec!["wasm", "run", "-i", &input, "--shard"];
        args.extend(shard.split(' '));
        args.push(&wordcount);
        let refused = stack.shoal(&args).await;
        assert_eq!(refused.code, code, "{shard}: {refused:?}");
        assert!(
            refused.stderr.contains(reason),
            "{shard}: {}",
            refused.stderr
        );
    }
}

/// The job as `job describe --output json` gives it, once `done` holds for it: checked
/// again after each short pause, as a partitioned job's watch carries only its own few
/// state changes, not one per partition.
async fn poll_job(
    address: &str,
    id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let describe = ["job", "describe", id, "--output", "json"];
    let wait = async {
        loop {
            let job = shoal(address, &describe).await.success().json();
            if done(&job) {
                return job;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("job {id} never reached {what}"))
}

/// `kill -9` of the orchestrator in the middle of a 1,000-partition job: after the restart
/// every partition ends completed exactly once (none lost, none run to completion twice),
/// and the job completes. Then cancelling a 1,000-partition job that is running stops
/// every running partition and starts no other.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_orchestrator_loses_no_partition_and_cancel_stops_them_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let mut orchestrator = start_orchestrator(&data, 0).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let _executors: Vec<_> = ["p-0", "p-1"]
        .iter()
        .map(|id| start_executor(&address, &dir.path().join(id), id, &["--slots", "4"]))
        .collect();
    wait_connected(&orchestrator, "p-0").await;
    wait_connected(&orchestrator, "p-1").await;

    // Two at a time, so the kill lands well before the end (about 900 partitions to go).
    let hello = path("examples/hello/hello.wasm");
    let id = submit(
        &address,
        &["--count", "1000", "--max-parallel", "2", &hello],
    )
    .await;
    let completed = |job: &serde_json::Value| job["partitions"]["completed"].as_u64().unwrap_or(0);
    let before = poll_job(&address, &id, "100 completed partitions", |job| {
        completed(job) >= 100
    })
    .await;
    orchestrator.kill().await.expect("kill -9 the orchestrator");
    let killed = std::time::SystemTime::now();
    assert!(completed(&before) < 1000, "killed mid-job: {before}");
    let _orchestrator = start_orchestrator(&data, port).await;
    let job = wait_terminal(&address, &id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    assert_eq!(completed(&job), 1000, "{job}");
    let executions = shoal(&address, &["job", "executions", &id, "--output", "json"])
        .await
        .success()
        .json();
    let mut completions = vec![0u32; 1000];
    let mut after_restart = 0;
    for execution in executions.as_array().expect("executions") {
        let created: std::time::SystemTime = execution["createdAt"]
            .as_str()
            .and_then(|t| t.parse::<prost_types::Timestamp>().ok())
            .and_then(|t| t.try_into().ok())
            .expect("createdAt");
        if created > killed {
            after_restart += 1;
        }
        let state = execution["state"].as_str().unwrap_or_default();
        assert!(
            !matches!(
                state,
                "EXECUTION_STATE_SCHEDULED"
                    | "EXECUTION_STATE_STAGING"
                    | "EXECUTION_STATE_RUNNING"
                    | "EXECUTION_STATE_PUBLISHING"
            ),
            "every execution ended: {execution}"
        );
        if state == "EXECUTION_STATE_COMPLETED" {
            let partition = execution["partition"].as_u64().unwrap_or(0) as usize;
            completions[partition] += 1;
        }
    }
    let wrong: Vec<_> = completions
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "(partition, completions) not 1: {wrong:?}"
    );
    assert!(
        after_restart > 0,
        "the restarted orchestrator placed the rest of the partitions"
    );

    // Cancel: the running partitions stop, the queued ones never start.
    let dir_spin = tempfile::tempdir().expect("tempdir");
    let spin = wat(dir_spin.path(), "spin");
    let id = submit(&address, &["--count", "1000", &spin]).await;
    poll_job(&address, &id, "running partitions", |job| {
        job["partitions"]["running"].as_u64().unwrap_or(0) >= 8
    })
    .await;
    let stopped = std::time::Instant::now();
    shoal(&address, &["job", "stop", &id]).await.success();
    let job = shoal(&address, &["job", "describe", &id, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_CANCELLED", "{job}");
    assert_eq!(job["partitions"]["cancelled"], 1000, "{job}");
    let ended = async {
        loop {
            let executions = shoal(&address, &["job", "executions", &id, "--output", "json"])
                .await
                .success()
                .json();
            let executions = executions.as_array().expect("executions").clone();
            if executions
                .iter()
                .all(|e| e["state"] == "EXECUTION_STATE_CANCELLED")
            {
                return executions;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let executions = tokio::time::timeout(std::time::Duration::from_secs(60), ended)
        .await
        .expect("every execution cancelled");
    eprintln!(
        "cancel: {} running partitions stopped in {:?}",
        executions.len(),
        stopped.elapsed()
    );
    assert_eq!(
        executions.len(),
        8,
        "the 8 that were running (2 executors of 4 slots), no other"
    );
    // Their slots are free now, and still no other partition of the job is placed.
    let again = shoal(&address, &["job", "executions", &id, "--output", "json"])
        .await
        .success()
        .json();
    let ids = |list: &[serde_json::Value]| -> Vec<String> {
        list.iter().map(|e| e["id"].to_string()).collect()
    };
    assert_eq!(ids(again.as_array().expect("executions")), ids(&executions));
    let job = shoal(&address, &["job", "describe", &id, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(
        job["partitions"]["running"].as_u64().unwrap_or(0),
        0,
        "{job}"
    );
}

/// `--allow-partial`: a partition that fails on every attempt does not stop the others.
/// They all run to their end; the job ends FAILED naming the failed partition, the CLI
/// exits non-zero, and the results of every partition that completed are there.
#[tokio::test(flavor = "multi_thread")]
async fn allow_partial_lets_the_other_partitions_finish() {
    let stack = Devstack::start(&[]).await;
    let marker = path("tests/fixtures/marker.wasm");
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            "--count",
            "4",
            "--allow-partial",
            &marker,
            "1",
        ])
        .await;
    assert_eq!(out.code, 125, "the job did not fail: {out:?}");
    assert!(
        out.stderr
            .contains("Partitions: 3 of 4 completed, 1 failed, 0 cancelled"),
        "{}",
        out.stderr
    );
    let failed_line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("Failed partition "))
        .unwrap_or_else(|| panic!("a line for the failed partition: {}", out.stderr));
    assert!(
        failed_line.starts_with("Failed partition 1 "),
        "{failed_line}"
    );
    let id = out.submitted_job();
    let job = stack.job(&id).await;
    assert_eq!(state(&job), "JOB_STATE_FAILED", "{job}");
    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    for partition in [0, 2, 3] {
        let stdout = results.join(format!("partitions/{partition}/stdout"));
        assert_eq!(
            std::fs::read_to_string(&stdout).expect("a completed partition's stdout"),
            format!("partition {partition}\n")
        );
    }
    assert!(
        !results.join("partitions/1/exitCode").exists(),
        "the failed partition has no exit code"
    );
}
