//! Events, failure causes and frozen vCPU state.

use std::time::{Instant, SystemTime};

use kvm_bindings::{kvm_regs, kvm_sregs};
use serde::{Deserialize, Serialize};

/// Something that happened to a guest. All guests of a [`crate::Vmm`] report on one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmmEvent {
    /// The guest's id ([`crate::Guest::id`]).
    pub guest: u64,
    /// The guest's name.
    pub guest_name: String,
    /// The guest's generation (bumped by every restart; 0 for the first boot).
    pub generation: u32,
    /// When the VMM saw it.
    pub time: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// One completed console line (without its line terminator).
    Console {
        /// The line; invalid UTF-8 replaced.
        text: String,
    },
    /// The guest registered a descriptor and the host accepted and copied it.
    Registered {
        /// Guest-physical address of the descriptor.
        gpa: u64,
        /// The build ID, lower-case hex.
        build_id: String,
        /// The names of the roots, in table order.
        roots: Vec<String>,
        /// Whether the descriptor carries VMCOREINFO text.
        vmcoreinfo: bool,
    },
    /// The guest rang the registration doorbell and the host refused the descriptor. The
    /// guest keeps running.
    RegistrationRefused {
        /// The address the guest wrote.
        gpa: u64,
        /// Why, for people.
        reason: String,
    },
    /// The guest failed. It is already frozen (every vCPU stopped, registers captured in
    /// `frozen`) and stays frozen until resumed, restarted or destroyed.
    Failure {
        /// Why.
        cause: FailureCause,
        /// The vCPU that failed, when one did.
        vcpu: Option<u32>,
        /// More detail, for people.
        detail: String,
        /// The registers of every vCPU as frozen.
        frozen: FrozenSummary,
    },
    /// A maintenance image finished its work.
    MaintenanceComplete {
        /// 0 for success, otherwise an error count.
        status: u32,
    },
}

/// Why a guest failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureCause {
    /// The guest rang the panic doorbell.
    Panic {
        /// The reason code (`abi::ports::panic_reason`).
        code: u32,
        /// `abi::ports::panic_reason::name(code)`.
        reason: String,
    },
    /// A triple fault (KVM shutdown exit).
    TripleFault,
    /// KVM could not run the vCPU: an internal error (`suberror` set) or a failed VM entry
    /// (`hardware_entry_failure_reason` set), or another exit the VMM cannot handle.
    InternalError {
        /// `KVM_INTERNAL_ERROR_*`, for internal errors.
        suberror: Option<u32>,
        /// The hardware reason, for failed VM entries.
        hardware_entry_failure_reason: Option<u64>,
    },
    /// The heartbeat counter did not change for the configured watchdog time.
    WatchdogStall {
        /// How long it had not changed.
        stalled_for_ms: u64,
        /// Its value.
        heartbeat: u64,
    },
    /// The heartbeat rate fell below the configured threshold.
    Degraded {
        /// Increments per second over the window.
        measured_hz: f64,
        /// The configured threshold.
        threshold_hz: f64,
        /// The window the rate was measured over.
        window_ms: u64,
    },
    /// The guest asked for a reset through the i8042 controller.
    Reset,
    /// An operator asked for a diagnosis.
    Operator,
}

impl FailureCause {
    /// The snake_case name, as serialized.
    pub fn name(&self) -> &'static str {
        match self {
            FailureCause::Panic { .. } => "panic",
            FailureCause::TripleFault => "triple_fault",
            FailureCause::InternalError { .. } => "internal_error",
            FailureCause::WatchdogStall { .. } => "watchdog_stall",
            FailureCause::Degraded { .. } => "degraded",
            FailureCause::Reset => "reset",
            FailureCause::Operator => "operator",
        }
    }
}

/// A guest's life-cycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Its vCPUs run (some may be halted).
    Running,
    /// Its vCPUs are stopped (or being stopped) by a freeze or a failure.
    Frozen,
    /// It has no VM: destroyed, or its restart failed.
    Stopped,
}

/// What a vCPU was doing when it was frozen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuActivity {
    /// Running guest code; stopped by the freeze.
    #[default]
    Running,
    /// Halted (HLT with no interrupt to wake it).
    Halted,
    /// Stopped for good in this generation by a fatal exit (panic doorbell, triple fault,
    /// internal error, reset request).
    Failed,
}

/// One frozen vCPU: the raw KVM register structures and what it was doing.
///
/// Serializes as [`FrozenRegisters`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(into = "FrozenRegisters")]
pub struct VcpuState {
    /// vCPU index (0 is the boot CPU).
    pub index: u32,
    /// What it was doing.
    pub activity: VcpuActivity,
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
}

impl VcpuState {
    /// The important registers as a plain, serializable struct.
    pub fn registers(&self) -> FrozenRegisters {
        let r = &self.regs;
        let s = &self.sregs;
        FrozenRegisters {
            index: self.index,
            activity: self.activity,
            rip: r.rip,
            rsp: r.rsp,
            rbp: r.rbp,
            rflags: r.rflags,
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            cs: s.cs.selector,
            ss: s.ss.selector,
            fs_base: s.fs.base,
            gs_base: s.gs.base,
            gdt_base: s.gdt.base,
            idt_base: s.idt.base,
        }
    }
}

impl From<VcpuState> for FrozenRegisters {
    fn from(v: VcpuState) -> Self {
        v.registers()
    }
}

/// The important registers of one vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FrozenRegisters {
    /// vCPU index.
    pub index: u32,
    /// What it was doing.
    pub activity: VcpuActivity,
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rflags: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS selector.
    pub cs: u16,
    /// SS selector.
    pub ss: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub gdt_base: u64,
    pub idt_base: u64,
}

/// The state of a frozen guest: every vCPU's registers, captured after it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct FrozenState {
    /// One entry per vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// When the freeze was requested (or the failure detected).
    pub requested_at: Instant,
    /// When the last vCPU stopped.
    pub stopped_at: Instant,
}

impl FrozenState {
    /// The serializable summary carried by a failure event.
    pub fn summary(&self) -> FrozenSummary {
        FrozenSummary {
            vcpus: self.vcpus.iter().map(VcpuState::registers).collect(),
            freeze_latency_us: self
                .stopped_at
                .saturating_duration_since(self.requested_at)
                .as_micros() as u64,
        }
    }

    /// The vCPU with this index.
    pub fn vcpu(&self, index: u32) -> Option<&VcpuState> {
        self.vcpus.iter().find(|v| v.index == index)
    }
}

/// Serializable summary of a [`FrozenState`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenSummary {
    /// Registers of every vCPU, by index.
    pub vcpus: Vec<FrozenRegisters>,
    /// Time from the freeze request to the last vCPU stopping, in microseconds.
    pub freeze_latency_us: u64,
}
