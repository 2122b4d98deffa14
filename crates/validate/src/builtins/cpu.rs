//! CPU state: the CPU that failed, and CPUs that stopped scheduling.
//!
//! Per-CPU roots are array roots whose element type has `cpu` and `current` members (the
//! CPU's index and the task it runs). For a failure
//! on a vCPU (panic, triple fault, internal error, reset) the failed CPU's per-CPU data
//! is reported with its registers. When the element type also records the time of the
//! CPU's last context switch (`last_switch_ns`), a CPU whose last switch lags the others
//! by far is reported as stuck — Linux's soft-lockup detector, after the fact.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_introspect::object::MemberLayout;
use ambulance_report::{Finding, FindingKind, Severity};

use super::hex;
use crate::{Context, Element, Validator};

/// See the module documentation.
pub struct CpuState;

const NAME: &str = "cpu";
/// A lag that counts as stuck when the guest stalled.
const STALL_LAG_NS: u64 = 250_000_000;
/// A lag worth a warning whatever the failure.
const LAG_WARNING_NS: u64 = 2_000_000_000;

fn percpu_root<'a>(ctx: &Context<'a>) -> Option<(&'a Root, MemberLayout)> {
    ctx.roots().iter().find_map(|r| {
        (r.kind == RootKind::Array && ctx.member_offset(&r.type_name, "current").is_some())
            .then(|| ctx.member(&r.type_name, "cpu"))
            .flatten()
            .map(|m| (r, m))
    })
}

impl Validator for CpuState {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "per-CPU data (array roots whose elements have cpu and current members)"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        percpu_root(ctx).is_some()
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let Some((root, m_cpu)) = percpu_root(ctx) else {
            return;
        };
        let elements = ctx.elements(root);
        let cpu_of = |e: &Element| m_cpu.object(ctx.program, e.addr).read_u32().ok();
        let failure = ctx.failure;

        if let Some(vcpu) = failure.vcpu {
            if matches!(
                failure.cause.as_str(),
                "panic" | "triple_fault" | "internal_error" | "reset"
            ) {
                if let Some(e) = elements.elements.iter().find(|e| cpu_of(e) == Some(vcpu)) {
                    let regs = ctx.vcpus.iter().find(|r| r.vcpu == vcpu);
                    let panic_line = crate::log::extract(ctx)
                        .into_iter()
                        .rev()
                        .find(|r| r.text.starts_with("Kernel panic"))
                        .map(|r| format!(" The kernel said: \"{}\".", r.text))
                        .unwrap_or_default();
                    // The failure event said again, at the CPU's data: not something
                    // memory analysis found.
                    out.push(
                        ctx.finding(
                            NAME,
                            Severity::Critical,
                            &root.name,
                            Some(e.index),
                            None,
                            Some(e.addr),
                            "a running CPU".into(),
                            failure.cause.clone(),
                            format!(
                                "CPU {vcpu} failed ({}){}: {}.{panic_line}",
                                failure.cause,
                                regs.map(|r| format!(" at RIP {} RSP {}", r.rip, r.rsp))
                                    .unwrap_or_default(),
                                failure.detail
                            ),
                        )
                        .with_kind(FindingKind::Event),
                    );
                }
            }
        }

        let Some(m_switch) = ctx.member(&root.type_name, "last_switch_ns") else {
            return;
        };
        let m_online = ctx.member(&root.type_name, "online");
        let mut stamps = Vec::new();
        for e in elements.elements.iter() {
            let online = m_online
                .as_ref()
                .map_or(Some(1), |m| m.object(ctx.program, e.addr).read_u32().ok());
            if online != Some(1) {
                continue;
            }
            let ts = m_switch.object(ctx.program, e.addr).read_u64();
            if let (Ok(ts), Some(cpu)) = (ts, cpu_of(e)) {
                stamps.push((*e, cpu, ts));
            }
        }
        let Some(&(_, newest_cpu, newest)) = stamps.iter().max_by_key(|s| s.2) else {
            return;
        };
        let stalled = failure.cause == "watchdog_stall";
        for &(e, cpu, ts) in &stamps {
            let lag = newest - ts;
            let (limit, severity) = if stalled {
                (STALL_LAG_NS, Severity::Critical)
            } else {
                (LAG_WARNING_NS, Severity::Warning)
            };
            if lag > limit {
                out.push(ctx.finding(
                    NAME,
                    severity,
                    &root.name,
                    Some(e.index),
                    Some("last_switch_ns"),
                    Some(e.addr),
                    format!(
                        "a context switch within {} ms of the other CPUs",
                        limit / 1_000_000
                    ),
                    format!("{} ms behind CPU {newest_cpu}", lag / 1_000_000),
                    format!(
                        "CPU {cpu} stopped scheduling: its last context switch was {} ms before \
                         CPU {newest_cpu}'s; it is stuck (spinning, or with interrupts off){}",
                        lag / 1_000_000,
                        ctx.vcpus
                            .iter()
                            .find(|r| r.vcpu == cpu)
                            .map(|r| format!(" at RIP {}", r.rip))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let _ = hex;
    }
}
