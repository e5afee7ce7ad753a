//! Shoal's shared core, grouped by purpose:
//!
//! - [`protocol`]: the `shoal.v1` protobuf and gRPC code ([`proto`]) and the ids it carries
//!   ([`ids`]). This is all a gRPC client needs: with `default-features = false` the crate
//!   is only this (and [`error`]), without the fetchers, servers and telemetry below.
//! - [`content`]: content addressing (CIDs, UnixFS trees) and moving trees between disk and
//!   the storage API.
//! - [`spec`]: job specs (the YAML/JSON document, defaults, validation), label selectors,
//!   program and input sources, sizes and durations.
//! - [`data`]: the data sources inputs and programs come from: HTTP(S) URLs, S3 and IPFS
//!   gateways.
//! - [`net`]: gRPC channels with tokens and TLS, and the one retry with backoff.
//! - [`daemon`]: what every process needs: logs and traces, the metrics endpoint, the panic
//!   hook and signal handling.
//!
//! The daemons (`shoal-orchestrator`, `shoal-executor`) and the `shoal` CLI all build on this
//! crate; it has no knowledge of wasmtime or of the orchestrator's store.

pub mod error;
pub mod protocol;

#[cfg(feature = "full")]
pub mod content;
#[cfg(feature = "full")]
pub mod daemon;
#[cfg(feature = "full")]
pub mod data;
#[cfg(feature = "full")]
pub mod net;
#[cfg(feature = "full")]
pub mod spec;

pub use error::{Error, Result};
pub use protocol::{ids, proto};
