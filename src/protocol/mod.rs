//! The `shoal.v1` API: the generated protobuf messages and gRPC clients and servers
//! ([`proto`], from `proto/shoal/v1/`), and the typed ids of jobs and executions ([`ids`]).

pub mod ids;
pub mod proto;

/// The response metadata key of a SubmitJob refused with NOT_FOUND because the store lacks
/// some of the request's `stored_cids`: their indices in that list, comma-separated (`0,3`).
pub const MISSING_STORED_CIDS: &str = "shoal-missing-stored-cids";
