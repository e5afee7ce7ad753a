//! Both daemons' Prometheus endpoints (`--metrics-listen`), scraped after real jobs: every
//! metric family the operations docs name is there, with the values the jobs imply.

use crate::common::{path, start_executor_logged, start_orchestrator_with, wait_connected};

/// Scrapes `address`'s `/metrics` and checks the content type.
async fn scrape(address: &str) -> String {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("scrape");
    assert!(response.status().is_success(), "{response:?}");
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.expect("body")
}

/// The value of the series written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn both_daemons_export_their_metrics() {
    let scratch = tempfile::tempdir().expect("tempdir");
    // Both daemons bind ports of their own and say which in their logs.
    let orchestrator = start_orchestrator_with(
        &scratch.path().join("data"),
        0,
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let address = orchestrator.address.clone();
    let orchestrator_metrics = orchestrator.metrics.clone().expect("a metrics address");
    let (_executor, executor_lines) = start_executor_logged(
        &address,
        &scratch.path().join("executor"),
        "metered",
        &["--metrics-listen", "127.0.0.1:0"],
        &[],
    );
    let executor_metrics =
        crate::common::json_log_line(&executor_lines, "metrics listening", |line| {
            line["message"] == "metrics listening"
        })
        .await["address"]
            .as_str()
            .expect("an address")
            .to_owned();
    wait_connected(&orchestrator, "metered").await;

    // Two jobs with the same program and a 1,000-byte input: one compile, one cache hit.
    let input = scratch.path().join("input.txt");
    std::fs::write(&input, "x".repeat(999) + "\n").expect("input");
    let input_arg = format!("{}:/inputs/input.txt", input.display());
    for _ in 0..2 {
        crate::common::shoal(
            &address,
            &[
                "wasm",
                "run",
                &path("examples/wordcount/wordcount.wasm"),
                "-i",
                &input_arg,
            ],
        )
        .await
        .success();
    }

    let text = scrape(&orchestrator_metrics).await;
    assert_eq!(value(&text, "shoal_jobs{state=\"completed\"}"), 2.0);
    assert_eq!(value(&text, "shoal_jobs{state=\"queued\"}"), 0.0);
    assert_eq!(value(&text, "shoal_queue_depth"), 0.0);
    assert_eq!(value(&text, "shoal_executors_connected"), 1.0);
    assert!(value(&text, "shoal_executor_slots_free") >= 1.0);
    assert_eq!(value(&text, "shoal_jobs_submitted_total"), 2.0);
    assert_eq!(
        value(&text, "shoal_jobs_finished_total{state=\"completed\"}"),
        2.0
    );
    assert_eq!(value(&text, "shoal_scheduling_latency_seconds_count"), 2.0);
    assert_eq!(
        value(
            &text,
            "shoal_execution_duration_seconds_count{state=\"completed\"}"
        ),
        2.0
    );
    let stream = "shoal_executor_stream_messages_total";
    assert_eq!(
        value(
            &text,
            &format!("{stream}{{direction=\"sent\",type=\"assign\"}}")
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            &format!("{stream}{{direction=\"received\",type=\"finished\"}}")
        ),
        2.0
    );

    let text = scrape(&executor_metrics).await;
    assert_eq!(
        value(
            &text,
            "shoal_executor_executions_total{state=\"completed\"}"
        ),
        2.0
    );
    assert_eq!(value(&text, "shoal_executor_executions_running"), 0.0);
    assert_eq!(
        value(
            &text,
            "shoal_executor_execution_duration_seconds_count{state=\"completed\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&text, "shoal_executor_module_cache_total{result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "shoal_executor_module_cache_total{result=\"hit\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "shoal_executor_staged_bytes_total{source=\"cid\"}"),
        2000.0
    );
    assert!(
        value(
            &text,
            "shoal_executor_staged_bytes_total{source=\"program\"}"
        ) > 1000.0
    );
    assert_eq!(value(&text, "shoal_executor_connected"), 1.0);
    assert_eq!(
        value(
            &text,
            "shoal_executor_stream_messages_total{direction=\"sent\",type=\"finished\"}"
        ),
        2.0
    );
}

/// A metrics address that cannot be bound stops either daemon at start with the flag named.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_metrics_address_is_refused_at_start() {
    let scratch = tempfile::tempdir().expect("tempdir");
    for (binary, args) in [
        (
            "shoal-orchestrator",
            vec![
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--data-dir".to_owned(),
                scratch.path().join("data").display().to_string(),
            ],
        ),
        (
            "shoal-executor",
            vec![
                "--work-dir".to_owned(),
                scratch.path().join("work").display().to_string(),
            ],
        ),
    ] {
        let output = tokio::time::timeout(
            crate::common::TIMEOUT,
            tokio::process::Command::new(crate::common::bin(binary))
                .args(&args)
                .args(["--metrics-listen", "not an address"])
                .output(),
        )
        .await
        .expect("exits")
        .expect("runs");
        assert!(!output.status.success(), "{binary} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--metrics-listen not an address"),
            "{binary}: {stderr}"
        );
    }
}

/// Executors sharing a module cache (`--module-cache`) compile a module once between them:
/// the second runs it from the first one's compiled copy, as its own metrics show.
#[tokio::test(flavor = "multi_thread")]
async fn executors_sharing_a_module_cache_compile_once() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let orchestrator = start_orchestrator_with(&scratch.path().join("data"), 0, &[]).await;
    let address = orchestrator.address.clone();
    let shared = scratch.path().join("modules");
    let shared = shared.to_string_lossy();
    let mut metrics = Vec::new();
    let mut executors = Vec::new();
    for who in ["one", "two"] {
        let label = format!("who={who}");
        let (executor, lines) = start_executor_logged(
            &address,
            &scratch.path().join(who),
            who,
            &[
                "--metrics-listen",
                "127.0.0.1:0",
                "--label",
                &label,
                "--module-cache",
                &shared,
            ],
            &[],
        );
        let endpoint = crate::common::json_log_line(&lines, "metrics listening", |line| {
            line["message"] == "metrics listening"
        })
        .await["address"]
            .as_str()
            .expect("an address")
            .to_owned();
        metrics.push(endpoint);
        executors.push(executor);
    }
    let hello = path("examples/hello/hello.wasm");
    for who in ["one", "two"] {
        let constraint = format!("who={who}");
        crate::common::shoal(&address, &["wasm", "run", "-s", &constraint, &hello])
            .await
            .success();
    }
    let series = |text: &str, result: &str| {
        let name = format!("shoal_executor_module_cache_total{{result=\"{result}\"}}");
        text.lines()
            .find_map(|line| line.strip_prefix(&name)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let one = scrape(&metrics[0]).await;
    assert_eq!(
        series(&one, "miss"),
        1.0,
        "the first executor compiled it:\n{one}"
    );
    let two = scrape(&metrics[1]).await;
    assert_eq!(
        series(&two, "miss"),
        0.0,
        "the second compiled it again:\n{two}"
    );
    assert_eq!(series(&two, "hit"), 1.0, "{two}");
}
