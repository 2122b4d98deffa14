//! The one error type of the fleet crate.

use std::path::PathBuf;

/// Everything that can go wrong in the controller, the agent and the fleet client.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The controller's configuration file is invalid: where and why.
    #[error("invalid configuration {file}: {key}: {reason}")]
    Config {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file or directory operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key, certificate or signing request is unusable.
    #[error("{0}")]
    Pki(String),
    /// The engine (NATS JetStream) failed or could not be reached.
    #[error("engine: {0}")]
    Engine(String),
    /// The controller refused a request (enrolment, renewal): why.
    #[error("refused: {0}")]
    Refused(String),
    /// Something is not there.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state.
    #[error("{0}")]
    Conflict(String),
    /// A request or argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A host did not do what was asked in time.
    #[error("{0}")]
    Unavailable(String),
    /// The host's service failed.
    #[error(transparent)]
    Service(#[from] ambulance_service::ServiceError),
    /// Talking to the controller failed.
    #[error("{0}")]
    Client(String),
    /// The controller answered with an error.
    #[error("the controller answered {status}: {message}")]
    Remote {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
}

impl FleetError {
    /// An I/O error about `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FleetError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// An engine error, with what was being done.
    pub fn engine(what: &str, e: impl std::fmt::Display) -> Self {
        FleetError::Engine(format!("{what}: {e}"))
    }
}

/// Results of this crate.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;
