//! The end-to-end tests: the real binaries (`shoal`, `shoal-orchestrator`, `shoal-executor`)
//! against real peers (SeaweedFS, Helia, an HTTP server, an OTLP receiver, a Python gRPC
//! client), one module per area. One test binary, so the suite links once; `common` is the
//! harness they share.

mod common;

mod chart;
mod cids;
mod cli_edges;
mod drain;
mod executor_protocol;
mod faults;
mod gateway;
mod helia;
mod http_inputs;
mod ipfs_cids;
mod jobs;
mod metrics;
mod partitions;
mod postgres;
mod python_client;
mod restart;
mod s3_inputs;
mod security;
mod traces;
