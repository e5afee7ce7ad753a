//! The error type of the `shoal` core crate.

use std::path::PathBuf;

/// Errors from the shared core: spec validation, content ids, transfers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job spec field is invalid. `field` is the path of the field, e.g. `inputs[1].target`.
    #[error("invalid {field}: {message}")]
    InvalidSpec { field: String, message: String },
    /// A spec document (YAML or JSON) could not be parsed.
    #[error("cannot parse job spec: {0}")]
    SpecSyntax(String),
    /// A string is not a valid content id.
    #[error("invalid content id {:?}: {reason}", excerpt(input, 100))]
    InvalidCid { input: String, reason: String },
    /// A transfer stream broke its framing rules.
    #[error("malformed transfer: {0}")]
    MalformedTransfer(String),
    /// A directory tree is larger than a walk of it accepts (too deep, too many entries,
    /// a path too long); the message says which, briefly.
    #[error("the tree is too large to handle: {0}")]
    TreeTooLarge(String),
    /// A local file could not be read or written. The path is shortened in the message:
    /// a guest can make paths of any length.
    #[error("{}: {source}", shorten(path.as_os_str(), 240))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Connection or access settings (addresses, TLS and token files) are unusable; the
    /// message names the setting.
    #[error("{0}")]
    Settings(String),
    /// Another process holds the lock on a daemon's directory.
    #[error(
        "{} is in use by {holder}: stop it, or give this one a directory of its own",
        dir.display()
    )]
    DirectoryInUse { dir: PathBuf, holder: String },
    /// The logging or OpenTelemetry settings are unusable.
    #[error("telemetry settings: {0}")]
    Telemetry(String),
    /// A gRPC call failed.
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
}

/// A local I/O failure and what was being done, for the daemons' error types.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

/// Longest message a gRPC status carries: statuses travel in HTTP/2 headers, and one that
/// echoed a 1 MB field would break the response itself instead of saying what is wrong.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// At most `max` bytes of `text` (cut at a character boundary, `…` marking a cut), for
/// messages that quote what a client or peer sent.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A path shortened for a message: at most about `max` bytes, its start and end kept.
pub fn shorten(path: &std::ffi::OsStr, max: usize) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let text = String::from_utf8_lossy(path.as_bytes());
    if text.len() <= max {
        return text.into_owned();
    }
    let half = max / 2;
    let start = text.floor_char_boundary(half);
    let end = text.ceil_char_boundary(text.len() - half);
    format!("{}…{}", &text[..start], &text[end..])
}

/// A status whose message is cut to [`MAX_STATUS_MESSAGE`].
pub fn bounded_status(code: tonic::Code, message: impl AsRef<str>) -> tonic::Status {
    tonic::Status::new(code, excerpt(message.as_ref(), MAX_STATUS_MESSAGE))
}

/// Result with the core crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An invalid spec field.
    pub fn invalid_spec(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl Error {
    /// The gRPC status for this error, its message cut to [`MAX_STATUS_MESSAGE`].
    pub fn status(&self) -> tonic::Status {
        let code = match self {
            Error::InvalidSpec { .. }
            | Error::SpecSyntax(_)
            | Error::InvalidCid { .. }
            | Error::MalformedTransfer(_)
            | Error::TreeTooLarge(_) => tonic::Code::InvalidArgument,
            Error::Io { .. }
            | Error::Telemetry(_)
            | Error::Settings(_)
            | Error::DirectoryInUse { .. } => tonic::Code::Internal,
            Error::Rpc(status) => return status.clone(),
        };
        bounded_status(code, self.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        error.status()
    }
}
