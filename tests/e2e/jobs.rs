//! End-to-end tests of running jobs: the real `shoal` CLI against a real devstack (an
//! orchestrator and executors in one process), on ephemeral ports.

use crate::common::{Devstack, Output, failure_kind, path, state, wat};
use tokio::io::BufReader;

/// A program gets argv[0] = its name, then the user's args, exactly the given env plus
/// SHOAL_JOB_ID/SHOAL_EXECUTION_ID, and its stdout comes back.
#[tokio::test(flavor = "multi_thread")]
async fn hello_receives_args_and_env() {
    let stack = Devstack::start(&[]).await;
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &path("examples/hello/hello.wasm"),
            "-e",
            "HELLO=world",
            "first",
            "--",
            "--second",
            "-x",
        ])
        .await
        .success();
    assert!(
        out.stdout.contains("Hello from hello.wasm!"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("arg[1]=first\narg[2]=--second\narg[3]=-x\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("HELLO=world"), "{}", out.stdout);
    let env: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .collect();
    let names: Vec<&str> = env
        .iter()
        .map(|e| e.split('=').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["HELLO", "SHOAL_JOB_ID", "SHOAL_EXECUTION_ID"],
        "{}",
        out.stderr
    );
}

/// An input directory goes in and the output tree (with nested directories) comes back
/// byte for byte through `job get`.
#[tokio::test(flavor = "multi_thread")]
async fn input_tree_in_output_tree_out() {
    let stack = Devstack::start(&[]).await;
    let input = stack.scratch("input");
    std::fs::create_dir_all(input.join("nested/deeper")).expect("mkdir");
    std::fs::write(input.join("a.txt"), b"alpha\n").expect("write");
    std::fs::write(input.join("empty"), b"").expect("write");
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(input.join("nested/deeper/blob.bin"), &binary).expect("write");
    let id = stack
        .submit(&[
            &path("tests/fixtures/copytree.wasm"),
            "-i",
            &format!("{}:/inputs", input.display()),
        ])
        .await;
    stack.shoal(&["job", "logs", "-f", &id]).await.success();
    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    let copy = results.join("outputs/copy");
    assert_eq!(
        std::fs::read(copy.join("a.txt")).expect("a.txt"),
        b"alpha\n"
    );
    assert_eq!(std::fs::read(copy.join("empty")).expect("empty"), b"");
    assert_eq!(
        std::fs::read(copy.join("nested/deeper/blob.bin")).expect("blob"),
        binary
    );
    assert_eq!(
        std::fs::read_to_string(results.join("exitCode")).expect("exitCode"),
        "0"
    );
    assert_eq!(
        std::fs::read_to_string(results.join("stdout")).expect("stdout"),
        "copy done\n"
    );
    // One file of the results can be fetched alone.
    let single = stack.scratch("single.bin");
    stack
        .shoal(&[
            "job",
            "get",
            &id,
            "--path",
            "outputs/copy/nested/deeper/blob.bin",
            &single.to_string_lossy(),
        ])
        .await
        .success();
    assert_eq!(std::fs::read(single).expect("single"), binary);
}

/// The example spec runs through `job run`, uploading its local program and inputs.
#[tokio::test(flavor = "multi_thread")]
async fn example_spec_counts_words() {
    let stack = Devstack::start(&[]).await;
    let results = stack.scratch("results");
    let out = stack
        .shoal(&[
            "job",
            "run",
            &path("examples/spec.yaml"),
            "--download",
            &results.to_string_lossy(),
        ])
        .await
        .success();
    assert!(
        out.stdout.contains("counted 18 words in 2 files"),
        "{}",
        out.stdout
    );
    let summary = std::fs::read_to_string(results.join("outputs/summary.txt")).expect("summary");
    assert!(
        summary.contains("total: 2 files, 4 lines, 18 words, 83 bytes"),
        "{summary}"
    );
    let nested = std::fs::read_to_string(results.join("outputs/counts/poems/sonnet.txt.count"))
        .expect("nested");
    assert_eq!(nested, "2 9 39\n");
}

/// `wasm run --wait` exits with the program's exit code.
#[tokio::test(flavor = "multi_thread")]
async fn exit_code_is_propagated() {
    let stack = Devstack::start(&[]).await;
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &path("examples/exitcode/exitcode.wasm"),
            "42",
        ])
        .await;
    assert_eq!(out.code, 42, "{out:?}");
    assert!(out.stdout.contains("exiting with 42"));
    let out = stack
        .shoal(&["wasm", "run", &path("examples/exitcode/exitcode.wasm"), "0"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// A trap, a missing entry point, a mistyped entry point, an unknown import, bytes that are
/// not wasm and unbounded recursion each FAIL with their own kind, never success.
#[tokio::test(flavor = "multi_thread")]
async fn guest_failures_have_distinct_kinds() {
    let stack = Devstack::start(&[]).await;
    let dir = stack.dir.path();
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not webassembly").expect("write");
    let cases = [
        (vec![wat(dir, "trap")], "FAILURE_KIND_TRAP", "unreachable"),
        (vec![wat(dir, "recurse")], "FAILURE_KIND_TRAP", "stack"),
        (
            vec![wat(dir, "noentry")],
            "FAILURE_KIND_LINK_ERROR",
            "_start",
        ),
        (
            vec![wat(dir, "noentry"), "--entry-point".into(), "nope".into()],
            "FAILURE_KIND_LINK_ERROR",
            "nope",
        ),
        (
            vec![wat(dir, "badimport")],
            "FAILURE_KIND_LINK_ERROR",
            "launch_missiles",
        ),
        (
            vec![garbage.to_string_lossy().into_owned()],
            "FAILURE_KIND_INVALID_MODULE",
            "not a valid",
        ),
        (
            vec![wat(dir, "threads")],
            "FAILURE_KIND_INVALID_MODULE",
            "shared",
        ),
    ];
    for (args, kind, detail) in cases {
        let mut full = vec!["wasm", "run"];
        full.extend(args.iter().map(String::as_str));
        let out = stack.shoal(&full).await;
        assert_eq!(out.code, 125, "{args:?}: {out:?}");
        let short = kind.trim_start_matches("FAILURE_KIND_");
        assert!(
            out.stderr.contains(&format!("FAILED: {short}")),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(detail), "{args:?}: {}", out.stderr);
        let id = out
            .stderr
            .split_whitespace()
            .nth(1)
            .expect("job id")
            .to_owned();
        let job = stack.job(&id).await;
        assert_eq!(state(&job), "JOB_STATE_FAILED", "{job}");
        assert_eq!(failure_kind(&job), kind, "{job}");
        // Not retried: a deterministic guest failure would fail again.
        assert_eq!(job["attempts"], 1, "{job}");
    }
}

/// `--entry-point` runs the function it names: one that returns completes with exit code
/// 0, one that calls `proc_exit(7)` exits 7.
#[tokio::test(flavor = "multi_thread")]
async fn the_entry_point_named_is_the_one_run() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "noentry");
    let out = stack
        .shoal(&["wasm", "run", &program, "--entry-point", "main"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = stack
        .shoal(&["wasm", "run", &program, "--entry-point", "seven"])
        .await;
    assert_eq!(out.code, 7, "{out:?}");
}

/// A failed `wasm run`'s job, by the id its first stderr line names: it must have been
/// tried once only (the default policy retries nothing a guest does).
async fn assert_tried_once(stack: &Devstack, out: &Output) {
    let id = out.submitted_job();
    let job = stack.job(&id).await;
    assert_eq!(job["attempts"], 1, "{job}");
}

/// A guest that grows its memory past the limit fails with MEMORY_LIMIT.
#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_is_enforced() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "membomb");
    let out = stack
        .shoal(&["wasm", "run", &program, "--memory", "8MiB"])
        .await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("FAILED: MEMORY_LIMIT"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("8388608"),
        "the limit is named: {}",
        out.stderr
    );
    assert_tried_once(&stack, &out).await;
}

/// A spinning guest is stopped at its run timeout and the job is TIMED_OUT.
#[tokio::test(flavor = "multi_thread")]
async fn run_timeout_stops_a_spinning_guest() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "spin");
    let out = stack
        .shoal(&["wasm", "run", &program, "--timeout", "1s"])
        .await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("TIMED_OUT: TIMEOUT"), "{}", out.stderr);
    assert_tried_once(&stack, &out).await;
}

/// Cancelling a job whose guest spins forever stops the guest: the execution ends
/// CANCELLED as reported by the executor, and the job is CANCELLED.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_an_infinite_loop() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "spin");
    let id = stack.submit(&[&program]).await;
    stack
        .wait_job(&id, "RUNNING", |j| state(j) == "JOB_STATE_RUNNING")
        .await;
    let out = stack
        .shoal(&["job", "stop", &id, "--reason", "test"])
        .await
        .success();
    assert!(out.stdout.contains("CANCELLED"), "{}", out.stdout);
    // The executor's confirmation lands after the job's terminal event, which ends the
    // job's watch stream; the API has no event for it, so this one wait asks.
    let deadline = tokio::time::Instant::now() + crate::common::TIMEOUT;
    loop {
        let executions = stack
            .shoal(&["job", "executions", &id, "--output", "json"])
            .await
            .success()
            .json();
        if executions[0]["state"] == "EXECUTION_STATE_CANCELLED" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "execution never cancelled: {executions}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let job = stack.job(&id).await;
    assert_eq!(state(&job), "JOB_STATE_CANCELLED");
    assert_eq!(failure_kind(&job), "FAILURE_KIND_CANCELLED");
    // A terminal job cannot be cancelled again.
    let again = stack.shoal(&["job", "stop", &id]).await;
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains("already CANCELLED"),
        "{}",
        again.stderr
    );
}

/// `job logs -f` prints the program's output while the program is still running.
#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_streams_live() {
    let stack = Devstack::start(&[]).await;
    let id = stack
        .submit(&[&path("tests/fixtures/ticker.wasm"), "600"])
        .await;
    let mut follower = tokio::process::Command::new(crate::common::bin("shoal"))
        .args(["job", "logs", "-f", &id])
        .env("SHOAL_ORCHESTRATOR", &stack.address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn follower");
    let mut stdout = BufReader::new(follower.stdout.take().expect("stdout"));
    crate::common::wait_for_line(&mut stdout, "tick 0").await;
    crate::common::wait_for_line(&mut stdout, "tick 1").await;
    // The program is still running: the lines came live, not from the stored result.
    assert_eq!(state(&stack.job(&id).await), "JOB_STATE_RUNNING");
    stack.shoal(&["job", "stop", &id]).await.success();
    let status = tokio::time::timeout(crate::common::TIMEOUT, follower.wait())
        .await
        .expect("the follower ends with the job")
        .expect("wait");
    assert!(status.success());
}

/// With two executors of one slot each, two jobs that run until stopped both run at once,
/// so one on each executor.
#[tokio::test(flavor = "multi_thread")]
async fn two_executors_both_receive_work() {
    let stack = Devstack::start(&["--slots", "1"]).await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let jobs = [
        stack.submit(&[&ticker, "600"]).await,
        stack.submit(&[&ticker, "600"]).await,
    ];
    let mut executors = Vec::new();
    for id in &jobs {
        let job = stack
            .wait_job(id, "running", |j| state(j) == "JOB_STATE_RUNNING")
            .await;
        let running = crate::common::executions_of(&stack.address, id).await;
        assert_eq!(running.len(), 1, "{job}");
        executors.push(running[0].0.clone());
    }
    executors.sort();
    assert_eq!(executors, ["devstack-0", "devstack-1"]);
    let nodes = stack
        .shoal(&["node", "list", "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(2));
    for id in &jobs {
        stack.shoal(&["job", "stop", id]).await.success();
    }
}

/// `wasm run -f` prints the program's output as it runs, not once it has ended, and ends
/// when the job does.
#[tokio::test(flavor = "multi_thread")]
async fn wasm_run_follow_streams_live() {
    let stack = Devstack::start(&[]).await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let mut run = crate::common::start_waiting_run(&stack.address, &["-f", &ticker, "600"]).await;
    let mut stdout = BufReader::new(run.child.stdout.take().expect("stdout"));
    crate::common::wait_for_line(&mut stdout, "tick 0").await;
    crate::common::wait_for_line(&mut stdout, "tick 1").await;
    assert_eq!(state(&stack.job(&run.id).await), "JOB_STATE_RUNNING");
    stack.shoal(&["job", "stop", &run.id]).await.success();
    let status = tokio::time::timeout(crate::common::TIMEOUT, run.child.wait())
        .await
        .expect("the run ends with the job")
        .expect("wait");
    assert!(!status.success(), "a cancelled job is not a success");
}

/// A job whose constraint no executor satisfies says which constraint, and times out in
/// the queue with that reason.
#[tokio::test(flavor = "multi_thread")]
async fn unsatisfiable_constraint_is_explained() {
    let stack = Devstack::start(&["--executor-label", "region=eu"]).await;
    let hello = path("examples/hello/hello.wasm");
    let id = stack.submit(&[&hello, "-s", "region=mars"]).await;
    let job = stack
        .wait_job(&id, "an explanation", |j| {
            j["statusMessage"]
                .as_str()
                .unwrap_or_default()
                .contains("region=mars")
        })
        .await;
    assert_eq!(state(&job), "JOB_STATE_QUEUED");
    assert!(
        job["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("2 of them"),
        "{job}"
    );
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &hello,
            "-s",
            "region=mars",
            "--queue-timeout",
            "1s",
        ])
        .await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("TIMED_OUT: QUEUE_TIMEOUT"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("region=mars"), "{}", out.stderr);
    // A satisfiable constraint runs.
    stack
        .shoal(&["wasm", "run", &hello, "-s", "region in (eu,us)"])
        .await
        .success();
}

/// Malformed specs are refused before anything is stored, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_are_rejected_with_the_field() {
    let stack = Devstack::start(&[]).await;
    let hello = path("examples/hello/hello.wasm");
    let input = stack.scratch("in.txt");
    std::fs::write(&input, b"x").expect("write");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                hello.clone(),
                "-i".into(),
                format!("{}:/a/../b", input.display()),
            ],
            "inputs[0].target",
        ),
        (
            vec![hello.clone(), "-o".into(), "out:relative".into()],
            "outputs[0].path",
        ),
        (
            vec![
                hello.clone(),
                "-o".into(),
                "a:/out".into(),
                "-o".into(),
                "b:/out/x".into(),
            ],
            "outputs[1].path",
        ),
        (
            vec![hello.clone(), "-e".into(), "SHOAL_JOB_ID=x".into()],
            "env[SHOAL_JOB_ID]",
        ),
        (
            vec![hello.clone(), "-s".into(), "region in mars".into()],
            "constraints[0]",
        ),
        (
            vec![hello.clone(), "--memory".into(), "lots".into()],
            "resources.memory",
        ),
        (
            vec![hello.clone(), "-e".into(), "BAD NAME=x".into()],
            "env[BAD NAME]",
        ),
        (
            vec![
                hello.clone(),
                "-i".into(),
                format!("{}:/in/x", input.display()),
                "-i".into(),
                format!("{}:/in/x", input.display()),
            ],
            "inputs[1].target",
        ),
        (
            std::iter::once(hello.clone())
                .chain((0..5000).map(|i| i.to_string()))
                .collect(),
            "invalid args",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["wasm", "run"];
        full.extend(args.iter().map(String::as_str));
        let out = stack.shoal(&full).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "one clear line: {}",
            out.stderr
        );
    }
    let jobs = stack
        .shoal(&["job", "list", "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(
        jobs.as_array().map(Vec::len),
        Some(0),
        "nothing was accepted: {jobs}"
    );
    // Unknown jobs and CIDs are NOT_FOUND, malformed ids INVALID_ARGUMENT.
    let out = stack
        .shoal(&["job", "describe", "01a20ad1-1f88-72bd-a17f-66c3116c48b7"])
        .await;
    assert!(out.stderr.contains("NotFound"), "{}", out.stderr);
    let out = stack.shoal(&["job", "describe", "nonsense"]).await;
    assert!(out.stderr.contains("InvalidArgument"), "{}", out.stderr);
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
        ])
        .await;
    assert!(out.stderr.contains("not in the store"), "{}", out.stderr);
}

/// Data put and get round-trip a directory, and `--dry-run` prints the spec unsubmitted.
#[tokio::test(flavor = "multi_thread")]
async fn data_round_trip_and_dry_run() {
    let stack = Devstack::start(&[]).await;
    let dir = stack.scratch("tree");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/x.txt"), b"hello world\n").expect("write");
    let cid = stack
        .shoal(&["data", "put", "-q", &dir.to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let file_cid = stack
        .shoal(&[
            "data",
            "put",
            "-q",
            &dir.join("sub/x.txt").to_string_lossy(),
        ])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(
        file_cid,
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    );
    let back = stack.scratch("back");
    stack
        .shoal(&["data", "get", &cid, &back.to_string_lossy()])
        .await
        .success();
    assert_eq!(
        std::fs::read(back.join("sub/x.txt")).expect("read"),
        b"hello world\n"
    );
    // A CID already in the store is a valid input.
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &path("tests/fixtures/copytree.wasm"),
            "-i",
            &format!("{cid}:/inputs"),
        ])
        .await
        .success();
    assert!(out.stdout.contains("copy done"));
    let dry = stack
        .shoal(&[
            "wasm",
            "run",
            "--dry-run",
            "main.wasm",
            "-e",
            "A=1",
            "-i",
            "data:/inputs/data",
            "x",
        ])
        .await
        .success();
    assert!(dry.stdout.contains("program: main.wasm"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("target: /inputs/data"),
        "{}",
        dry.stdout
    );
}

/// Output past the capture cap is dropped, the stored stdout stops at the cap and the
/// result records the truncation and the full byte count.
#[tokio::test(flavor = "multi_thread")]
async fn stdout_is_capped_and_truncation_recorded() {
    let stack = Devstack::start(&["--log-cap", "1KiB"]).await;
    let program = wat(stack.dir.path(), "flood");
    let id = stack.submit(&[&program]).await;
    let logs = stack.shoal(&["job", "logs", "-f", &id]).await.success();
    assert_eq!(logs.stdout.len(), 1024, "live logs stop at the cap");
    let warning = "Warning: the program wrote 102400 bytes to stdout; only the first part was kept";
    assert!(logs.stderr.contains(warning), "{}", logs.stderr);
    let stored = stack.shoal(&["job", "logs", &id]).await.success();
    assert_eq!(stored.stdout.len(), 1024);
    assert!(stored.stderr.contains(warning), "{}", stored.stderr);
    assert!(!stored.stderr.contains("to stderr"), "{}", stored.stderr);
    let job = stack.job(&id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let result = &job["result"];
    assert_eq!(result["stdoutBytes"], "102400", "{job}");
    assert_eq!(result["stdoutTruncated"], true, "{job}");
    assert_eq!(result["stderrTruncated"], serde_json::Value::Null, "{job}");
    let stdout = stack.scratch("stdout");
    stack
        .shoal(&[
            "job",
            "get",
            &id,
            "--path",
            "stdout",
            &stdout.to_string_lossy(),
        ])
        .await
        .success();
    assert_eq!(std::fs::read(stdout).expect("stdout").len(), 1024);
    // Listings come as YAML too.
    let yaml = stack
        .shoal(&["job", "list", "--output", "yaml"])
        .await
        .success();
    assert!(
        yaml.stdout.contains(&format!("id: {id}")),
        "{}",
        yaml.stdout
    );
}

/// Output past what the executor keeps in memory (64 KiB) spills to a file, and the
/// results hold all of it: stdout (100 KiB, uploaded as a file) and stderr (kept in memory)
/// alike.
#[tokio::test(flavor = "multi_thread")]
async fn large_output_spills_and_is_published_whole() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "flood");
    let id = stack.submit(&[&program]).await;
    let job = crate::common::wait_terminal(&stack.address, &id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    assert_eq!(
        std::fs::read(results.join("stdout")).expect("stdout"),
        vec![b'x'; 100 * 1024]
    );
    assert_eq!(
        std::fs::read_to_string(results.join("stderr")).expect("stderr"),
        "done\n"
    );
    assert_eq!(
        std::fs::read_to_string(results.join("exitCode")).expect("exitCode"),
        "0"
    );
}

/// The guest has no sockets: of all its descriptors, none is a socket, and it has exactly
/// stdin, stdout, stderr, its one output directory and its /tmp.
#[tokio::test(flavor = "multi_thread")]
async fn guest_has_no_sockets() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "netprobe");
    let out = stack.shoal(&["wasm", "run", &program]).await;
    assert_eq!(out.code, 105, "5 descriptors, none a socket: {out:?}");
}

/// A guest cannot reach host files: not by climbing out with "..", not by an absolute
/// path, not through a symlink it plants; and the planted link is not published.
#[tokio::test(flavor = "multi_thread")]
async fn guest_cannot_escape_its_mounts() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "escape");
    let id = stack.submit(&[&program]).await;
    let job = stack
        .wait_job(&id, "a terminal state", |j| {
            state(j).ends_with("COMPLETED") || state(j).ends_with("FAILED")
        })
        .await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    // proto3 JSON leaves out a zero exit code, so the result must be there and hold none.
    let result = job["result"].as_object().expect("a result");
    assert_eq!(
        result.get("exitCode").map_or(Some(0), |code| code.as_i64()),
        Some(0),
        "an escape worked: {job}"
    );
    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    let outputs: Vec<_> = std::fs::read_dir(results.join("outputs"))
        .expect("outputs")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(outputs.is_empty(), "the symlink was published: {outputs:?}");
}

/// Inputs are mounted read-only: a guest trying to write, truncate, append to, rename,
/// delete or link its input, or to create anything beside it, is refused every time, and
/// the input's bytes are the same afterwards, in the guest, in the executor's cache (a
/// second run on the same executor reads them again) and in the store.
#[tokio::test(flavor = "multi_thread")]
async fn inputs_are_read_only() {
    let stack = Devstack::start(&["--executors", "1"]).await;
    let input = stack.scratch("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("data.txt"), b"original bytes").expect("write");
    let put = stack
        .shoal(&["data", "put", "-q", &input.to_string_lossy()])
        .await
        .success();
    let cid = put.stdout.trim().to_owned();
    let vandal = path("tests/fixtures/vandal.wasm");
    let mount = format!("{cid}:/inputs");
    for run in 1..=2 {
        let out = stack.shoal(&["wasm", "run", &vandal, "-i", &mount]).await;
        assert_eq!(out.code, 0, "run {run}: the input was changed: {out:?}");
        let refused = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("refused "))
            .count();
        assert_eq!(
            refused, 14,
            "run {run}: every attempt was made: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("data: original bytes\n"),
            "run {run}: {}",
            out.stdout
        );
    }
    let back = stack.scratch("back");
    stack
        .shoal(&["data", "get", &cid, &back.to_string_lossy()])
        .await
        .success();
    assert_eq!(
        std::fs::read(back.join("data.txt")).expect("stored input"),
        b"original bytes"
    );
}

/// Thousands of output files are published and come back whole.
#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_output_files_are_published() {
    let stack = Devstack::start(&[]).await;
    let program = wat(stack.dir.path(), "manyfiles");
    let results = stack.scratch("results");
    stack
        .shoal(&[
            "wasm",
            "run",
            &program,
            "--download",
            &results.to_string_lossy(),
        ])
        .await
        .success();
    let count = std::fs::read_dir(results.join("outputs"))
        .expect("outputs")
        .count();
    assert_eq!(count, 3000);
    assert!(results.join("outputs/f2999").is_file());
}

/// A guest filling the disk is stopped while it runs, fails as OUTPUT_LIMIT, and the
/// executor goes on serving other jobs.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_quota_stops_a_disk_filler() {
    let stack = Devstack::start(&["--executors", "1", "--max-output", "8MiB"]).await;
    let program = wat(stack.dir.path(), "diskfill");
    let out = stack.shoal(&["wasm", "run", &program]).await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("FAILED: OUTPUT_LIMIT"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("more than the limit of 8.0 MiB"),
        "{}",
        out.stderr
    );
    assert_tried_once(&stack, &out).await;
    let hello = path("examples/hello/hello.wasm");
    let out = stack
        .shoal(&["wasm", "run", &hello, "after"])
        .await
        .success();
    assert!(out.stdout.contains("arg[1]=after"), "{}", out.stdout);
}

/// Naming an extra output keeps the default `/outputs` mounted (a guest written for the
/// default keeps working), unless `--no-default-output` says otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn an_extra_output_keeps_the_default_one() {
    let stack = Devstack::start(&[]).await;
    let input = stack.scratch("input");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::write(input.join("a.txt"), b"alpha\n").expect("write");
    let copytree = path("tests/fixtures/copytree.wasm");
    let mount = format!("{}:/inputs", input.display());
    let results = stack.scratch("results");
    let download = results.to_string_lossy().into_owned();
    let with_extra = [
        "wasm",
        "run",
        &copytree,
        "-i",
        &mount,
        "-o",
        "extra:/extra",
        "--download",
        &download,
    ];
    stack.shoal(&with_extra).await.success();
    assert_eq!(
        std::fs::read(results.join("outputs/copy/a.txt")).expect("copied into /outputs"),
        b"alpha\n"
    );
    assert!(
        results.join("extra").is_dir(),
        "the named output is published too"
    );

    // What the guest writes under a named output comes back under that output's name.
    let named = stack.scratch("named");
    let into_extra = [
        "wasm",
        "run",
        &copytree,
        "/extra",
        "-i",
        &mount,
        "-o",
        "extra:/extra",
        "--download",
        &named.to_string_lossy(),
    ];
    stack.shoal(&into_extra).await.success();
    assert_eq!(
        std::fs::read(named.join("extra/copy/a.txt")).expect("copied into /extra"),
        b"alpha\n"
    );
    let default_output: Vec<_> = std::fs::read_dir(named.join("outputs"))
        .expect("the default output is there")
        .collect();
    assert!(default_output.is_empty(), "{default_output:?}");

    let only_extra = [
        "wasm",
        "run",
        &copytree,
        "-i",
        &mount,
        "-o",
        "extra:/extra",
        "--no-default-output",
    ];
    let out = stack.shoal(&only_extra).await;
    // copytree exits 1 and says so when it cannot write /outputs/copy.
    assert_eq!(out.code, 1, "/outputs was mounted anyway: {out:?}");
    assert!(out.stdout.contains("copy failed"), "{out:?}");
}

/// Every execution gets a writable, empty `/tmp` of its own, which is never published: the
/// same program creating `/tmp/probe` exclusively succeeds run after run on one executor,
/// and the results hold no trace of it.
#[tokio::test(flavor = "multi_thread")]
async fn every_execution_gets_a_fresh_tmp_that_is_not_published() {
    let stack = Devstack::start(&["--executors", "1"]).await;
    let program = wat(stack.dir.path(), "tmpfresh");
    for run in 0..3 {
        let results = stack.scratch(&format!("results-{run}"));
        let out = stack
            .shoal(&[
                "wasm",
                "run",
                &program,
                "--download",
                &results.to_string_lossy(),
            ])
            .await;
        assert_eq!(out.code, 0, "run {run}: {out:?}");
        let mut names: Vec<String> = std::fs::read_dir(&results)
            .expect("results")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["exitCode", "outputs", "stderr", "stdout"],
            "run {run}"
        );
        let outputs = std::fs::read_dir(results.join("outputs"))
            .expect("outputs")
            .count();
        assert_eq!(outputs, 0, "run {run}: /tmp leaked into the outputs");
    }
}

/// What a guest writes to `/tmp` counts against the output quota like its outputs.
#[tokio::test(flavor = "multi_thread")]
async fn the_output_quota_counts_tmp() {
    let stack = Devstack::start(&["--executors", "1", "--max-output", "8MiB"]).await;
    let program = wat(stack.dir.path(), "tmpfill");
    let out = stack.shoal(&["wasm", "run", &program]).await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("FAILED: OUTPUT_LIMIT"),
        "{}",
        out.stderr
    );
}

/// A guest nesting 3,000 directories by descriptor (deeper than any path may be) neither
/// crashes the executor with a stack overflow nor fails with a path echoed back: the run is
/// stopped as OUTPUT_LIMIT with a short reason, the tree is deleted, and the same executor
/// runs the next job.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_nesting_thousands_of_directories_fails_alone() {
    let stack = Devstack::start(&["--executors", "1"]).await;
    let program = wat(stack.dir.path(), "deepdirs");
    let out = stack.shoal(&["wasm", "run", &program]).await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("FAILED: OUTPUT_LIMIT"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("more than 128 directories deep"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("d/d/d/d/d"), "{}", out.stderr);
    let hello = path("examples/hello/hello.wasm");
    let out = stack
        .shoal(&["wasm", "run", &hello, "after"])
        .await
        .success();
    assert!(out.stdout.contains("arg[1]=after"), "{}", out.stdout);
    let nodes = stack.shoal(&["node", "list"]).await.success();
    assert!(!nodes.stdout.contains("DISCONNECTED"), "{}", nodes.stdout);
}
