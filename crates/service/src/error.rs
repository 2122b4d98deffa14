//! The one error type of the service crate.

use std::path::PathBuf;

/// Everything that can go wrong in the service, its worker, its store and its client.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration file is invalid: where and why.
    #[error("invalid configuration {file}: {key}: {reason}")]
    Config {
        /// The file (or `<embedded defaults>`).
        file: String,
        /// The key (with its position in the file when known).
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot write", "cannot create", …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report index (redb) failed.
    #[error("report index {}: {reason}", path.display())]
    Index {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A report or its files could not be read or written.
    #[error(transparent)]
    Report(#[from] ambulance_report::Error),
    /// A guest could not be frozen, captured, resumed, restarted or destroyed.
    #[error(transparent)]
    Capture(#[from] ambulance_capture::CaptureError),
    /// The VMM could not do what was asked.
    #[error(transparent)]
    Vmm(#[from] ambulance_vmm::Error),
    /// A diagnosis could not be made.
    #[error("diagnosis failed: {0}")]
    Diagnosis(String),
    /// Something is not there.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (e.g. releasing a guest that is not held).
    #[error("{0}")]
    Conflict(String),
    /// A request or argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Talking to the daemon (or a webhook) failed.
    #[error("{0}")]
    Client(String),
    /// The daemon answered with an error.
    #[error("the daemon answered {status}: {message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
}

impl ServiceError {
    /// An I/O error about `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServiceError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
