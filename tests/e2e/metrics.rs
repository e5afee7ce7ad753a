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
    find_value(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn find_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
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

/// A metrics address that cannot be bound (one another process holds, or no address at
/// all) stops either daemon at start with the flag and the reason named.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_metrics_address_is_refused_at_start() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address").to_string();
    let cases = [
        (taken.as_str(), "in use"),
        ("not an address", "not an address"),
    ];
    for ((binary, args), (address, reason)) in [
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
    ]
    .iter()
    .flat_map(|daemon| cases.iter().map(move |case| (daemon, case)))
    {
        let output = tokio::time::timeout(
            crate::common::TIMEOUT,
            tokio::process::Command::new(crate::common::bin(binary))
                .args(args)
                .args(["--metrics-listen", address])
                .output(),
        )
        .await
        .expect("exits")
        .expect("runs");
        assert!(!output.status.success(), "{binary} started on {address}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("--metrics-listen {address}")),
            "{binary}: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains(reason),
            "{binary} on {address}: {stderr}"
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
    let series = module_cache;
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

/// The executor's `module_cache` counter for `result` (hit, shared, miss) in a scrape; 0
/// before the first such lookup.
fn module_cache(text: &str, result: &str) -> f64 {
    let series = format!("shoal_executor_module_cache_total{{result=\"{result}\"}}");
    find_value(text, &series).unwrap_or(0.0)
}

/// An executor started for the module-sharing test: its metrics endpoint and its log.
struct Pooled {
    _child: tokio::process::Child,
    lines: crate::common::Lines,
    metrics: String,
}

async fn start_pooled(
    address: &str,
    dir: &std::path::Path,
    who: &str,
    key: &std::path::Path,
) -> Pooled {
    let label = format!("who={who}");
    let key = key.to_string_lossy();
    let (child, lines) = start_executor_logged(
        address,
        &dir.join(who),
        who,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--label",
            &label,
            "--module-share-key",
            &key,
        ],
        &[],
    );
    let metrics = crate::common::json_log_line(&lines, "metrics listening", |line| {
        line["message"] == "metrics listening"
    })
    .await["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    Pooled {
        _child: child,
        lines,
        metrics,
    }
}

/// Executors on different machines (separate work directories and module caches) that
/// share a key load what one of them compiled instead of compiling it again; one with
/// another key does not; and an artifact spoiled in the store (one byte flipped, recorded
/// as the pool's through the API) is refused by its signature, and the program compiled
/// and run as if nothing had been shared.
#[tokio::test(flavor = "multi_thread")]
async fn a_pool_shares_compiled_modules_and_refuses_a_spoiled_one() {
    use shoal::proto::executor_service_client::ExecutorServiceClient;
    use shoal::proto::{CompiledModule, FindCompiledModuleRequest};
    let scratch = tempfile::tempdir().expect("tempdir");
    let orchestrator = start_orchestrator_with(&scratch.path().join("data"), 0, &[]).await;
    let address = orchestrator.address.clone();
    let (pool_key, other_key) = (
        scratch.path().join("pool.key"),
        scratch.path().join("other.key"),
    );
    std::fs::write(&pool_key, format!("{}\n", "7f".repeat(32))).expect("write a key");
    std::fs::write(&other_key, "another pool's secret, long enough").expect("write a key");
    let hello = path("examples/hello/hello.wasm");
    let run_on = |who: &'static str| {
        let (address, hello) = (address.clone(), hello.clone());
        async move {
            let constraint = format!("who={who}");
            let out = crate::common::shoal(&address, &["wasm", "run", "-s", &constraint, &hello])
                .await
                .success();
            assert!(
                out.stdout.contains("Hello from hello.wasm!"),
                "{who}: {}",
                out.stdout
            );
        }
    };

    let one = start_pooled(&address, scratch.path(), "one", &pool_key).await;
    run_on("one").await;
    let shared = crate::common::json_log_line(&one.lines, "compiled module shared", |line| {
        line["message"] == "compiled module shared"
    })
    .await;
    let field = |name: &str| shared[name].as_str().expect(name).to_owned();
    let (program, engine, artifact) = (field("program"), field("engine"), field("artifact"));
    assert_eq!(module_cache(&scrape(&one.metrics).await, "miss"), 1.0);

    let two = start_pooled(&address, scratch.path(), "two", &pool_key).await;
    run_on("two").await;
    let two_metrics = scrape(&two.metrics).await;
    assert_eq!(module_cache(&two_metrics, "shared"), 1.0, "{two_metrics}");
    assert_eq!(module_cache(&two_metrics, "miss"), 0.0, "{two_metrics}");

    let outsider = start_pooled(&address, scratch.path(), "outsider", &other_key).await;
    run_on("outsider").await;
    let outsider_metrics = scrape(&outsider.metrics).await;
    assert_eq!(
        module_cache(&outsider_metrics, "shared"),
        0.0,
        "{outsider_metrics}"
    );
    assert_eq!(
        module_cache(&outsider_metrics, "miss"),
        1.0,
        "{outsider_metrics}"
    );

    // Spoil the pool's artifact: the same bytes with one flipped, stored and recorded.
    let mut spoiled = stored_bytes(&address, &artifact).await;
    let middle = spoiled.len() / 2;
    spoiled[middle] ^= 0x20;
    let spoiled_file = scratch.path().join("spoiled.cwasm");
    std::fs::write(&spoiled_file, &spoiled).expect("write");
    let spoiled_cid = crate::common::shoal(
        &address,
        &["data", "put", "-q", &spoiled_file.to_string_lossy()],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    let channel = crate::common::connect(&address).await;
    let mut index = ExecutorServiceClient::new(channel);
    // The index takes no engine key that could be a path, and no artifact it lacks.
    let absent = shoal::content::cid::ContentId::of_block(shoal::content::cid::RAW, b"absent");
    for (engine, artifact, code) in [
        (
            "../ENGINE",
            spoiled_cid.clone(),
            tonic::Code::InvalidArgument,
        ),
        (
            engine.as_str(),
            absent.to_string(),
            tonic::Code::FailedPrecondition,
        ),
    ] {
        let record = CompiledModule {
            program: program.clone(),
            engine: engine.to_owned(),
            artifact,
        };
        let refused = index
            .record_compiled_module(record)
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code, "{refused:?}");
    }
    index
        .record_compiled_module(CompiledModule {
            program: program.clone(),
            engine: engine.clone(),
            artifact: spoiled_cid.clone(),
        })
        .await
        .expect("record the spoiled artifact");

    let three = start_pooled(&address, scratch.path(), "three", &pool_key).await;
    run_on("three").await;
    let refused =
        crate::common::json_log_line(&three.lines, "the spoiled module refused", |line| {
            line["message"] == "a shared compiled module was refused"
        })
        .await;
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("signature does not verify"),
        "{refused}"
    );
    let three_metrics = scrape(&three.metrics).await;
    assert_eq!(
        module_cache(&three_metrics, "shared"),
        0.0,
        "{three_metrics}"
    );
    assert_eq!(module_cache(&three_metrics, "miss"), 1.0, "{three_metrics}");
    // And it shared its own, replacing the spoiled record.
    crate::common::json_log_line(&three.lines, "three shared its module", |line| {
        line["message"] == "compiled module shared"
    })
    .await;
    let recorded = index
        .find_compiled_module(FindCompiledModuleRequest { program, engine })
        .await
        .expect("find")
        .into_inner();
    assert_ne!(recorded.artifact, spoiled_cid);
}

/// The bytes of the stored file `cid`.
async fn stored_bytes(address: &str, cid: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("file");
    crate::common::shoal(address, &["data", "get", cid, &dest.to_string_lossy()])
        .await
        .success();
    std::fs::read(&dest).expect("read")
}
