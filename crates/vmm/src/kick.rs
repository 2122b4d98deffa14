//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! As in Firecracker: every vCPU thread publishes a pointer to its `kvm_run` structure in a
//! thread-local. The kick is a real-time signal sent to that thread; its handler sets
//! `immediate_exit` in the thread's `kvm_run`. Whether the signal lands while the thread
//! is inside `KVM_RUN` (which then returns `EINTR`) or just before it enters (which then
//! returns `EINTR` at once because `immediate_exit` is set), the thread gets back to its
//! loop and checks its control flags. It works however the guest spins, interrupts off or
//! not.

use std::cell::Cell;
use std::ptr;
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SIGRTMIN};

use crate::error::{Error, Result};

thread_local! {
    /// This thread's `kvm_run`, or null when the thread runs no vCPU.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The kick signal.
pub(crate) fn signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // A const-initialised thread-local without a destructor is a plain TLS access:
    // async-signal-safe, and never fails.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own `kvm_run` mapping, published by
        // `publish` and withdrawn by `withdraw` before the vCPU (and so the mapping) is
        // dropped; this handler runs on the same thread, so the mapping is alive. The
        // write is a single byte the kernel reads on entry to KVM_RUN.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler; once per process, later calls return the first result.
pub(crate) fn install() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), (c_int, vmm_sys_util::errno::Error)>> =
        OnceLock::new();
    (*INSTALLED.get_or_init(|| {
        let sig = signal();
        register_signal_handler(sig, handle_kick).map_err(|e| (sig, e))
    }))
    .map_err(|(signal, source)| Error::SignalHandler { signal, source })
}

/// Publishes this thread's `kvm_run` for the kick handler and makes sure the kick signal
/// is not blocked here.
pub(crate) fn publish(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
    if let Err(e) = unblock_signal(signal()) {
        tracing::warn!(error = %e, "cannot unblock the vCPU kick signal; freeze may be slow");
    }
}

/// Withdraws this thread's `kvm_run` (before the vCPU is dropped).
pub(crate) fn withdraw() {
    KVM_RUN.with(|c| c.set(ptr::null_mut()));
}

/// Sends the kick to a vCPU thread.
///
/// The caller guarantees that `thread` has not exited: vCPU threads deregister (under the
/// same lock the caller holds) before they return.
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live thread of this process (see above); pthread_kill with a
    // valid thread and signal has no other preconditions.
    let rc = unsafe { libc::pthread_kill(thread, signal()) };
    if rc != 0 {
        tracing::warn!(rc, "pthread_kill of a vCPU thread failed");
    }
}
