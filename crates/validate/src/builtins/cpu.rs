//! CPU state: the CPU that failed, and CPUs that stopped scheduling.
//!
//! Per-CPU roots are array roots whose element type has `cpu` and `current` members (the
//! CPU's index and the task it runs).
//!
//! * For a failure on a vCPU (panic, triple fault, internal error, reset) the failed
//!   CPU's per-CPU data is reported with its registers: the failure event said again, at
//!   its place in memory ([`FindingKind::Event`]).
//! * When the element type records the time of the CPU's last context switch
//!   (`last_switch_ns`), a CPU whose last switch lags the others by far is reported as
//!   stuck — Linux's soft-lockup detector, after the fact.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_introspect::object::MemberLayout;
use ambulance_report::{Finding, FindingKind, Severity};

use crate::context::RootFindings;
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

/// Whether the guest was diagnosed because its heartbeat stopped.
fn stalled(ctx: &Context<'_>) -> bool {
    ctx.failure.cause == "watchdog_stall"
}

/// One CPU's per-CPU element and the time of its last context switch.
#[derive(Clone, Copy)]
struct Stamp {
    element: Element,
    cpu: u32,
    last_switch_ns: u64,
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
        let mut found = RootFindings::new(out);
        failed_cpu(ctx, root, &elements.elements, &cpu_of, &mut found);
        let stamps = last_switches(ctx, root, &elements.elements, &cpu_of, &mut found);
        laggards(ctx, root, &stamps, &mut found);
        found.finish(ctx, NAME, &root.name);
    }
}

/// The CPU a failure happened on, at its per-CPU data: the event, said again.
fn failed_cpu(
    ctx: &Context<'_>,
    root: &Root,
    elements: &[Element],
    cpu_of: &dyn Fn(&Element) -> Option<u32>,
    out: &mut RootFindings<'_>,
) {
    let failure = ctx.failure;
    let Some(vcpu) = failure.vcpu else { return };
    if !matches!(
        failure.cause.as_str(),
        "panic" | "triple_fault" | "internal_error" | "reset"
    ) {
        return;
    }
    let mut pace = ctx.pace();
    let Some(e) = elements
        .iter()
        .take_while(|_| !pace.stop())
        .find(|e| cpu_of(e) == Some(vcpu))
    else {
        return;
    };
    let regs = ctx.vcpus.iter().find(|r| r.vcpu == vcpu);
    let panic_line = crate::log::extract(ctx)
        .into_iter()
        .rev()
        .find(|r| r.text.starts_with("Kernel panic"))
        .map(|r| format!(" The kernel said: \"{}\".", r.text))
        .unwrap_or_default();
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

/// Every online CPU's last context switch, when the per-CPU type records it.
fn last_switches(
    ctx: &Context<'_>,
    root: &Root,
    elements: &[Element],
    cpu_of: &dyn Fn(&Element) -> Option<u32>,
    out: &mut RootFindings<'_>,
) -> Vec<Stamp> {
    let Some(m_switch) = ctx.member(&root.type_name, "last_switch_ns") else {
        return Vec::new();
    };
    let m_online = ctx.member(&root.type_name, "online");
    let mut stamps = Vec::new();
    let mut pace = ctx.pace();
    for e in elements {
        if pace.stop() {
            out.push(ctx.budget_note(
                NAME,
                &root.name,
                &format!("the CPUs from element {} on", e.index),
            ));
            break;
        }
        let online = m_online
            .as_ref()
            .map_or(Some(1), |m| m.object(ctx.program, e.addr).read_u32().ok());
        if online != Some(1) {
            continue;
        }
        let ts = m_switch.object(ctx.program, e.addr).read_u64();
        if let (Ok(ts), Some(cpu)) = (ts, cpu_of(e)) {
            stamps.push(Stamp {
                element: *e,
                cpu,
                last_switch_ns: ts,
            });
        }
    }
    stamps
}

/// CPUs whose last context switch lags the newest by far; returns how many.
fn laggards(ctx: &Context<'_>, root: &Root, stamps: &[Stamp], out: &mut RootFindings<'_>) -> usize {
    let Some(newest) = stamps.iter().max_by_key(|s| s.last_switch_ns) else {
        return 0;
    };
    let (limit, severity) = if stalled(ctx) {
        (STALL_LAG_NS, Severity::Critical)
    } else {
        (LAG_WARNING_NS, Severity::Warning)
    };
    let mut n = 0;
    for s in stamps {
        // `newest` is the maximum: no underflow.
        let lag = newest.last_switch_ns - s.last_switch_ns;
        if lag <= limit {
            continue;
        }
        n += 1;
        out.push(ctx.finding(
            NAME,
            severity,
            &root.name,
            Some(s.element.index),
            Some("last_switch_ns"),
            Some(s.element.addr),
            format!(
                "a context switch within {} ms of the other CPUs",
                limit / 1_000_000
            ),
            format!("{} ms behind CPU {}", lag / 1_000_000, newest.cpu),
            format!(
                "CPU {} stopped scheduling: its last context switch was {} ms before CPU \
                 {}'s; it is stuck (spinning, or with interrupts off){}",
                s.cpu,
                lag / 1_000_000,
                newest.cpu,
                ctx.vcpus
                    .iter()
                    .find(|r| r.vcpu == s.cpu)
                    .map(|r| format!(" at RIP {}", r.rip))
                    .unwrap_or_default()
            ),
        ));
    }
    n
}
