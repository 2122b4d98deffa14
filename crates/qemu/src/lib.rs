//! Talking to QEMU guests: unmodified guests (Linux) that QEMU runs, diagnosed live from
//! the host.
//!
//! * [`qmp`]: an async QMP client (tokio): the greeting and capabilities negotiation,
//!   commands matched to their replies by id, events delivered on their own stream while
//!   commands run, timeouts on connecting and on every command;
//! * [`registers`]: every vCPU's registers from `info registers -a`;
//! * [`layout`]: where guest RAM lies in the `memory-backend-file` QEMU maps (asked of
//!   QEMU itself), the file checked and mapped read-only;
//! * [`registration`]: the Linux agent's registration channel — a Unix socket a QEMU
//!   serial port connects to, and its line protocol.
//!
//! Every fallible function returns this crate's [`Error`], whose messages name the socket,
//! the command or the file involved.

#![forbid(unsafe_code)]

pub mod layout;
pub mod qmp;
pub mod registers;
pub mod registration;

use std::path::PathBuf;
use std::time::Duration;

pub use layout::{ram_regions, Machine, RamFile, RamLayout};
pub use qmp::{ConnectOptions, Qmp, QmpEvent, QmpEvents, RunStatus};
pub use registers::parse_registers;
pub use registration::{AgentListener, AgentRegistration};

/// Everything that can go wrong talking to a QEMU guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The QMP socket could not be connected to.
    #[error("cannot connect to QEMU's QMP socket {}: {source}{}", socket.display(), waited_note(*waited))]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// How long connecting was retried.
        waited: Duration,
        /// The last OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the QMP socket failed.
    #[error("QMP socket {}: {source}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not speak QMP as expected.
    #[error("QMP socket {}: {reason}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The connection ended (QEMU exited or closed it).
    #[error("QMP socket {}: QEMU closed the connection{}", socket.display(), command.as_ref().map(|c| format!(" while `{c}` ran")).unwrap_or_default())]
    Closed {
        /// The socket.
        socket: PathBuf,
        /// The command that was waiting for its reply, if one was.
        command: Option<String>,
    },
    /// A command got no reply in time.
    #[error("QMP socket {}: `{command}` got no reply within {} ms", socket.display(), after.as_millis())]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// QEMU answered a command with an error.
    #[error("QMP socket {}: `{command}` failed: {class}: {desc}", socket.display())]
    Command {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// QMP's error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// A reply did not have the shape the command documents.
    #[error("QMP socket {}: unexpected reply to `{command}`: {reason}", socket.display())]
    Reply {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// `info registers` output could not be read.
    #[error("cannot read vCPU registers from QEMU's `info registers` output: {0}")]
    Registers(String),
    /// The guest's RAM is not in a file Ambulance can map, or not in the one given.
    #[error("guest RAM: {0}")]
    Memory(String),
    /// A guest RAM file could not be opened, checked or mapped.
    #[error("guest RAM file {}: {reason}", path.display())]
    RamFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The registration socket could not be set up.
    #[error("registration socket {}: {reason}", path.display())]
    Registration {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn waited_note(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(
            " (retried for {:.1} s; is QEMU running with -qmp unix:PATH,server=on,wait=off?)",
            waited.as_secs_f64()
        )
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
