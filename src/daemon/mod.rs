//! What every Shoal process needs around its work: logs and OpenTelemetry traces
//! ([`telemetry`]), the Prometheus endpoint ([`metrics`]), the panic hook and panic
//! isolation ([`panics`]), and graceful shutdown on signals ([`shutdown`]).

pub mod metrics;
pub mod panics;
pub mod shutdown;
pub mod telemetry;
