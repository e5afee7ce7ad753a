//! The orchestrator's error type and its one mapping to gRPC statuses.

/// Everything that can go wrong inside the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or spec was malformed.
    #[error(transparent)]
    Core(#[from] shoal::Error),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the object is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The thing to create exists already (an executor id connected from another process).
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound was reached; the client should back off and retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A malformed request that is not a spec problem.
    #[error("{0}")]
    InvalidArgument(String),
    /// The durable store failed.
    #[error("store: {0}")]
    Store(String),
    /// Local disk I/O failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A write could not be committed (a full or failing disk): nothing of it was
    /// applied, and the call may be retried once the store writes again.
    #[error("the store cannot write: {0}")]
    StoreUnavailable(String),
    /// The write-ahead log is damaged or missing; the message says where and what to do.
    #[error("{0}")]
    LogDamaged(crate::wal::LogDamage),
    /// The orchestrator is shutting down.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
}

/// Result with the orchestrator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {
        $(impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.to_string())
            }
        })*
    };
}
store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    prost::DecodeError
);

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Status;
        match error {
            Error::Core(e) => e.into(),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::ShuttingDown | Error::StoreUnavailable(_) => {
                Status::unavailable(error.to_string())
            }
            Error::Io { ref source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                // A full disk: retryable once space is freed.
                Status::unavailable(error.to_string())
            }
            Error::Store(_) | Error::Io { .. } | Error::LogDamaged(_) => {
                tracing::error!(%error, "internal error");
                Status::internal(error.to_string())
            }
        }
    }
}
