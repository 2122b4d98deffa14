//! The vCPU thread: run, dispatch exits, park on request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_RESET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{port_in, port_out, Action};
use crate::event::{FailureCause, VcpuActivity};
use crate::guest::{Flow, Instance};
use crate::kick;

/// What a `KVM_RUN` returned, without borrowing the vCPU.
enum Outcome {
    Handled(Action),
    /// `EINTR`/`EAGAIN`: kicked; look at the control flags.
    Interrupted,
    /// `KVM_EXIT_INTERNAL_ERROR`: details are in `kvm_run`.
    InternalError,
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected VM exit reason",
        _ => "unknown",
    }
}

/// The instruction bytes KVM reports with an emulation failure, when it does
/// (`KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`: `data[0]` holds the flags,
/// then one byte of instruction length and up to 15 instruction bytes).
fn failed_instruction(suberror: u32, data: &[u64]) -> Option<Vec<u8>> {
    if suberror != KVM_INTERNAL_ERROR_EMULATION
        || data.len() < 3
        || data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0
    {
        return None;
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let len = (raw[0] as usize).min(15);
    Some(raw[1..1 + len].to_vec())
}

/// Whether an instruction is an SSE/MMX one (after legacy and REX prefixes: `0f` and an
/// opcode from the SSE/MMX ranges), which KVM's instruction emulator does not execute.
fn looks_like_simd(insn: &[u8]) -> bool {
    let mut i = insn
        .iter()
        .position(|b| !matches!(b, 0x66 | 0xf2 | 0xf3 | 0x40..=0x4f))
        .unwrap_or(insn.len());
    if insn.get(i) != Some(&0x0f) {
        // VEX/EVEX-encoded (AVX) instructions.
        return matches!(insn.get(i), Some(0xc4 | 0xc5 | 0x62));
    }
    i += 1;
    matches!(
        insn.get(i),
        Some(0x10..=0x17 | 0x28..=0x2f | 0x50..=0x7f | 0xc2..=0xc6 | 0xd0..=0xff)
    )
}

fn internal_error_detail(index: u32, suberror: u32, data: &[u64]) -> String {
    let mut detail = format!(
        "KVM internal error on vCPU {index}: suberror {suberror} ({})",
        internal_error_name(suberror)
    );
    match failed_instruction(suberror, data) {
        Some(insn) => {
            let hex: Vec<String> = insn.iter().map(|b| format!("{b:02x}")).collect();
            detail.push_str(&format!(", instruction bytes [{}]", hex.join(" ")));
            if looks_like_simd(&insn) {
                detail.push_str(
                    "; this is an SSE/AVX/MMX instruction, which KVM's instruction emulator \
                     cannot execute: on hosts where KVM emulates guest kernel code (no hardware \
                     virtualization, e.g. kvm-pvm) build the guest kernel without SIMD \
                     (soft-float)",
                );
            }
        }
        None => detail.push_str(&format!(", data {data:x?}")),
    }
    detail
}

fn internal(detail: String) -> Action {
    Action::Fatal(
        FailureCause::InternalError {
            suberror: None,
            hardware_entry_failure_reason: None,
        },
        detail,
    )
}

/// The body of vCPU thread `index`.
pub(crate) fn run(inst: Arc<Instance>, index: u32, mut vcpu: VcpuFd) {
    kick::publish(vcpu.get_kvm_run() as *mut kvm_run);
    inst.vcpu_started(index);
    let mut register_lo = 0u32;
    loop {
        if inst.pause.load(Ordering::SeqCst) {
            vcpu.set_kvm_immediate_exit(0);
            match inst.park(index, &vcpu, VcpuActivity::Running) {
                Flow::Continue => continue,
                Flow::Stop => break,
            }
        }
        let outcome = match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    Outcome::Handled(port_out(&inst, index, &mut register_lo, port, data))
                }
                VcpuExit::IoIn(port, data) => {
                    port_in(&inst, index, port, data);
                    Outcome::Handled(Action::Continue)
                }
                VcpuExit::MmioRead(addr, data) => {
                    tracing::trace!(
                        guest = inst.ctx.id,
                        vcpu = index,
                        addr = format_args!("{addr:#x}"),
                        len = data.len(),
                        "MMIO read outside RAM returns all-ones"
                    );
                    data.fill(0xff);
                    Outcome::Handled(Action::Continue)
                }
                VcpuExit::MmioWrite(addr, data) => {
                    tracing::trace!(
                        guest = inst.ctx.id,
                        vcpu = index,
                        addr = format_args!("{addr:#x}"),
                        ?data,
                        "MMIO write outside RAM ignored"
                    );
                    Outcome::Handled(Action::Continue)
                }
                VcpuExit::Hlt => Outcome::Handled(Action::Halt),
                VcpuExit::Shutdown => Outcome::Handled(Action::Fatal(
                    FailureCause::TripleFault,
                    format!("vCPU {index} triple-faulted (KVM shutdown exit)"),
                )),
                VcpuExit::FailEntry(reason, cpu) => Outcome::Handled(Action::Fatal(
                    FailureCause::InternalError {
                        suberror: None,
                        hardware_entry_failure_reason: Some(reason),
                    },
                    format!(
                        "VM entry of vCPU {index} failed on host CPU {cpu}: hardware reason \
                         {reason:#x} (invalid guest state)"
                    ),
                )),
                VcpuExit::InternalError => Outcome::InternalError,
                VcpuExit::SystemEvent(kind, data) if kind == KVM_SYSTEM_EVENT_RESET => {
                    Outcome::Handled(Action::Fatal(
                        FailureCause::Reset,
                        format!("vCPU {index} requested a system reset (KVM system event, data {data:?})"),
                    ))
                }
                VcpuExit::SystemEvent(kind, data) => Outcome::Handled(internal(format!(
                    "vCPU {index}: unexpected KVM system event {kind} (data {data:?})"
                ))),
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => Outcome::Interrupted,
                other => Outcome::Handled(internal(format!(
                    "vCPU {index}: unexpected KVM exit {other:?}"
                ))),
            },
            Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => Outcome::Interrupted,
            Err(e) => Outcome::Handled(internal(format!("KVM_RUN of vCPU {index} failed: {e}"))),
        };
        let action = match outcome {
            Outcome::Handled(a) => a,
            Outcome::Interrupted => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Outcome::InternalError => {
                let run = vcpu.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member the kernel filled in.
                let ie = unsafe { run.__bindgen_anon_1.internal };
                let n = (ie.ndata as usize).min(ie.data.len());
                Action::Fatal(
                    FailureCause::InternalError {
                        suberror: Some(ie.suberror),
                        hardware_entry_failure_reason: None,
                    },
                    internal_error_detail(index, ie.suberror, &ie.data[..n]),
                )
            }
        };
        let flow = match action {
            Action::Continue => Flow::Continue,
            Action::Halt => inst.park(index, &vcpu, VcpuActivity::Halted),
            Action::Fatal(cause, detail) => {
                inst.fail(cause, Some(index), detail);
                inst.park(index, &vcpu, VcpuActivity::Failed)
            }
        };
        if let Flow::Stop = flow {
            break;
        }
    }
    kick::withdraw();
    inst.vcpu_exited(index);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failures_name_the_instruction() {
        // As reported for `movd xmm0, eax; mov eax, 0` on a host that emulates guest code.
        let data = [1, 0xb8c0_6e0f_660f, 0xbb48_c07e_0f66_0000, 0x1000];
        let insn = failed_instruction(KVM_INTERNAL_ERROR_EMULATION, &data).unwrap();
        assert_eq!(insn[..4], [0x66, 0x0f, 0x6e, 0xc0]);
        assert_eq!(insn.len(), 15);
        let d = internal_error_detail(0, KVM_INTERNAL_ERROR_EMULATION, &data);
        assert!(d.contains("instruction bytes [66 0f 6e c0 b8"), "{d}");
        assert!(d.contains("soft-float"), "{d}");
        // No instruction bytes: the raw data is shown.
        let d = internal_error_detail(1, KVM_INTERNAL_ERROR_DELIVERY_EV, &[7, 8]);
        assert!(
            d.contains("event delivery failed") && d.contains("[7, 8]"),
            "{d}"
        );
    }

    #[test]
    fn simd_instructions_are_recognised() {
        assert!(looks_like_simd(&[0x66, 0x0f, 0x6e, 0xc0])); // movd xmm0, eax
        assert!(looks_like_simd(&[0x66, 0x42, 0x0f, 0xc4, 0x04, 0x5f, 0x01])); // pinsrw
        assert!(looks_like_simd(&[0x0f, 0x28, 0xc1])); // movaps
        assert!(looks_like_simd(&[0xc5, 0xf8, 0x77])); // vzeroupper
        assert!(!looks_like_simd(&[0x48, 0xff, 0x03])); // inc qword [rbx]
        assert!(!looks_like_simd(&[0x0f, 0x0b])); // ud2
        assert!(!looks_like_simd(&[0x0f, 0xa2])); // cpuid
        assert!(!looks_like_simd(&[]));
    }
}
