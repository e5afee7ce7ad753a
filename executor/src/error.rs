//! The executor's error type. Guest failures are not errors: they are structured
//! `Failure` values reported to the orchestrator.

/// Faults of the executor itself (connection, disk, configuration).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared-core error (transfers, ids).
    #[error(transparent)]
    Core(#[from] shoal::Error),
    /// A gRPC call failed.
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// The orchestrator could not be reached.
    #[error("cannot connect to the orchestrator: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The orchestrator broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Local disk I/O failed.
    #[error(transparent)]
    Io(#[from] shoal::error::IoError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// wasmtime could not be set up.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// Result with the executor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        Error::Io(shoal::error::IoError { context, source })
    }
}
