//! The network around the gRPC API: channels with bearer tokens and TLS ([`auth`]) to the
//! orchestrator replica that leads ([`leader`]), and the one way a failed call is repeated
//! ([`retry`]).

pub mod auth;
pub mod leader;
pub mod retry;

/// HTTP/2 receive window of one stream, on the orchestrator and on every client of it. A
/// stream can have at most this much unacknowledged data in flight, so it caps one transfer
/// at window / round trip: hyper's defaults (1 MiB on a server, 2 MiB on a client) allow
/// 100-200 MB/s across a 10 ms link. 16 MiB allows 1.6 GB/s there; it is a limit, not an
/// allocation (docs/PERFORMANCE.md, B5 over a slow link).
pub const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 receive window of a whole connection, shared by its streams.
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;
