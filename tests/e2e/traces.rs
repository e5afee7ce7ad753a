//! One job is one trace: the CLI, the orchestrator and the executor each export their spans
//! over OTLP/gRPC (the standard `OTEL_EXPORTER_OTLP_ENDPOINT`) to an OTLP trace receiver
//! served in this test, and every span of the job — submit, schedule, stage, compile, run,
//! publish — carries the same trace id, each under the span that caused it. The JSON log
//! lines of the same run carry `job_id`, `execution_id` and `executor_id` as top-level
//! fields. Unusable OpenTelemetry settings are refused by the daemons and survived by the
//! CLI.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use crate::common::{
    Lines, TIMEOUT, bin, path, start_executor_logged, start_orchestrator_logged, wait_connected,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::Notify;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// An OTLP trace receiver: keeps every span exported to it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
        self.spans.lock().expect("lock").extend(received);
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves the receiver on an ephemeral port; returns its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{address}")
    }

    /// Waits until the spans of `trace_id` include every name in `names` (exported by
    /// `service` for the pairs given); returns that trace's spans.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.arrived.notified();
            {
                let spans = self.spans.lock().expect("lock");
                if done(&spans) {
                    return spans.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let spans = self.spans.lock().expect("lock");
                panic!("never received {what}; got {spans:#?}");
            }
        }
    }
}

/// The environment that points a process's trace export at the receiver, exporting every
/// 100 ms so the test does not wait for the default 5 s batches.
fn otel_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

/// Waits for the JSON log line whose `message` is `message` and whose `job_id` is `job`.
async fn log_line(lines: &Lines, message: &str, job: &str) -> serde_json::Value {
    crate::common::json_log_line(lines, &format!("{message:?} for job {job}"), |line| {
        line["message"] == message && line["job_id"] == job
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_job_is_one_trace_across_cli_orchestrator_and_executor() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let env = otel_env(&endpoint);
    let scratch = tempfile::tempdir().expect("tempdir");
    let orchestrator = start_orchestrator_logged(&scratch.path().join("data"), 0, &[], &env).await;
    let address = orchestrator.address.clone();
    let orchestrator_lines = orchestrator.lines.clone();
    let (_executor, executor_lines) = start_executor_logged(
        &address,
        &scratch.path().join("executor"),
        "traced",
        &[],
        &env,
    );
    wait_connected(&orchestrator, "traced").await;

    let run = crate::common::shoal_with_env(
        &address,
        &["wasm", "run", &path("examples/hello/hello.wasm"), "traced"],
        &env,
    )
    .await
    .success();
    let job = run.submitted_job();

    // The trace of the job: the one the orchestrator's submit span for this job is in.
    let has = |spans: &[Received], service: &str, name: &str| {
        spans.iter().any(|s| s.service == service && s.name == name)
    };
    let spans = receiver
        .wait_for("the job's spans from all three processes", |spans| {
            let Some(trace) = spans
                .iter()
                .find(|s| s.name == "submit" && s.attributes.get("job_id") == Some(&job))
                .map(|s| s.trace_id.clone())
            else {
                return false;
            };
            let spans: Vec<Received> = spans
                .iter()
                .filter(|s| s.trace_id == trace)
                .cloned()
                .collect();
            has(&spans, "shoal-cli", "shoal wasm run")
                && has(&spans, "shoal-cli", "submit")
                && has(&spans, "shoal-orchestrator", "submit")
                && has(&spans, "shoal-orchestrator", "schedule")
                && ["execute", "stage", "compile", "run", "publish"]
                    .iter()
                    .all(|name| has(&spans, "shoal-executor", name))
        })
        .await;
    let find = |service: &str, name: &str| -> Received {
        spans
            .iter()
            .find(|s| {
                s.service == service
                    && s.name == name
                    && (name != "submit"
                        || service != "shoal-orchestrator"
                        || s.attributes.get("job_id") == Some(&job))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {service} {name} span"))
    };
    let command = find("shoal-cli", "shoal wasm run");
    let cli_submit = find("shoal-cli", "submit");
    let submit = find("shoal-orchestrator", "submit");
    let schedule = find("shoal-orchestrator", "schedule");
    let execute = find("shoal-executor", "execute");
    let stage = find("shoal-executor", "stage");
    let compile = find("shoal-executor", "compile");
    let run = find("shoal-executor", "run");
    let publish = find("shoal-executor", "publish");

    // One trace, rooted at the CLI's command, every span under the one that caused it.
    let trace = &command.trace_id;
    for span in [
        &cli_submit,
        &submit,
        &schedule,
        &execute,
        &stage,
        &compile,
        &run,
        &publish,
    ] {
        assert_eq!(&span.trace_id, trace, "{span:#?} is in another trace");
    }
    assert!(
        command.parent_span_id.is_empty() || command.parent_span_id.chars().all(|c| c == '0'),
        "the CLI command is the root: {command:#?}"
    );
    let parent_of = [
        (&cli_submit, &command),
        (&submit, &cli_submit),
        (&schedule, &submit),
        (&execute, &schedule),
        (&stage, &execute),
        (&compile, &stage),
        (&run, &execute),
        (&publish, &execute),
    ];
    for (child, parent) in parent_of {
        assert_eq!(
            child.parent_span_id, parent.span_id,
            "{} should be a child of {}",
            child.name, parent.name
        );
    }
    assert_eq!(schedule.attributes.get("job_id"), Some(&job));
    assert_eq!(
        schedule.attributes.get("executor_id").map(String::as_str),
        Some("traced")
    );
    assert_eq!(execute.attributes.get("job_id"), Some(&job));
    let execution_id = execute
        .attributes
        .get("execution_id")
        .cloned()
        .expect("execute span names its execution");
    assert_eq!(schedule.attributes.get("execution_id"), Some(&execution_id));

    // The job record names its trace, so a user can find it in a tracing backend.
    let described = crate::common::shoal(&address, &["job", "describe", &job, "--output", "json"])
        .await
        .success()
        .json();
    let traceparent = described["traceContext"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace context on the job: {described}"));
    assert!(
        traceparent.contains(trace.as_str()),
        "{traceparent} vs {trace}"
    );

    // JSON logs of the same job: flat, with the ids as top-level fields.
    let assigned = log_line(&orchestrator_lines, "execution assigned", &job).await;
    assert_eq!(assigned["execution_id"], execution_id.as_str());
    assert_eq!(assigned["executor_id"], "traced");
    let ended = log_line(&executor_lines, "program ended", &job).await;
    assert_eq!(ended["execution_id"], execution_id.as_str());
    assert_eq!(ended["executor_id"], "traced");
    assert_eq!(ended["level"], "INFO");
    assert!(
        ended.get("otel.kind").is_none() && ended.get("otel.status_code").is_none(),
        "trace-only fields leak into logs: {ended}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_trace_settings_are_refused_by_daemons_and_survived_by_the_cli() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "OTLP/gRPC"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER"),
    ];
    for (name, value, expected) in cases {
        for daemon in ["shoal-orchestrator", "shoal-executor"] {
            let args: Vec<String> = if daemon == "shoal-orchestrator" {
                let data = scratch.path().join("data");
                vec![
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--data-dir".into(),
                    data.display().to_string(),
                ]
            } else {
                let work = scratch.path().join("work");
                vec![
                    "--orchestrator".into(),
                    "http://127.0.0.1:1".into(),
                    "--work-dir".into(),
                    work.display().to_string(),
                ]
            };
            // At startup, and under --check-config (what the Helm chart's checks run).
            for check in [&[][..], &["--check-config"][..]] {
                let output = std::process::Command::new(bin(daemon))
                    .args(&args)
                    .args(check)
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
                    .env(name, value)
                    .stdin(Stdio::null())
                    .output()
                    .expect("run daemon");
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(
                    !output.status.success(),
                    "{daemon} {check:?} accepted {name}={value}"
                );
                assert!(
                    stderr.contains(expected) && stderr.contains(value),
                    "{daemon} {check:?} with {name}={value}: {stderr}"
                );
            }
        }
        // The CLI warns and goes on untraced.
        let out = crate::common::shoal_with_env(
            "http://127.0.0.1:1",
            &[
                "wasm",
                "run",
                "--dry-run",
                &path("examples/hello/hello.wasm"),
            ],
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    "http://127.0.0.1:1".into(),
                ),
                (name.into(), value.into()),
            ],
        )
        .await
        .success();
        assert!(
            out.stderr.contains("traces are off") && out.stdout.contains("hello.wasm"),
            "{out:?}"
        );
    }
}
