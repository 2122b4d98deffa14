//! Ambulance's VMM: runs many small guests at once, in one process, on KVM.
//!
//! Each guest has memfd-backed RAM, one host thread per vCPU and a port-I/O bus with the
//! Ambulance doorbells (`ambulance_abi::ports`): registration, panic, maintenance-complete,
//! a COM1 console and the i8042 reset request. Guests start directly in 64-bit long mode
//! as `ambulance_abi::boot` describes. There is no in-kernel irqchip: guests run with
//! interrupts off, and `HLT` exits to the VMM.
//!
//! What the VMM does for diagnosis:
//!
//! * **Failure events.** A panic doorbell, a triple fault, a KVM internal error or failed
//!   entry, an i8042 reset request, a heartbeat stall (watchdog), a heartbeat rate below
//!   a threshold, or an operator request ([`Guest::fail`]) freeze the guest — every vCPU
//!   stopped and its registers captured — *before* the [`EventKind::Failure`] event is
//!   sent, so the snapshot is consistent. The first failure of a generation wins.
//! * **Freeze and resume** one guest without touching the others ([`Guest::freeze`]): a
//!   real-time signal kicks each vCPU thread out of `KVM_RUN` (see `kick`), promptly
//!   even when the guest spins with interrupts off.
//! * **Read-only memory export** ([`Guest::memory_export`]): an `O_RDONLY` descriptor of
//!   the guest's RAM that can only be mapped `PROT_READ`.
//! * **Registration** of the guest's descriptor, validated and copied at the doorbell
//!   ([`Guest::registration`]).
//!
//! ```no_run
//! # fn main() -> ambulance_vmm::Result<()> {
//! use ambulance_vmm::{GuestConfig, Vmm};
//! let vmm = Vmm::new()?;
//! let events = vmm.events();
//! let kernel = std::fs::read("test-kernel.elf").unwrap();
//! let guest = vmm.start(GuestConfig::new("demo", kernel))?;
//! for event in events.iter() {
//!     println!("{}", serde_json::to_string(&event).unwrap());
//! }
//! # drop(guest); Ok(()) }
//! ```

#![warn(missing_docs)]

mod boot;
mod config;
mod devices;
mod error;
mod event;
mod guest;
mod kick;
mod memory;
mod vcpu;
mod watchdog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

pub use ambulance_abi::ports::RegistrationStatus;
pub use config::{GuestConfig, MAX_MEMORY, MIN_MEMORY, MIN_WATCHDOG};
pub use devices::{AcceptedDescriptor, CONSOLE_LINE_MAX, CONSOLE_LOG_LINES};
pub use error::{Error, Result};
pub use event::{
    EventKind, FailureCause, FrozenRegisters, FrozenState, FrozenSummary, GuestState, VcpuActivity,
    VcpuState, VmmEvent,
};
pub use guest::{Guest, FREEZE_TIMEOUT, WORK_ROOT};

/// How many events may wait in the channel; beyond that new events are dropped (and
/// counted, see [`Vmm::dropped_events`]) rather than stall a vCPU.
pub const EVENT_CAPACITY: usize = 65_536;

/// What every guest of a [`Vmm`] shares.
pub(crate) struct VmmShared {
    pub(crate) kvm: Kvm,
    pub(crate) supported_cpuid: CpuId,
    events: Sender<VmmEvent>,
    dropped: AtomicU64,
}

impl VmmShared {
    /// Sends an event without ever blocking.
    pub(crate) fn emit(&self, event: VmmEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1024) {
                    tracing::warn!(
                        guest = e.guest_name,
                        dropped = n + 1,
                        "event channel full ({EVENT_CAPACITY} events); dropping events — is \
                         anyone reading Vmm::events()?"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The VMM: one `/dev/kvm` handle and one event channel for any number of guests.
pub struct Vmm {
    shared: Arc<VmmShared>,
    events: Receiver<VmmEvent>,
}

static NEXT_GUEST_ID: AtomicU64 = AtomicU64::new(1);

impl Vmm {
    /// Opens `/dev/kvm`, checks that KVM has what this VMM needs, and installs the vCPU
    /// kick signal handler (once per process).
    pub fn new() -> Result<Vmm> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(Error::UnsupportedKvm(format!(
                "KVM API version {api}, this VMM speaks version 12"
            )));
        }
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (
                Cap::ImmediateExit,
                "KVM_CAP_IMMEDIATE_EXIT (needed to kick vCPUs)",
            ),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::UnsupportedKvm(format!("missing {name}")));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| Error::KvmSystem {
                op: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        kick::install()?;
        let (tx, rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
        Ok(Vmm {
            shared: Arc::new(VmmShared {
                kvm,
                supported_cpuid,
                events: tx,
                dropped: AtomicU64::new(0),
            }),
            events: rx,
        })
    }

    /// The events of every guest of this VMM.
    ///
    /// All receivers returned here share one queue: each event goes to exactly one of
    /// them. Receiving blocks; from async code, receive in `spawn_blocking` (or use
    /// `try_recv`/`recv_timeout`).
    pub fn events(&self) -> Receiver<VmmEvent> {
        self.events.clone()
    }

    /// How many events were dropped because the channel was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Builds a guest from `config` and starts all its vCPUs (generation 0).
    pub fn start(&self, config: GuestConfig) -> Result<Guest> {
        config.validate()?;
        let id = NEXT_GUEST_ID.fetch_add(1, Ordering::Relaxed);
        Guest::start(id, config, self.shared.clone())
    }
}

/// Current wall-clock time (one place, for events).
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<super::Vmm>();
        send_sync::<super::Guest>();
        send_sync::<super::VmmEvent>();
        send_sync::<super::FrozenState>();
        send_sync::<ambulance_ram::GuestRam>();
    }
}
