//! CPU state: the CPU that failed, and CPUs that stopped — one among others, all of them
//! together, or the only one.
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
//! * When the guest was diagnosed because its heartbeat stopped and no CPU lags the
//!   others — every CPU stopped together, or there is only one — each vCPU is reported
//!   as stopped, with what its saved registers say it was doing: spinning with
//!   interrupts off, halted with interrupts off (it never wakes), running without
//!   scheduling, or idle waiting for an interrupt that never came. This needs no per-CPU
//!   root: the registers and the heartbeat are enough.

use std::collections::HashMap;

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_introspect::object::MemberLayout;
use ambulance_report::{Address, Finding, FindingKind, Hex, Severity, StructureRef, VcpuRegisters};

use crate::context::RootFindings;
use crate::{Context, Element, Validator};

/// See the module documentation.
pub struct CpuState;

const NAME: &str = "cpu";
/// A lag that counts as stuck when the guest stalled.
const STALL_LAG_NS: u64 = 250_000_000;
/// A lag worth a warning whatever the failure.
const LAG_WARNING_NS: u64 = 2_000_000_000;
/// `RFLAGS.IF`: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

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
        "per-CPU data (array roots whose elements have cpu and current members), and the \
         vCPUs of a guest whose heartbeat stopped"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        percpu_root(ctx).is_some() || (stalled(ctx) && !ctx.vcpus.is_empty())
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        let percpu = percpu_root(ctx);
        let mut stamps = Vec::new();
        let mut by_cpu = Vec::new();
        let mut lagging = 0usize;
        if let Some((root, m_cpu)) = &percpu {
            let elements = ctx.elements(root);
            let cpu_of = |e: &Element| m_cpu.object(ctx.program, e.addr).read_u32().ok();
            let mut found = RootFindings::new(out);
            failed_cpu(ctx, root, &elements.elements, &cpu_of, &mut found);
            stamps = last_switches(ctx, root, &elements.elements, &cpu_of, &mut found);
            lagging = laggards(ctx, root, &stamps, &mut found);
            found.finish(ctx, NAME, &root.name);
            if stalled(ctx) && lagging == 0 {
                let mut pace = ctx.pace();
                by_cpu = elements
                    .elements
                    .iter()
                    .take_while(|_| !pace.stop())
                    .filter_map(|e| Some((cpu_of(e)?, *e)))
                    .collect();
            }
        }
        if stalled(ctx) && lagging == 0 {
            all_stopped(ctx, percpu.as_ref().map(|(r, _)| *r), &by_cpu, &stamps, out);
        }
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

/// What a vCPU's saved registers say it was doing, and how bad that is in a guest whose
/// heartbeat stopped.
fn doing(r: &VcpuRegisters) -> (&'static str, Severity) {
    let interrupts = r.rflags.0 & RFLAGS_IF != 0;
    match (r.activity.as_str(), interrupts) {
        ("halted", false) => (
            "halted with interrupts disabled: nothing can wake it",
            Severity::Critical,
        ),
        ("halted", true) => (
            "idle (halted with interrupts enabled), waiting for an interrupt that never came",
            Severity::Warning,
        ),
        (_, false) => (
            "running with interrupts disabled: spinning",
            Severity::Critical,
        ),
        (_, true) => (
            "running with interrupts enabled, yet not scheduling: looping in the kernel",
            Severity::Critical,
        ),
    }
}

/// The heartbeat stopped and no CPU lags another: every CPU stopped together (or the only
/// one did). Says so for each vCPU, from its registers, at its per-CPU data when known.
fn all_stopped(
    ctx: &Context<'_>,
    percpu: Option<&Root>,
    by_cpu: &[(u32, Element)],
    stamps: &[Stamp],
    out: &mut Vec<Finding>,
) {
    let stalled_ms = ctx
        .failure
        .data
        .get("stalled_for_ms")
        .and_then(|v| v.as_f64())
        .map(|ms| format!(" for {ms} ms"))
        .unwrap_or_default();
    let heartbeat = ctx
        .descriptor
        .and_then(|d| {
            let mut b = [0u8; 8];
            ctx.program.memory().read(d.heartbeat_gpa, &mut b).ok()?;
            Some(format!(" (stuck at {})", u64::from_le_bytes(b)))
        })
        .unwrap_or_default();
    let n = ctx.vcpus.len().max(stamps.len());
    let together = if n <= 1 {
        "the guest's only CPU stopped".to_string()
    } else {
        format!("all {n} CPUs stopped together (none scheduled later than the others)")
    };
    let root_name = percpu.map_or("vcpus", |r| r.name.as_str());
    let regs_of: HashMap<u32, &VcpuRegisters> = ctx.vcpus.iter().map(|r| (r.vcpu, r)).collect();
    let stamp_of: HashMap<u32, &Stamp> = stamps.iter().map(|s| (s.cpu, s)).collect();
    let element_of: HashMap<u32, Element> = by_cpu.iter().copied().collect();
    let mut found = RootFindings::new(out);
    let mut pace = ctx.pace();
    // Every vCPU with registers; per-CPU data only, for CPUs without.
    let mut listed = std::collections::HashSet::new();
    let cpus: Vec<u32> = ctx
        .vcpus
        .iter()
        .map(|r| r.vcpu)
        .chain(stamps.iter().map(|s| s.cpu))
        .filter(|&c| listed.insert(c))
        .collect();
    for cpu in cpus {
        if pace.stop() {
            found.push(ctx.budget_note(NAME, root_name, &format!("CPUs {cpu} and after")));
            break;
        }
        let regs = regs_of.get(&cpu).copied();
        let stamp = stamp_of.get(&cpu).copied();
        let (what, severity) = regs.map_or(
            (
                "not scheduling (its registers were not saved)",
                Severity::Critical,
            ),
            doing,
        );
        let last = stamp
            .map(|s| format!("; its last context switch was at {} ns", s.last_switch_ns))
            .unwrap_or_default();
        let at = regs
            .map(|r| format!(" at RIP {} RSP {}", r.rip, r.rsp))
            .unwrap_or_default();
        let message = format!(
            "CPU {cpu} is stuck: the heartbeat stopped{stalled_ms}{heartbeat} and \
             {together}; it is {what}{at}{last}"
        );
        let expected = "a CPU that keeps scheduling and advancing the heartbeat".to_string();
        let element = element_of.get(&cpu).copied();
        let f = match element {
            Some(e) => ctx.finding(
                NAME,
                severity,
                root_name,
                Some(e.index),
                stamp.map(|_| "last_switch_ns"),
                Some(e.addr),
                expected,
                what.into(),
                message,
            ),
            None => Finding {
                validator: NAME.into(),
                severity,
                kind: FindingKind::Analysis,
                structure: StructureRef {
                    root: root_name.into(),
                    index: Some(cpu as u64),
                    path: None,
                },
                address: Address {
                    virt: regs.map(|r| Hex(r.rip.0)),
                    phys: None,
                },
                expected,
                found: what.into(),
                message,
            },
        };
        found.push(f);
    }
    found.finish(ctx, NAME, root_name);
}
