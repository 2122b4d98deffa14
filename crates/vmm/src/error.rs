//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong in the VMM. Each message names the guest (where there is
/// one) and says what an operator can check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    OpenKvm(#[source] kvm_ioctls::Error),

    /// The host's KVM lacks something this VMM relies on.
    #[error("the host's KVM is unsuitable: {0}")]
    UnsupportedKvm(String),

    /// A system-level KVM call (not tied to one guest) failed.
    #[error("KVM {op} failed: {source}")]
    KvmSystem {
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },

    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler (signal {signal}): {source}")]
    SignalHandler {
        /// The real-time signal number.
        signal: i32,
        /// The errno.
        #[source]
        source: vmm_sys_util::errno::Error,
    },

    /// The guest configuration is invalid.
    #[error("invalid configuration for guest {guest:?}: {problem}")]
    InvalidConfig {
        /// Guest name.
        guest: String,
        /// What is wrong.
        problem: String,
    },

    /// The kernel image cannot be booted under the Ambulance boot protocol.
    #[error("cannot boot the kernel image of guest {guest:?}: {problem}")]
    BadKernel {
        /// Guest name.
        guest: String,
        /// What is wrong.
        problem: String,
    },

    /// A KVM call for one guest failed.
    #[error("KVM {op} failed for guest {guest:?}: {source}")]
    Kvm {
        /// Guest name.
        guest: String,
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },

    /// Guest RAM could not be set up.
    #[error("cannot set up {size} bytes of RAM for guest {guest:?}: {detail}")]
    Memory {
        /// Guest name.
        guest: String,
        /// Requested size.
        size: u64,
        /// What failed.
        detail: String,
    },

    /// A host I/O operation for one guest failed.
    #[error("{op} for guest {guest:?} failed: {source}")]
    Io {
        /// Guest name.
        guest: String,
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// The guest is stopped (destroyed, or a restart failed); restart it first.
    #[error("guest {guest:?} is stopped (destroy() was called or its last restart failed)")]
    Stopped {
        /// Guest name.
        guest: String,
    },

    /// Not every vCPU stopped within the freeze timeout.
    #[error("guest {guest:?}: only {stopped} of {total} vCPUs stopped within {timeout:?}; a vCPU thread may be stuck in the host kernel")]
    FreezeTimeout {
        /// Guest name.
        guest: String,
        /// vCPUs stopped.
        stopped: u32,
        /// vCPUs in the guest.
        total: u32,
        /// How long we waited.
        timeout: Duration,
    },

    /// A guest-physical range is not (entirely) guest RAM.
    #[error("guest {guest:?}: guest-physical range {gpa:#x}..+{len:#x} is not inside guest RAM")]
    OutOfRam {
        /// Guest name.
        guest: String,
        /// Start of the range.
        gpa: u64,
        /// Length of the range.
        len: u64,
    },

    /// A host thread could not be started.
    #[error("cannot start thread {name:?} for guest {guest:?}: {source}")]
    Spawn {
        /// Guest name.
        guest: String,
        /// The thread's name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
