//! Logs and traces, set up the same way by the daemons and the CLI.
//!
//! Logs: `tracing` to stderr, pretty or JSON, filtered by `RUST_LOG` (or the given default).
//! JSON lines are flat: the fields of every span an event happens in (`job_id`,
//! `execution_id`, ...) and the process's own fields (an executor's `executor_id`) sit at the
//! top level beside the event's, so a log store can filter on them directly.
//!
//! Traces: when the standard OpenTelemetry environment asks for them
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_TRACES_EXPORTER=otlp`), spans of Shoal's own crates at INFO and above are exported
//! over OTLP/gRPC. The W3C trace context travels CLI -> orchestrator in gRPC metadata
//! ([`inject_current`], [`remote_parent`]) and orchestrator -> executor inside the `Assign`
//! message ([`context_map`], [`set_parent_from_map`]), because one executor stream carries
//! many jobs and so cannot carry one job's trace in its headers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::error::{Error, Result};

/// How long exporting the last spans may hold up a process that is exiting.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One flat JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (pretty or json)")),
        }
    }
}

/// What a process sets up: how it logs and how it names itself in traces.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: LogFormat,
    /// Log filter when `RUST_LOG` is unset, e.g. `info` for daemons, `warn` for the CLI.
    pub default_directives: &'static str,
    /// `service.name` of the exported spans unless `OTEL_SERVICE_NAME` (or
    /// `OTEL_RESOURCE_ATTRIBUTES`) names one.
    pub service_name: &'static str,
    /// Fields on every JSON log line, e.g. `executor_id`.
    pub process_fields: Vec<(&'static str, String)>,
}

/// The installed telemetry; [`shutdown`](Self::shutdown) exports the spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (waiting at most a few seconds for the collector)
    /// and stops the exporter. Call it last, inside the runtime: the exporter's connection
    /// lives on it.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            // Blocks until the export thread is done: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || {
                let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            })
            .await;
        }
    }
}

/// Whether the OpenTelemetry environment asks for trace export, or why it is wrong.
/// Shoal exports OTLP over gRPC only; anything else is refused rather than ignored, so a
/// misconfigured collector address is found at startup.
pub fn traces_requested() -> Result<bool> {
    let var = env_var;
    let invalid = |message: String| Error::Telemetry(message);
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        Some("none") => return Ok(false),
        Some("otlp") => {}
        Some(other) => {
            return Err(invalid(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported (otlp or none)"
            )));
        }
        None => {
            if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
                && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
            {
                return Ok(false);
            }
        }
    }
    // The signal-specific setting wins over the general one.
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| var(name).map(|value| (name, value)));
    if let Some((name, value)) = protocol
        && value != "grpc"
    {
        return Err(invalid(format!(
            "{name}={value:?} is not supported: Shoal exports traces over OTLP/gRPC (grpc)"
        )));
    }
    Ok(true)
}

/// An environment variable's trimmed value; unset and blank are the same.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Installs logging, and trace export when the environment asks for it. Must run inside
/// the Tokio runtime (the OTLP exporter's connection lives on it). Installing twice keeps
/// the first subscriber.
pub fn init(options: Options) -> Result<Telemetry> {
    let tracer_provider = if traces_requested()? {
        Some(tracer_provider(options.service_name)?)
    } else {
        None
    };
    Ok(install(options, tracer_provider))
}

/// Installs logging only, whatever the OpenTelemetry environment says.
pub fn init_untraced(options: Options) -> Telemetry {
    install(options, None)
}

fn install(options: Options, tracer_provider: Option<SdkTracerProvider>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(options.default_directives));
    // A failed log write is reported with eprintln!, which panics when stderr itself is
    // gone (a closed pipe): losing a log line must never take a process down.
    let logs = match options.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson {
                process_fields: options.process_fields.clone(),
            })
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
            .with_filter(filter)
            .boxed(),
    };
    let traces = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("shoal"))
            .with_threads(false)
            // Only Shoal's own spans and events: the job flow, not every HTTP/2 frame.
            .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                metadata.target().starts_with("shoal") && *metadata.level() <= tracing::Level::INFO
            }))
    });
    crate::daemon::panics::log_panics();
    let _already_set = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if tracer_provider.is_some() {
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(env_var)
        .unwrap_or_else(|| "http://localhost:4317".into());
        tracing::info!(endpoint, "exporting traces over OTLP/gRPC");
    }
    Telemetry { tracer_provider }
}

fn tracer_provider(service_name: &'static str) -> Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| Error::Telemetry(format!("cannot set up the OTLP trace exporter: {e}")))?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the detectors; without
    // them the service is named after the binary rather than "unknown_service".
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if !named {
        resource = resource.with_service_name(service_name);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

// ---- trace context propagation ----

/// Adds the current span's W3C trace context (`traceparent`, `tracestate`) to outgoing
/// gRPC metadata; nothing when no trace is recorded.
pub fn inject_current(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// The caller's trace context from incoming gRPC metadata (empty when it sent none).
pub fn remote_parent(metadata: &MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// `span`'s trace context as W3C headers, to carry inside a message or store with a job.
/// Empty when no trace is recorded.
pub fn context_map(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut map);
    }
    map
}

/// Makes `span` (not yet entered) a child of the trace context in `map`; no effect when
/// the map is empty or traces are off.
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    set_parent(span, TraceContextPropagator::new().extract(map));
}

/// Makes `span` (not yet entered) a child of `parent`; no effect when `parent` holds no
/// span or traces are off.
pub fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when no trace layer is installed or the span is disabled: nothing to do.
        let _ = span.set_parent(parent);
    }
}

/// The trace id in a W3C trace context map, for showing to a user.
pub fn trace_id(map: &HashMap<String, String>) -> Option<String> {
    let context = TraceContextPropagator::new().extract(map);
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

// ---- flat JSON log lines ----

/// Writes an event as one JSON object: `timestamp`, `level`, `target`, `span` (the
/// innermost span's name), the process fields, the fields of every span in scope from the
/// outermost in, then the event's own fields (`message` among them). A later field of the
/// same name replaces an earlier one.
struct FlatJson {
    process_fields: Vec<(&'static str, String)>,
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        let mut timestamp = String::new();
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let metadata = event.metadata();
        fields.set("timestamp", Value::String(timestamp));
        fields.set("level", Value::String(metadata.level().to_string()));
        fields.set("target", Value::String(metadata.target().to_owned()));
        for (name, value) in &self.process_fields {
            fields.set(name, Value::String(value.clone()));
        }
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                // JsonFields renders a span's fields as one JSON object.
                if let Some(rendered) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(rendered)
                {
                    // `otel.*` fields steer the trace export; they are not log context.
                    for (name, value) in map.into_iter().filter(|(n, _)| !n.starts_with("otel.")) {
                        fields.set(&name, value);
                    }
                }
            }
            if let Some(name) = innermost {
                fields.set("span", Value::String(name.to_owned()));
            }
        }
        event.record(&mut fields);
        let mut line = String::from("{");
        for (i, (name, value)) in fields.0.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            let _ = write!(
                line,
                "{}:{}",
                Value::String(name.clone()),
                serde_json::to_string(value).unwrap_or_else(|_| "null".into())
            );
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Fields in first-set order; setting a name again replaces its value in place.
#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn set(&mut self, name: &str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::String(value.to_owned()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::Bool(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_a_map() {
        let mut map = HashMap::new();
        map.insert(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        assert_eq!(
            trace_id(&map).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(&HashMap::new()), None);
        map.insert("traceparent".to_owned(), "garbage".to_owned());
        assert_eq!(trace_id(&map), None);
    }

    #[test]
    fn trace_context_travels_in_grpc_metadata() {
        let mut headers = HashMap::new();
        headers.insert(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        let context = TraceContextPropagator::new().extract(&headers);
        let mut metadata = MetadataMap::new();
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let parent = remote_parent(&metadata);
        assert_eq!(
            parent.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
