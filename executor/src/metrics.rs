//! The executor's Prometheus metrics, served by `shoal::daemon::metrics` on `--metrics-listen`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shoal::daemon::metrics::StreamMessages;
use shoal::proto::ExecutionState;

/// One label whose values are fixed words, e.g. `result="hit"`.
pub type Label = [(&'static str, &'static str); 1];

/// Every metric the executor exports.
pub struct Metrics {
    registry: Registry,
    pub executions: Family<Label, Counter>,
    pub running: Gauge,
    pub execution_duration: Family<Label, Histogram, fn() -> Histogram>,
    pub staged_bytes: Family<Label, Counter>,
    pub module_cache: Family<Label, Counter>,
    pub stream_messages: StreamMessages,
    pub connected: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(shoal::daemon::metrics::duration_buckets())
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("shoal_executor"),
            executions: Family::default(),
            running: Gauge::default(),
            execution_duration: Family::new_with_constructor(duration_histogram),
            staged_bytes: Family::default(),
            module_cache: Family::default(),
            stream_messages: StreamMessages::default(),
            connected: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "executions",
            "Executions that ended, by final state",
            metrics.executions.clone(),
        );
        r.register(
            "executions_running",
            "Executions in progress (staging, running or publishing)",
            metrics.running.clone(),
        );
        r.register(
            "execution_duration_seconds",
            "From assignment to the final report, by final state",
            metrics.execution_duration.clone(),
        );
        r.register(
            "staged_bytes",
            "Bytes of inputs staged for executions, by source (cid, url, s3)",
            metrics.staged_bytes.clone(),
        );
        r.register(
            "module_cache",
            "Compiled-module lookups: hit (memory or disk), shared (loaded from another executor of the pool, --module-share-key) or miss (compiled)",
            metrics.module_cache.clone(),
        );
        metrics.stream_messages.register(
            r,
            "stream_messages",
            "Messages on the stream to the orchestrator, by direction and type",
        );
        r.register(
            "connected",
            "1 while the stream to the orchestrator is up",
            metrics.connected.clone(),
        );
        metrics
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        shoal::daemon::metrics::encode(&self.registry)
    }

    /// Counts one stream message.
    pub fn message(&self, direction: &'static str, kind: &'static str) {
        self.stream_messages.count(direction, kind);
    }

    /// Records an execution that ended in `state` after `duration`.
    pub fn finished(&self, state: ExecutionState, duration: std::time::Duration) {
        let label = [("state", state_name(state))];
        self.executions.get_or_create(&label).inc();
        self.execution_duration
            .get_or_create(&label)
            .observe(duration.as_secs_f64());
    }
}

fn state_name(state: ExecutionState) -> &'static str {
    match state {
        ExecutionState::Completed => "completed",
        ExecutionState::Failed => "failed",
        ExecutionState::Cancelled => "cancelled",
        ExecutionState::TimedOut => "timed_out",
        _ => "other",
    }
}
