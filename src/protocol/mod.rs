//! The `shoal.v1` API: the generated protobuf messages and gRPC clients and servers
//! ([`proto`], from `proto/shoal/v1/`), and the typed ids of jobs and executions ([`ids`]).

pub mod ids;
pub mod proto;
