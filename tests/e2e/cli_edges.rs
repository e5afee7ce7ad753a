//! Where a newcomer's first touch used to go wrong: a second daemon on a directory in use,
//! an orchestrator address that never answers, and a closed stdout (`| head`).

use std::process::Stdio;

use tokio::io::BufReader;
use tokio::process::Command;

use crate::common::{
    Devstack, TIMEOUT, bin, path, shoal, start_orchestrator, state, wait_terminal,
};

/// Runs `command` to its end (bounded by the harness timeout): a refused daemon must exit,
/// not wait on the directory. Returns its exit code and stderr.
async fn finish(command: Command) -> (i32, String) {
    let out = crate::common::run_to_end(command, "a second daemon").await;
    (out.code, out.stderr)
}

/// A second devstack on a data directory in use is refused, naming the running one's pid,
/// and the running one is untouched: inputs its executors cached still stage. The same for a
/// second orchestrator on a data directory, a second executor on a work directory, and a
/// devstack one of whose executors' work directories another executor holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_a_directory_in_use_is_refused_and_the_first_is_untouched() {
    let stack = Devstack::start(&[]).await;
    let sample = path("examples/wordcount/sample");
    let cid = stack.shoal(&["data", "put", "-q", &sample]).await.success();
    let input = format!("{}:/inputs", cid.stdout.trim());
    let wordcount = path("examples/wordcount/wordcount.wasm");
    let run = || async {
        let id = stack.submit(&[&wordcount, "-i", &input]).await;
        let job = wait_terminal(&stack.address, &id).await;
        assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    };
    // Twice per executor, so both have the input in their caches.
    for _ in 0..4 {
        run().await;
    }

    let mut second = Command::new(bin("shoal"));
    second
        .args(["devstack", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(stack.data_dir());
    let (code, stderr) = finish(second).await;
    assert_ne!(code, 0, "a second devstack started: {stderr}");
    assert!(
        stderr.contains(&format!("is in use by process {}", stack.pid())),
        "the refusal names the running devstack: {stderr}"
    );
    for _ in 0..4 {
        run().await;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let orchestrator = start_orchestrator(&data, 0).await;
    let mut second = Command::new(bin("shoal-orchestrator"));
    second
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data);
    let (code, stderr) = finish(second).await;
    assert_ne!(code, 0, "a second orchestrator started: {stderr}");
    let pid = orchestrator.child.id().expect("running");
    assert!(
        stderr.contains(&format!("is in use by process {pid}")),
        "{stderr}"
    );

    // Where a devstack on `stack` keeps its second executor (used below).
    let work = dir.path().join("stack").join("executor-1");
    let mut first = Command::new(bin("shoal-executor"));
    first
        .args([
            "--orchestrator",
            &orchestrator.address,
            "--executor-id",
            "one",
        ])
        .args(["--log-format", "json", "--work-dir"])
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut first = first.spawn().expect("spawn executor");
    // It says it is starting once it holds the lock.
    let mut stderr = BufReader::new(first.stderr.take().expect("stderr"));
    crate::common::wait_for_line(&mut stderr, "executor starting").await;
    crate::common::drain(stderr);
    let mut second = Command::new(bin("shoal-executor"));
    second
        .args([
            "--orchestrator",
            &orchestrator.address,
            "--executor-id",
            "two",
        ])
        .arg("--work-dir")
        .arg(&work);
    let (code, stderr) = finish(second).await;
    assert_ne!(code, 0, "a second executor started: {stderr}");
    let pid = first.id().expect("running");
    assert!(
        stderr.contains(&format!("is in use by process {pid}")),
        "{stderr}"
    );
    assert!(
        first.try_wait().expect("status").is_none(),
        "the first executor kept running"
    );

    // A devstack whose executor's work directory another daemon holds stops while starting
    // and says why, instead of waiting for an executor that will never connect.
    let held = dir.path().join("stack");
    let mut stack = Command::new(bin("shoal"));
    stack
        .args(["devstack", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&held);
    let (code, stderr) = finish(stack).await;
    assert_ne!(code, 0, "a devstack started without its executor: {stderr}");
    assert!(
        stderr.contains(&format!("is in use by process {pid}")),
        "{stderr}"
    );
}

/// An address that accepts TCP and never speaks (a listener nobody accepts on: the kernel
/// completes the handshake) fails within the call timeout, naming the address. The HTTP/2
/// client does not wait for the server's first frame, so it is the call's deadline, not the
/// connect timeout, that ends it.
#[tokio::test(flavor = "multi_thread")]
async fn an_address_that_never_answers_fails_within_the_call_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let started = std::time::Instant::now();
    let args = [
        "--connect-timeout",
        "1s",
        "--call-timeout",
        "2s",
        "job",
        "list",
    ];
    let out = shoal(&address, &args).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "the orchestrator at {address} did not answer within 2s"
        )),
        "{}",
        out.stderr
    );
    // Reported, not asserted on: the bound is the flag, the harness only caps the wait.
    eprintln!("gave up after {:?}", started.elapsed());
    drop(listener);
}

/// A server that takes the call and never answers (a hung orchestrator) fails a call that
/// answers at once within `--call-timeout`, and an upload or a log stream that moves
/// nothing for as long, naming the address; a submission that ran out of its deadline is
/// not repeated (which would double the wait), whether its program is a local file (hashed
/// and submitted by CID, no upload first) or a CID.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_nobody_answers_fails_within_the_call_timeout() {
    let mut server = Command::new("python3")
        .arg(path("tests/python/silent_server.py"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (scripts/test.sh installs grpcio)");
    let mut stdout = BufReader::new(server.stdout.take().expect("stdout"));
    let port = crate::common::wait_for_line(&mut stdout, "").await;
    let address = format!("http://127.0.0.1:{}", port.trim());
    let hello = path("examples/hello/hello.wasm");
    let some_id = "0190aaaa-aaaa-7aaa-aaaa-aaaaaaaaaaaa";
    // A program by CID is submitted with no call before it.
    let by_cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for args in [
        &["--call-timeout", "1s", "job", "list"][..],
        &["--call-timeout", "1s", "node", "list"][..],
        &["--call-timeout", "1s", "wasm", "run", &hello][..],
        // Streams have no deadline, but one that moves nothing for the timeout ends.
        &["--call-timeout", "1s", "data", "put", &hello][..],
        &["--call-timeout", "1s", "job", "logs", some_id][..],
        &["--call-timeout", "1s", "wasm", "run", by_cid][..],
    ] {
        let out = shoal(&address, args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "the orchestrator at {address} did not answer within 1s"
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    // The calls the server took, up to a last one that marks the end: the submission that
    // ran out of its deadline was not tried again.
    shoal(
        &address,
        &["--call-timeout", "1s", "node", "describe", "end"],
    )
    .await;
    let mut calls = Vec::new();
    loop {
        let line = crate::common::wait_for_line(&mut stdout, "").await;
        if line.contains("NodeService/GetNode") {
            break;
        }
        calls.push(line.trim().to_owned());
    }
    let submits = calls.iter().filter(|c| c.ends_with("/SubmitJob")).count();
    assert_eq!(submits, 2, "one per `wasm run`: {calls:?}");
    for stream in ["StorageService/Upload", "JobService/GetLogs"] {
        assert!(calls.iter().any(|c| c.ends_with(stream)), "{calls:?}");
    }
}

/// Runs the CLI against `stack` with its stdout closed before it prints anything; returns
/// the exit code and stderr.
async fn run_with_stdout_closed(stack: &Devstack, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("shoal"))
        .args(args)
        .env("SHOAL_ORCHESTRATOR", &stack.address)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shoal");
    drop(child.stdout.take());
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("it ends")
        .expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// A closed stdout ends a command quietly with exit 0, as `ls | head` does: no panic, no
/// error, whether the command prints a table, JSON or a job's logs; a `wasm run` asked to
/// download its results still does, and exits with the job's code. A closed stderr loses
/// the messages, not the command.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_a_command_quietly() {
    let stack = Devstack::start(&[]).await;
    let hello = path("examples/hello/hello.wasm");
    let id = stack.submit(&[&hello]).await;
    wait_terminal(&stack.address, &id).await;
    for args in [
        &["job", "list"][..],
        &["job", "list", "--output", "json"][..],
        &["job", "describe", &id][..],
        &["job", "logs", &id][..],
        &["node", "list"][..],
    ] {
        let (code, stderr) = run_with_stdout_closed(&stack, args).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }

    for follow in [false, true] {
        let dir = stack.scratch(&format!("results-{follow}"));
        let dir_arg = dir.to_string_lossy();
        let mut args = vec!["wasm", "run", "--download", &dir_arg];
        if follow {
            args.push("-f");
        }
        args.push(&hello);
        let (code, stderr) = run_with_stdout_closed(&stack, &args).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.contains("written to"), "{args:?}: {stderr}");
        let stdout = std::fs::read_to_string(dir.join("stdout")).expect("stdout downloaded");
        assert!(stdout.contains("Hello from hello.wasm!"), "{stdout}");
    }

    // `2>&-`: every write to stderr fails (EBADF).
    let closed_stderr = Command::new("sh")
        .args(["-c", r#"exec "$0" "$@" 2>&-"#])
        .arg(bin("shoal"))
        .args(["wasm", "run", &hello])
        .env("SHOAL_ORCHESTRATOR", &stack.address)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TIMEOUT, closed_stderr)
        .await
        .expect("it ends")
        .expect("output");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Hello from hello.wasm!"), "{stdout}");
}

/// `--download DIR` fetches what a job that did not complete left (its stdout, its exit
/// state), and says so; the exit code still says it did not complete.
#[tokio::test(flavor = "multi_thread")]
async fn download_fetches_the_results_of_a_job_that_timed_out() {
    let stack = Devstack::start(&[]).await;
    let dir = stack.scratch("results");
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &path("tests/fixtures/ticker.wasm"),
            "--timeout",
            "2s",
            "--download",
            &dir.to_string_lossy(),
            "--",
            "60",
        ])
        .await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stdout.contains("tick 0"), "{out:?}");
    assert!(
        out.stderr.contains("(TIMED_OUT) written to"),
        "{}",
        out.stderr
    );
    let stdout = std::fs::read_to_string(dir.join("stdout")).expect("stdout downloaded");
    assert!(stdout.starts_with("tick 0\n"), "{stdout}");
}

/// Local-path mistakes are named as what they are, before anything is uploaded or
/// submitted, and exit 2 like any other usage error.
#[tokio::test(flavor = "multi_thread")]
async fn local_path_mistakes_are_usage_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope-dir");
    let missing = missing.to_string_lossy();
    let existing = dir.path().join("in");
    std::fs::create_dir(&existing).expect("mkdir");
    let relative_target = format!("{}:inputs", existing.display());
    let hello = path("examples/hello/hello.wasm");
    let directory = dir.path().to_string_lossy().into_owned();
    // No orchestrator at this address: the mistakes are found before any call.
    let nowhere = "http://127.0.0.1:9";
    for (args, says) in [
        (
            vec!["wasm", "run", &hello, "-i", &missing],
            format!("no such file or directory: {missing}"),
        ),
        (
            vec!["wasm", "run", &hello, "-i", &relative_target],
            "the target must be an absolute path".to_owned(),
        ),
        (
            vec!["wasm", "run", "/no/such/program.wasm"],
            "program: no such file or directory: /no/such/program.wasm".to_owned(),
        ),
        (
            vec!["wasm", "run", &directory],
            format!("the program must be a file: {directory} is a directory"),
        ),
        (
            vec!["wasm", "run", "--no-such-flag", &hello],
            "unexpected argument".to_owned(),
        ),
    ] {
        let out = shoal(nowhere, &args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(&says), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("content id"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// `shoal completion SHELL` prints a script the shell itself accepts: bash registers it for
/// `shoal` and completes the subcommands from it.
#[tokio::test(flavor = "multi_thread")]
async fn completion_scripts_load_in_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = shoal("http://127.0.0.1:9", &["completion", shell])
            .await
            .success();
        assert!(out.stdout.contains("devstack"), "{shell}: {}", out.stdout);
        std::fs::write(dir.path().join(shell), &out.stdout).expect("write");
    }
    let script = dir.path().join("bash");
    let check = format!(
        "source {}; complete -p shoal; COMP_WORDS=(shoal wa); COMP_CWORD=1; _shoal shoal wa shoal; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = tokio::process::Command::new("bash")
        .args(["-c", &check])
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("-F _shoal shoal"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap_or_default().contains("wasm"),
        "{stdout}"
    );
}

/// `--wait=false` submits and prints the id, as `--id-only` does; `-o` adds an output
/// beside the default /outputs unless `--no-default-output`.
#[tokio::test(flavor = "multi_thread")]
async fn wait_false_and_extra_outputs_on_the_command_line() {
    let stack = Devstack::start(&[]).await;
    let hello = path("examples/hello/hello.wasm");
    let out = stack
        .shoal(&["wasm", "run", "--wait=false", &hello])
        .await
        .success();
    let id = out.stdout.trim();
    assert_eq!(id.len(), 36, "a job id: {out:?}");
    let job = wait_terminal(&stack.address, id).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    // Described for people by default: states without enum prefixes, exit code 0 shown.
    let described = stack.shoal(&["job", "describe", id]).await.success().stdout;
    for line in [
        "State:      COMPLETED",
        "Exit code:  0",
        "Executor:   devstack-",
        "Attempts:   1",
    ] {
        assert!(described.contains(line), "no {line:?} in\n{described}");
    }
    assert!(!described.contains("JOB_STATE_"), "{described}");
    // A listing says when there is more past --limit, on stderr.
    let second = stack.submit(&[&hello]).await;
    // A unique prefix names a job wherever an id is taken; a shared one is refused.
    let by_prefix = stack.shoal(&["job", "describe", &id[..30]]).await.success();
    assert!(by_prefix.stdout.contains(id), "{by_prefix:?}");
    stack.shoal(&["job", "logs", &second[..30]]).await.success();
    // A whole id without its hyphens is still a whole id, not a prefix.
    let plain = id.replace('-', "");
    stack.shoal(&["job", "describe", &plain]).await.success();
    let shared = stack.shoal(&["job", "describe", &id[..4]]).await;
    assert_eq!(shared.code, 1, "{shared:?}");
    assert!(shared.stderr.contains("is ambiguous"), "{shared:?}");
    let cut = stack
        .shoal(&["job", "list", "--limit", "1"])
        .await
        .success();
    assert!(cut.stderr.contains("more jobs than the 1 shown"), "{cut:?}");
    let whole = stack
        .shoal(&["job", "list", "--limit", "5"])
        .await
        .success();
    assert!(!whole.stderr.contains("more jobs"), "{whole:?}");

    let spec = |extra: &[&str]| {
        let mut args: Vec<String> = ["wasm", "run", "--dry-run", &hello]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let stack = &stack;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            stack.shoal(&args).await.success().stdout
        }
    };
    let both = spec(&["-o", "extra:/extra"]).await;
    assert!(both.contains("path: /extra"), "{both}");
    assert!(both.contains("path: /outputs"), "{both}");
    let only = spec(&["-o", "extra:/extra", "--no-default-output"]).await;
    assert!(!only.contains("/outputs"), "{only}");
    let renamed = spec(&["--output", "results:/outputs"]).await;
    assert_eq!(renamed.matches("/outputs").count(), 1, "{renamed}");
}

/// Ctrl-C while `wasm run` waits stops the waiting, not the job, and says how to stop the
/// job; the exit code is a shell's for SIGINT.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_on_wasm_run_says_how_to_stop_the_job() {
    let stack = Devstack::start(&[]).await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let crate::common::Waiting {
        child: mut run,
        id,
        mut stderr,
    } = crate::common::start_waiting_run(&stack.address, &[&ticker, "--", "600"]).await;
    crate::common::wait_job_state(&stack.address, &id, "RUNNING", |j| {
        state(j) == "JOB_STATE_RUNNING"
    })
    .await;
    let pid = run.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let said = crate::common::wait_for_line(&mut stderr, "Stop it with").await;
    assert!(said.contains(&format!("shoal job stop {id}")), "{said}");
    let code = tokio::time::timeout(TIMEOUT, run.wait())
        .await
        .expect("it exits")
        .expect("status")
        .code();
    assert_eq!(code, Some(130));
    let job = stack.job(&id).await;
    assert_eq!(state(&job), "JOB_STATE_RUNNING", "the job goes on: {job}");
    stack.shoal(&["job", "stop", &id]).await.success();
}

/// While `wasm run` waits it says what the job is doing: each phase on stderr, and for a
/// job no executor can take, why it waits (the reason `job list` shows).
#[tokio::test(flavor = "multi_thread")]
async fn waiting_shows_the_phases_and_why_a_job_is_queued() {
    let stack = Devstack::start(&[]).await;
    let hello = path("examples/hello/hello.wasm");
    let out = stack.shoal(&["wasm", "run", &hello]).await.success();
    for phase in ["[QUEUED]", "[STAGING]", "[RUNNING]", "[PUBLISHING]"] {
        assert!(out.stderr.contains(phase), "no {phase} in {}", out.stderr);
    }

    for follow in [false, true] {
        let mut command = Command::new(bin("shoal"));
        command.args(["wasm", "run", "-s", "region=mars", &hello]);
        if follow {
            command.arg("-f");
        }
        let mut waiting = command
            .env("SHOAL_ORCHESTRATOR", &stack.address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn shoal");
        let mut stderr = BufReader::new(waiting.stderr.take().expect("stderr"));
        let line = crate::common::wait_for_line(&mut stderr, "satisfies the constraints").await;
        assert!(line.starts_with("[QUEUED]"), "follow {follow}: {line}");
        assert!(line.contains("region=mars"), "follow {follow}: {line}");
    }
}

/// On a terminal the phases are one spinner line with the elapsed time, cleared when the
/// job ends.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_waiting_is_a_spinner() {
    let stack = Devstack::start(&[]).await;
    let out = Command::new("python3")
        .arg(path("tests/python/pty_run.py"))
        .arg(bin("shoal"))
        .args([
            "wasm",
            "run",
            &path("tests/fixtures/ticker.wasm"),
            "--",
            "2",
        ])
        .env("SHOAL_ORCHESTRATOR", &stack.address)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("python3 runs");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{drawn}");
    assert!(drawn.contains("running ("), "no spinner line: {drawn:?}");
    assert!(drawn.contains("tick 1"), "{drawn:?}");
    assert!(
        !drawn.contains("[RUNNING]"),
        "lines instead of a spinner: {drawn:?}"
    );
}

/// A program the store already holds is not sent again: the CLI computes its CID and names
/// it in the submission's `stored_cids`, so a second run costs neither an upload nor a
/// lookup; a program the store lacks is refused by that check and then uploaded, even on an
/// orchestrator with an IPFS gateway configured (which accepts a job naming a CID the store
/// lacks: without the check the job would fail STAGING instead).
#[tokio::test(flavor = "multi_thread")]
async fn a_program_the_store_holds_is_not_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [(
        "RUST_LOG".to_owned(),
        "info,shoal_orchestrator::service::storage=debug".to_owned(),
    )];
    // A gateway nobody answers at: the program can only come from the store.
    let gateway = ["--ipfs-gateway", "http://127.0.0.1:9"];
    let orchestrator =
        crate::common::start_orchestrator_logged(&dir.path().join("data"), 0, &gateway, &env).await;
    let _executor =
        crate::common::start_executor(&orchestrator.address, &dir.path().join("ex"), "ex", &[]);
    let uploads = || {
        orchestrator
            .lines
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains("upload stored"))
            .count()
    };
    // A do-nothing program, and one carrying 2 MiB of data (hashed on the blocking pool).
    let large = "*".repeat(2 << 20);
    for (i, data) in ["", large.as_str()].into_iter().enumerate() {
        let text = format!(
            "(module (memory (export \"memory\") 40) (data (i32.const 0) \"{data}\") (func (export \"_start\")))"
        );
        let program = dir.path().join(format!("program-{i}.wasm"));
        std::fs::write(&program, wat::parse_str(&text).expect("wat")).expect("write");
        let program = program.to_string_lossy().into_owned();
        for run in 0..2 {
            shoal(&orchestrator.address, &["wasm", "run", &program])
                .await
                .success();
            assert_eq!(uploads(), i + 1, "program {i}, after run {run}");
        }
    }
    // A new program with a stored file as its input: only what the store lacks is sent.
    let fresh = dir.path().join("fresh.wasm");
    let text = r#"(module (memory (export "memory") 1) (func (export "_start") nop))"#;
    std::fs::write(&fresh, wat::parse_str(text).expect("wat")).expect("write");
    let stored_input = format!(
        "{}:/inputs/big",
        dir.path().join("program-1.wasm").display()
    );
    shoal(
        &orchestrator.address,
        &["wasm", "run", "-i", &stored_input, &fresh.to_string_lossy()],
    )
    .await
    .success();
    assert_eq!(uploads(), 3, "the stored input was sent again");

    // The check itself, through the API: a CID the store lacks, one that is no CID, too many.
    let mut jobs = shoal::proto::job_service_client::JobServiceClient::new(
        crate::common::connect(&orchestrator.address).await,
    );
    let spec = shoal::proto::JobSpec {
        program: shoal::content::cid::ContentId::of_block(0x55, b"never stored").to_string(),
        ..Default::default()
    };
    let submit = |stored_cids: Vec<String>| {
        let mut jobs = jobs.clone();
        let spec = spec.clone();
        async move {
            jobs.submit_job(shoal::proto::SubmitJobRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
                stored_cids,
            })
            .await
            .expect_err("refused")
        }
    };
    // Every CID the store lacks is listed by index; the message names the first.
    let stored = shoal(
        &orchestrator.address,
        &["data", "put", "-q", &fresh.to_string_lossy()],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    let listed = vec![
        stored.clone(),
        spec.program.clone(),
        stored,
        spec.program.clone(),
    ];
    let missing = submit(listed).await;
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(
        missing.message().contains("stored_cids[1]") && missing.message().contains(&spec.program),
        "{missing:?}"
    );
    let indices = missing.metadata().get(shoal::protocol::MISSING_STORED_CIDS);
    assert_eq!(
        indices.and_then(|v| v.to_str().ok()),
        Some("1,3"),
        "{missing:?}"
    );
    let garbage = submit(vec!["not-a-cid".into()]).await;
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    assert!(garbage.message().contains("stored_cids[0]"), "{garbage:?}");
    let many = submit(vec![spec.program.clone(); 513]).await;
    assert_eq!(many.code(), tonic::Code::InvalidArgument, "{many:?}");
    assert!(many.message().contains("at most 512"), "{many:?}");
    // Without the list, the gateway makes the same job acceptable (it is fetched from there).
    let accepted = jobs
        .submit_job(shoal::proto::SubmitJobRequest {
            spec: Some(spec.clone()),
            ..Default::default()
        })
        .await;
    assert!(accepted.is_ok(), "{accepted:?}");
}

/// `-l` and `--name` are recorded on the job and shown; `job list --state` and `-l` keep
/// only the jobs that match, and both together only those matching both.
#[tokio::test(flavor = "multi_thread")]
async fn names_and_labels_are_kept_and_listings_filter_by_state_and_label() {
    let stack = Devstack::start(&[]).await;
    let hello = path("examples/hello/hello.wasm");
    let ticker = path("tests/fixtures/ticker.wasm");
    let done = stack
        .shoal(&[
            "wasm",
            "run",
            &hello,
            "-l",
            "team=a",
            "-l",
            "tier=gold",
            "--name",
            "first",
        ])
        .await
        .success()
        .submitted_job();
    let running = stack
        .submit(&[&ticker, "600", "-l", "team=b", "--name", "second"])
        .await;
    stack
        .wait_job(&running, "running", |j| state(j) == "JOB_STATE_RUNNING")
        .await;

    let job = stack.job(&done).await;
    assert_eq!(job["spec"]["name"], "first", "{job}");
    assert_eq!(job["spec"]["labels"]["team"], "a", "{job}");
    assert_eq!(job["spec"]["labels"]["tier"], "gold", "{job}");
    let described = stack
        .shoal(&["job", "describe", &done])
        .await
        .success()
        .stdout;
    assert!(described.contains("first"), "{described}");
    assert!(described.contains("team=a"), "{described}");

    let listed = |args: &'static [&'static str]| {
        let stack = &stack;
        async move {
            let mut full = vec!["job", "list", "--output", "json"];
            full.extend_from_slice(args);
            let jobs = stack.shoal(&full).await.success().json();
            let mut ids: Vec<String> = jobs
                .as_array()
                .expect("a list")
                .iter()
                .map(|j| j["id"].as_str().expect("id").to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![done.clone(), running.clone()];
    both.sort();
    assert_eq!(listed(&[]).await, both);
    assert_eq!(listed(&["--state", "running"]).await, vec![running.clone()]);
    assert_eq!(listed(&["--state", "completed"]).await, vec![done.clone()]);
    assert_eq!(
        listed(&["--state", "running", "--state", "completed"]).await,
        both
    );
    assert_eq!(listed(&["-l", "team=a"]).await, vec![done.clone()]);
    assert_eq!(
        listed(&["-l", "team=a", "-l", "tier=gold"]).await,
        vec![done.clone()]
    );
    assert_eq!(
        listed(&["-l", "team=b", "-l", "tier=gold"]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(&["--state", "completed", "-l", "team=b"]).await,
        Vec::<String>::new()
    );
    let table = stack
        .shoal(&["job", "list", "-l", "team=b"])
        .await
        .success()
        .stdout;
    assert!(
        table.contains("second") && !table.contains("first"),
        "{table}"
    );

    let bad = stack.shoal(&["job", "list", "--state", "sleeping"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("sleeping"), "{bad:?}");
    let bad = stack.shoal(&["job", "list", "-l", "team"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("KEY=VALUE"), "{bad:?}");
    stack.shoal(&["job", "stop", &running]).await.success();
}
