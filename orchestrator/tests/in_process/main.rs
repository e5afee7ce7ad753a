//! The in-process layer: the orchestrator served in the test's own process on a listener
//! bound to port 0, driven through its gRPC API and through the executor API's inner
//! function over in-memory streams. Faster than the end-to-end tests (no processes to
//! start) and closer: a test can be a lying executor without any network in between.

mod harness;
mod protocol;
