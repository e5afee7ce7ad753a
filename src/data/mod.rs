//! The data sources programs and inputs come from, each fetching to disk within a size
//! limit and saying why it failed: HTTP(S) URLs with the URL policy ([`http`]), S3 objects,
//! prefixes and globs ([`s3`]), and IPFS trustless gateways with every block verified
//! ([`ipfs`]).

pub mod http;
pub mod ipfs;
pub mod s3;

/// Why a data source (an HTTP server, S3, an IPFS gateway) did not deliver, or S3 did not
/// take an upload. Each says which case it met, so a caller knows whether a later attempt
/// may succeed ([`DataError::is_transient`]); the message says why, for the STAGING or
/// PUBLISH failure it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The source could not be reached, broke off, or answered with a server error or
    /// "too many requests", on every attempt the fetcher made: worth trying again later.
    #[error("{0}")]
    Unavailable(String),
    /// The source answered and refused: not found, access denied, denied by the URL
    /// policy, or a request it cannot serve.
    #[error("{0}")]
    Refused(String),
    /// The source served something other than what was asked for: bytes that do not
    /// verify against their CID or sha256, an object changed mid-fetch, a DAG Shoal cannot
    /// read, a name that cannot be a path.
    #[error("{0}")]
    Invalid(String),
    /// More data than the limit allows.
    #[error("{0}")]
    TooLarge(String),
    /// The data could not be written (a fetch) or read (an upload) here.
    #[error("{0}")]
    Local(String),
}

impl DataError {
    /// Whether another attempt later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DataError::Unavailable(_))
    }

    /// The same failure, its message prefixed with what was being fetched.
    pub fn context(self, what: impl std::fmt::Display) -> DataError {
        self.map(|message| format!("{what}: {message}"))
    }

    /// The same failure with its message rewritten.
    pub fn map(self, rewrite: impl FnOnce(String) -> String) -> DataError {
        match self {
            DataError::Unavailable(m) => DataError::Unavailable(rewrite(m)),
            DataError::Refused(m) => DataError::Refused(rewrite(m)),
            DataError::Invalid(m) => DataError::Invalid(rewrite(m)),
            DataError::TooLarge(m) => DataError::TooLarge(rewrite(m)),
            DataError::Local(m) => DataError::Local(rewrite(m)),
        }
    }

    /// An HTTP answer that is not a success: a server error or 429 may pass, the rest is a
    /// refusal.
    pub fn from_http_status(status: u16, reason: String) -> DataError {
        if status >= 500 || status == 429 {
            DataError::Unavailable(reason)
        } else {
            DataError::Refused(reason)
        }
    }
}

impl crate::net::retry::Transient for DataError {
    fn is_transient(&self) -> bool {
        DataError::is_transient(self)
    }
}
