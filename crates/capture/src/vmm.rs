//! Guests of Ambulance's VMM: how its failures, frozen registers and registrations look
//! in a report.

use std::collections::BTreeMap;
use std::time::SystemTime;

use ambulance_report::{FailureInfo, GuestInfo, Hex, VcpuRegisters};
use ambulance_vmm::{FailureCause, FrozenSummary, Guest, VcpuActivity};
use serde_json::json;

use crate::{Capture, Frozen, Registered, Result};

/// Freezes `guest` (blocking until every vCPU stopped) and takes its registers.
pub fn freeze(guest: &Guest) -> Result<Frozen> {
    let was_running = guest.state() == ambulance_vmm::GuestState::Running;
    let frozen = guest.freeze()?;
    Ok(frozen_from(&frozen.summary(), was_running))
}

/// An operator's request, in this process: freezes `guest` now (it stays frozen; the
/// caller resumes or releases it) and captures it with cause `operator`.
pub fn freeze_and_capture(guest: &Guest, detail: &str) -> Result<Capture> {
    let frozen = freeze(guest)?;
    capture(guest, crate::operator_failure(detail), frozen)
}

/// The registers the VMM froze a failed guest with (it freezes before it reports a
/// failure).
pub fn frozen_from(summary: &FrozenSummary, was_running: bool) -> Frozen {
    Frozen {
        vcpus: registers(summary),
        freeze_us: summary.freeze_latency_us,
        was_running,
    }
}

/// Captures a frozen VMM guest: its RAM exported read-only and the host's copy of its
/// descriptor.
pub fn capture(guest: &Guest, failure: FailureInfo, frozen: Frozen) -> Result<Capture> {
    let ram = guest.memory_export()?;
    let cfg = guest.config();
    Ok(Capture {
        guest: GuestInfo {
            name: guest.name().into(),
            id: guest.id(),
            generation: guest.generation(),
            memory_bytes: cfg.memory_bytes,
            vcpus: cfg.vcpus,
        },
        failure,
        vcpus: frozen.vcpus,
        ram,
        registered: guest.registration().map(|r| Registered::Descriptor {
            gpa: r.gpa,
            bytes: r.bytes,
        }),
        freeze_us: frozen.freeze_us,
        was_running: frozen.was_running,
    })
}

/// The report's view of a VMM failure.
pub fn failure_info(
    cause: &FailureCause,
    vcpu: Option<u32>,
    detail: &str,
    time: SystemTime,
) -> FailureInfo {
    let mut data = BTreeMap::new();
    match cause {
        FailureCause::Panic { code, reason } => {
            data.insert("panic_code".into(), json!(code));
            data.insert("panic_reason".into(), json!(reason));
        }
        FailureCause::InternalError {
            suberror,
            hardware_entry_failure_reason,
        } => {
            data.insert("suberror".into(), json!(suberror));
            data.insert(
                "hardware_entry_failure_reason".into(),
                json!(hardware_entry_failure_reason),
            );
        }
        FailureCause::WatchdogStall {
            stalled_for_ms,
            heartbeat,
        } => {
            data.insert("stalled_for_ms".into(), json!(stalled_for_ms));
            data.insert("heartbeat".into(), json!(heartbeat));
        }
        FailureCause::Degraded {
            measured_hz,
            threshold_hz,
            window_ms,
        } => {
            data.insert("measured_hz".into(), json!(measured_hz));
            data.insert("threshold_hz".into(), json!(threshold_hz));
            data.insert("window_ms".into(), json!(window_ms));
        }
        FailureCause::TripleFault | FailureCause::Reset | FailureCause::Operator => {}
    }
    FailureInfo {
        cause: cause.name().into(),
        detail: detail.into(),
        time: ambulance_report::timestamp(time),
        vcpu,
        data,
    }
}

/// The report's view of the frozen registers.
pub fn registers(frozen: &FrozenSummary) -> Vec<VcpuRegisters> {
    frozen
        .vcpus
        .iter()
        .map(|r| VcpuRegisters {
            vcpu: r.index,
            activity: match r.activity {
                VcpuActivity::Running => "running",
                VcpuActivity::Halted => "halted",
                VcpuActivity::Failed => "failed",
            }
            .into(),
            rip: Hex(r.rip),
            rsp: Hex(r.rsp),
            rbp: Hex(r.rbp),
            rflags: Hex(r.rflags),
            rax: Hex(r.rax),
            rbx: Hex(r.rbx),
            rcx: Hex(r.rcx),
            rdx: Hex(r.rdx),
            rsi: Hex(r.rsi),
            rdi: Hex(r.rdi),
            r8: Hex(r.r8),
            r9: Hex(r.r9),
            r10: Hex(r.r10),
            r11: Hex(r.r11),
            r12: Hex(r.r12),
            r13: Hex(r.r13),
            r14: Hex(r.r14),
            r15: Hex(r.r15),
            cr0: Hex(r.cr0),
            cr2: Hex(r.cr2),
            cr3: Hex(r.cr3),
            cr4: Hex(r.cr4),
            efer: Hex(r.efer),
            fs_base: Hex(r.fs_base),
            gs_base: Hex(r.gs_base),
            kernel_gs_base: None,
            segments: Vec::new(),
        })
        .collect()
}
