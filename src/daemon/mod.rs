//! What every Shoal process needs around its work: logs and OpenTelemetry traces
//! ([`telemetry`]), the Prometheus endpoint ([`metrics`]), the panic hook and panic
//! isolation ([`panics`]), and graceful shutdown on signals ([`shutdown`]).

pub mod lock;
pub mod metrics;
pub mod panics;
pub mod shutdown;
pub mod telemetry;

/// The log target of the lines saying where a daemon listens (`orchestrator listening`,
/// `metrics listening`, ...), each with its `address`: enabled on its own
/// (`RUST_LOG=warn,shoal::listening=info`) they tell a supervisor or a test harness which
/// ports a daemon started on port 0 took, without the rest of its log.
pub const LISTENING: &str = "shoal::listening";
