//! Linux guests that registered nothing: what [`ambulance_linux`] knows of Linux stands in
//! for a registration, and its results become the report's `kernel` section.
//!
//! * [`load`] gives the program its symbols and types ([`ambulance_linux::sources`]);
//! * [`roots`] gives the roots a registration would have declared: the task list, so
//!   the list and stack validators check it like any other root;
//! * [`kernel_info`] reads the report's `kernel` section: release, dmesg from the printk
//!   ring, the panic message and CPU, the tasks.

use std::sync::Arc;

use ambulance_abi::descriptor::Root;
use ambulance_introspect::debuginfo::{hex, DebugInfo};
use ambulance_introspect::memory::PhysicalMemory;
use ambulance_introspect::program::Program;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;
use ambulance_linux::tasks::{read_task, task_list_root, TaskLayout};
use ambulance_linux::{panic_cpu, printk, sources};
use ambulance_report::{DmesgRecord, Hex, KernelInfo, KernelSources, Phase, TaskInfo};
use ambulance_validate::Context;

pub use ambulance_linux::tasks::TASKS_ROOT;

/// A [`Program`] over a Linux guest's memory from its VMCOREINFO alone
/// ([`ambulance_linux::program`]), with symbols and types as [`load`] finds them. What
/// was missing is in `sources`.
pub fn program(
    memory: Arc<dyn PhysicalMemory>,
    vmcoreinfo: &Vmcoreinfo,
    debuginfo: Option<&DebugInfo>,
    sources: &mut KernelSources,
) -> Result<Program, crate::Error> {
    let program =
        ambulance_linux::program(memory, vmcoreinfo).map_err(|_| crate::Error::NoPageTables)?;
    Ok(load(
        program,
        vmcoreinfo,
        debuginfo,
        WalkLimits::default(),
        sources,
        &mut Vec::new(),
    ))
}

/// Gives `program` the kernel's symbols and types; says in `sources` where they came from
/// and what was missing, and in `timeline` how long each step took.
pub fn load(
    program: Program,
    vmcoreinfo: &Vmcoreinfo,
    debuginfo: Option<&DebugInfo>,
    limits: WalkLimits,
    sources: &mut KernelSources,
    timeline: &mut Vec<Phase>,
) -> Program {
    let (program, used) = sources::load(program, vmcoreinfo, debuginfo, limits);
    timeline.extend(used.phases.iter().map(|(name, took)| Phase {
        name: (*name).into(),
        duration_us: took.as_micros() as u64,
    }));
    let names = |s: &[sources::Source]| s.iter().map(|s| s.name().to_string()).collect::<Vec<_>>();
    sources.symbols.extend(names(&used.symbols));
    sources.types.extend(names(&used.types));
    sources.missing.extend(used.missing);
    program
}

/// The roots a Linux guest would have registered: its task list, when `task_struct`'s
/// layout is known.
pub fn roots(program: &Program, limits: WalkLimits, sources: &mut KernelSources) -> Vec<Root> {
    match task_list_root(program, limits.max_nodes) {
        Ok(root) => vec![root],
        Err(e) => {
            sources.missing.push(format!("task list: {e}"));
            Vec::new()
        }
    }
}

/// The report's `kernel` section with only what VMCOREINFO and the symbols say at once
/// (release, build ID, KASLR offset, panicking CPU): for a diagnosis out of time.
pub fn kernel_identity(
    vmcoreinfo: &Vmcoreinfo,
    program: &Program,
    sources: KernelSources,
) -> KernelInfo {
    KernelInfo {
        release: vmcoreinfo.osrelease().map(str::to_string),
        build_id: vmcoreinfo.build_id().map(hex),
        kaslr_offset: vmcoreinfo.kerneloffset().map(Hex),
        panic_message: None,
        panic_cpu: panic_cpu(program),
        dmesg: Vec::new(),
        dmesg_dropped: 0,
        tasks: Vec::new(),
        sources,
    }
}

/// The report's `kernel` section, from what the validators' context already walked.
pub fn kernel_info(
    ctx: &Context<'_>,
    vmcoreinfo: &Vmcoreinfo,
    sources: KernelSources,
    limits: WalkLimits,
) -> KernelInfo {
    let started = std::time::Instant::now();
    let program = ctx.program;
    let mut sources = sources;
    let (dmesg, dmesg_dropped) = match printk::read_log(program, vmcoreinfo, limits) {
        Ok(log) => {
            sources
                .missing
                .extend(log.problems.iter().map(|p| format!("dmesg: {p}")));
            (log.records, log.dropped)
        }
        Err(e) => {
            sources.missing.push(format!("dmesg: {e}"));
            (Vec::new(), 0)
        }
    };
    let panic_message = printk::panic_message(&dmesg);
    let mut tasks = Vec::new();
    if let Some(root) = ctx.root(TASKS_ROOT) {
        if let Ok(layout) = TaskLayout::of(program) {
            let elements = ctx.elements(root);
            for (i, e) in elements.elements.iter().enumerate() {
                if i % 256 == 255 && started.elapsed() > limits.time_budget {
                    sources.missing.push(format!(
                        "tasks: only {i} of {} read before the time ran out",
                        elements.elements.len()
                    ));
                    break;
                }
                match read_task(program, &layout, e.addr) {
                    Ok(t) => tasks.push(TaskInfo {
                        pid: t.pid,
                        tgid: t.tgid,
                        comm: t.comm,
                        state: t.state.to_string(),
                        address: Hex(t.address),
                    }),
                    Err(err) => sources
                        .missing
                        .push(format!("task at {:#x}: {err}", e.addr)),
                }
            }
        }
    }
    KernelInfo {
        release: vmcoreinfo.osrelease().map(str::to_string),
        build_id: vmcoreinfo.build_id().map(hex),
        kaslr_offset: vmcoreinfo.kerneloffset().map(Hex),
        panic_message,
        panic_cpu: panic_cpu(program),
        dmesg: dmesg
            .into_iter()
            .map(|r| DmesgRecord {
                seq: r.seq,
                timestamp_ns: r.timestamp_ns,
                level: r.level,
                text: r.text,
            })
            .collect(),
        dmesg_dropped,
        tasks,
        sources,
    }
}
