//! The crate's one error type.

use std::path::PathBuf;

/// Why a core could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The bytes are not an x86-64 ELF core of a machine, or are damaged; `reason` names
    /// the header, segment or note that is wrong.
    #[error("not a usable ELF core: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// Creating, writing or syncing a core file failed.
    #[error("cannot write core file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a core to a stream failed.
    #[error("cannot write core: {0}")]
    Write(#[source] std::io::Error),
    /// What was asked to be written cannot be (a virtual window outside RAM, a note too
    /// large for its 32-bit size field).
    #[error("cannot write core: {0}")]
    Input(String),
}

/// A [`CoreError::Malformed`].
pub(crate) fn malformed(reason: impl Into<String>) -> CoreError {
    CoreError::Malformed {
        reason: reason.into(),
    }
}
