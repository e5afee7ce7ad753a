//! Shoal's shared core: the `shoal.v1` protocol, ids, content ids, job-spec parsing and
//! validation, label selectors, file-tree transfer over the storage API, and telemetry setup.
//!
//! The daemons (`shoal-orchestrator`, `shoal-executor`) and the `shoal` CLI all build on this
//! crate; it has no knowledge of wasmtime or of the orchestrator's store.

pub mod auth;
pub mod cid;
pub mod error;
pub mod fetch;
pub mod ids;
pub mod ipfs;
pub mod local_tree;
pub mod metrics;
pub mod panics;
pub mod proto;
pub mod retry;
pub mod s3;
pub mod selector;
pub mod shutdown;
pub mod source;
pub mod spec;
pub mod telemetry;
pub mod transfer;
pub mod units;
pub mod unixfs;

pub use error::{Error, Result};
