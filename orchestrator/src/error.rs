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
    #[error(transparent)]
    Io(#[from] shoal::error::IoError),
    /// A write could not be committed (a full or failing disk): nothing of it was
    /// applied, and the call may be retried once the store writes again.
    #[error("the store cannot write: {0}")]
    StoreUnavailable(String),
    /// This orchestrator's leadership term has ended (its lock connection failed, or a
    /// later term began): it may not write, and callers should turn to the leader.
    #[error("this orchestrator no longer leads: {0}")]
    Deposed(String),
    /// The write-ahead log is damaged or missing; the message says where and what to do.
    #[error("{0}")]
    LogDamaged(crate::store::wal::LogDamage),
    /// Copying or pinning outside data failed (`action` says what was being done); the
    /// source's answer decides the status: a source that could not be reached is
    /// UNAVAILABLE, so a client may try again later; one that refused or served the wrong
    /// bytes, or data past the limit, is FAILED_PRECONDITION.
    #[error("cannot {action}: {error}")]
    Fetch {
        action: String,
        error: shoal::data::DataError,
    },
    /// The orchestrator is shutting down.
    #[error("the orchestrator is shutting down")]
    ShuttingDown,
    /// A peer took longer than allowed (an executor that sends no `Register`).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or an impossible state: logged, and answered INTERNAL.
    #[error("{0}")]
    Internal(String),
}

/// Result with the orchestrator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        Error::Io(shoal::error::IoError { context, source })
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
    /// The one mapping from the orchestrator's errors to gRPC statuses; every message is
    /// cut to `shoal::error::MAX_STATUS_MESSAGE`.
    fn from(error: Error) -> Self {
        use shoal::data::DataError;
        use tonic::Code;
        let code = match &error {
            Error::Core(core) => return core.status(),
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ShuttingDown | Error::StoreUnavailable(_) | Error::Deposed(_) => {
                Code::Unavailable
            }
            Error::Fetch { error, .. } => match error {
                DataError::Unavailable(_) => Code::Unavailable,
                DataError::Refused(_) | DataError::Invalid(_) | DataError::TooLarge(_) => {
                    Code::FailedPrecondition
                }
                DataError::Local(_) => {
                    tracing::error!(%error, "copying outside data failed here");
                    Code::Internal
                }
            },
            // A full disk: retryable once space is freed.
            Error::Io(io)
                if matches!(
                    io.source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                Code::Unavailable
            }
            Error::Store(_) | Error::Io(_) | Error::LogDamaged(_) | Error::Internal(_) => {
                tracing::error!(%error, "internal error");
                Code::Internal
            }
        };
        shoal::error::bounded_status(code, error.to_string())
    }
}

/// What may pass if tried again later: the store (an outage, a full disk, a backend that
/// did not answer) and I/O. A request's own faults (not found, invalid) do not.
impl shoal::net::retry::Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            Error::Store(_) | Error::Io(_) | Error::StoreUnavailable(_) | Error::Deposed(_) => true,
            Error::Core(error) => error.is_transient(),
            _ => false,
        }
    }
}
