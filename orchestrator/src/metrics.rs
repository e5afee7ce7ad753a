//! The orchestrator's Prometheus metrics, served by `shoal::daemon::metrics` on `--metrics-listen`.
//!
//! Counters and histograms are updated by the cluster state machine as transitions
//! happen; the gauges describing the present (jobs by state, queue depth, executors) are
//! set from the cluster state by [`Cluster::refresh_metrics`](crate::cluster::Cluster)
//! just before each scrape.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shoal::daemon::metrics::StreamMessages;
use shoal::proto::{ExecutionState, JobState};

/// One label, e.g. `state="completed"`.
pub type Label = [(&'static str, String); 1];

type HistogramFamily = Family<Label, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(shoal::daemon::metrics::duration_buckets())
}

/// Every metric the orchestrator exports.
pub struct Metrics {
    registry: Registry,
    pub jobs: Family<Label, Gauge>,
    pub queue_depth: Gauge,
    pub executors_connected: Gauge,
    pub executor_slots_free: Gauge,
    pub jobs_submitted: Counter,
    pub jobs_finished: Family<Label, Counter>,
    pub scheduling_latency: Histogram,
    pub execution_duration: HistogramFamily,
    pub stream_messages: StreamMessages,
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

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("shoal"),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            executors_connected: Gauge::default(),
            executor_slots_free: Gauge::default(),
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            scheduling_latency: duration_histogram(),
            execution_duration: Family::new_with_constructor(duration_histogram),
            stream_messages: StreamMessages::default(),
        };
        let r = &mut metrics.registry;
        r.register("jobs", "Jobs by state", metrics.jobs.clone());
        r.register(
            "queue_depth",
            "Jobs waiting for an executor",
            metrics.queue_depth.clone(),
        );
        r.register(
            "executors_connected",
            "Executors holding a live stream",
            metrics.executors_connected.clone(),
        );
        r.register(
            "executor_slots_free",
            "Free execution slots on connected, schedulable executors",
            metrics.executor_slots_free.clone(),
        );
        r.register(
            "jobs_submitted",
            "Jobs accepted since start",
            metrics.jobs_submitted.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs that reached a terminal state since start, by state",
            metrics.jobs_finished.clone(),
        );
        r.register(
            "scheduling_latency_seconds",
            "From queued to assigned to an executor",
            metrics.scheduling_latency.clone(),
        );
        r.register(
            "execution_duration_seconds",
            "From assignment to the end of an execution, by final state",
            metrics.execution_duration.clone(),
        );
        metrics.stream_messages.register(
            r,
            "executor_stream_messages",
            "Messages on executor streams, by direction and type",
        );
        metrics
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        shoal::daemon::metrics::encode(&self.registry)
    }

    /// Counts one executor-stream message.
    pub fn message(&self, direction: &'static str, kind: &'static str) {
        self.stream_messages.count(direction, kind);
    }
}

/// `state="completed"` for a job state.
pub fn job_state(state: JobState) -> Label {
    [("state", short(state.as_str_name(), "JOB_STATE_"))]
}

/// `state="completed"` for an execution state.
pub fn execution_state(state: ExecutionState) -> Label {
    [("state", short(state.as_str_name(), "EXECUTION_STATE_"))]
}

fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}
