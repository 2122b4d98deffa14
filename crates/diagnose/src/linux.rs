//! Linux guests that registered nothing: what the host knows of Linux stands in for a
//! registration.
//!
//! * [`load`] gives the program its symbols and types, best source first: the `-dbg`
//!   vmlinux (ELF symbols and DWARF) when one was given and its build ID matches; else
//!   kallsyms and BTF read out of guest memory; VMCOREINFO's own symbols and layouts
//!   always back them up. What could not be used is recorded, not fatal.
//! * [`roots`] derives the roots a registration would have declared: the task list
//!   (`init_task.tasks`), so the list and stack validators check it like any other root.
//! * [`kernel_info`] reads the report's `kernel` section: release, dmesg from the printk
//!   ring, the panic message and CPU, the tasks.

use std::sync::Arc;
use std::time::Instant;

use ambulance_abi::descriptor::{root_flags, Root, RootKind};
use ambulance_introspect::debuginfo::{hex, DebugInfo};
use ambulance_introspect::linux::kallsyms::Kallsyms;
use ambulance_introspect::linux::printk;
use ambulance_introspect::linux::tasks::{read_task, task_list_head, TaskLayout};
use ambulance_introspect::memory::PhysicalMemory;
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::types::btf::BtfTypes;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;
use ambulance_report::{DmesgRecord, Hex, KernelInfo, KernelSources, Phase, TaskInfo};
use ambulance_validate::Context;

/// Linux's largest NR_CPUS on x86-64; a `panic_cpu` beyond it is garbage.
const MAX_CPUS: u32 = 8192;

/// The name of the task-list root in findings and "structures walked".
pub const TASKS_ROOT: &str = "init_task.tasks";

/// The physical address of the kernel's page tables: `swapper_pg_dir`'s kernel-image
/// address minus `__START_KERNEL_map`, plus `phys_base` (signed: negative when the kernel
/// runs below where it was linked).
pub fn page_table_root(vmcoreinfo: &Vmcoreinfo) -> Option<u64> {
    let pgd = vmcoreinfo.symbol("swapper_pg_dir")?;
    let phys_base = vmcoreinfo.number("phys_base")?;
    pgd.checked_sub(crate::LINUX_START_KERNEL_MAP)
        .map(|p| p.wrapping_add(phys_base as u64))
}

/// A [`Program`] over a Linux guest's memory from its VMCOREINFO alone: translation
/// through `swapper_pg_dir` (4 or 5 levels as `NUMBER(pgtable_l5_enabled)` says), then
/// symbols and types as [`load`] finds them. What was missing is in `sources`.
pub fn program(
    memory: Arc<dyn PhysicalMemory>,
    vmcoreinfo: &Vmcoreinfo,
    debuginfo: Option<&DebugInfo>,
    sources: &mut KernelSources,
) -> Result<Program, crate::Error> {
    let root = page_table_root(vmcoreinfo).ok_or(crate::Error::NoPageTables)?;
    let paging = if vmcoreinfo.number("pgtable_l5_enabled") == Some(1) {
        Paging::Five
    } else {
        Paging::Four
    };
    let program = Program::new(memory, root, paging).with_vmcoreinfo(vmcoreinfo.clone());
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
/// and what was missing.
pub fn load(
    mut program: Program,
    vmcoreinfo: &Vmcoreinfo,
    debuginfo: Option<&DebugInfo>,
    limits: WalkLimits,
    sources: &mut KernelSources,
    timeline: &mut Vec<Phase>,
) -> Program {
    let mut phase = |name: &str, since: Instant| {
        timeline.push(Phase {
            name: name.into(),
            duration_us: since.elapsed().as_micros() as u64,
        })
    };
    let mut have_types = false;
    let mut have_symbols = false;
    let t = Instant::now();
    if let Some(d) = debuginfo {
        match usable_debuginfo(d, vmcoreinfo) {
            Err(why) => sources.missing.push(why),
            Ok(slide) => {
                match d.symbols_at(slide) {
                    Ok(s) => {
                        program = program.with_symbols(s);
                        sources.symbols.push("dwarf".into());
                        have_symbols = true;
                    }
                    Err(e) => sources.missing.push(format!("debug-info symbols: {e}")),
                }
                match d.types() {
                    Ok(t) => {
                        program = program.with_types(t);
                        sources.types.push("dwarf".into());
                        have_types = true;
                    }
                    Err(e) => sources.missing.push(format!("DWARF: {e}")),
                }
            }
        }
    }
    if have_symbols {
        phase("debuginfo", t);
    }
    if !have_symbols {
        let t = Instant::now();
        match Kallsyms::read(&program, vmcoreinfo, limits) {
            Ok(k) => {
                program = program.with_symbols(k.into_symbols());
                sources.symbols.push("kallsyms".into());
            }
            Err(e) => sources.missing.push(e.to_string()),
        }
        phase("kallsyms", t);
    }
    if !have_types {
        let t = Instant::now();
        let range = program
            .symbol("__start_BTF")
            .and_then(|start| Ok((start, program.symbol("__stop_BTF")?)));
        match range.and_then(|(start, stop)| BtfTypes::from_guest(&program, start, stop)) {
            Ok(btf) => {
                program = program.with_types(Arc::new(btf));
                sources.types.push("btf".into());
            }
            Err(e) => sources.missing.push(format!("BTF: {e}")),
        }
        phase("btf", t);
    }
    sources.symbols.push("vmcoreinfo".into());
    sources.types.push("vmcoreinfo".into());
    program
}

/// The KASLR slide to apply to the debug info's symbols, when it belongs to this kernel;
/// else why it cannot be used.
fn usable_debuginfo(d: &DebugInfo, vmcoreinfo: &Vmcoreinfo) -> Result<i64, String> {
    // Only when both say which build they are; a file without the note is taken on trust.
    if let (Some(guest), Some(_)) = (vmcoreinfo.build_id(), d.build_id()) {
        d.check_build_id(guest)
            .map_err(|e| format!("{e}; it was not used"))?;
    }
    Ok(vmcoreinfo.kerneloffset().unwrap_or(0) as i64)
}

/// The roots a Linux guest would have registered: its task list, when `task_struct`'s
/// layout is known.
pub fn roots(program: &Program, limits: WalkLimits, sources: &mut KernelSources) -> Vec<Root> {
    let layout = match TaskLayout::of(program) {
        Ok(l) => l,
        Err(e) => {
            sources
                .missing
                .push(format!("task list: layout of task_struct unknown: {e}"));
            return Vec::new();
        }
    };
    let head = match task_list_head(program, &layout) {
        Ok(h) => h,
        Err(e) => {
            sources.missing.push(format!("task list: {e}"));
            return Vec::new();
        }
    };
    // Writers of the task list hold tasklist_lock, a qrwlock whose low byte is set
    // while write-held; readers count above it.
    let lock = program.symbol("tasklist_lock").unwrap_or(0);
    vec![Root {
        name: TASKS_ROOT.into(),
        type_name: "task_struct".into(),
        kind: RootKind::List,
        flags: root_flags::LOCK_BYTE,
        address: head,
        element_size: layout.size.min(u32::MAX as u64) as u32,
        link_offset: layout.tasks as u32,
        max_count: limits.max_nodes.min(u32::MAX as u64) as u32,
        aux: 0,
        lock,
        hints: Vec::new(),
    }]
}

/// The report's `kernel` section, from what the validators' context already walked.
pub fn kernel_info(
    ctx: &Context<'_>,
    vmcoreinfo: &Vmcoreinfo,
    sources: KernelSources,
    limits: WalkLimits,
) -> KernelInfo {
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
    // `atomic_t panic_cpu`: PANIC_CPU_INVALID (-1) until some CPU panics.
    let panic_cpu = program
        .symbol("panic_cpu")
        .and_then(|a| program.read_u32(a))
        .ok()
        .filter(|&c| c < MAX_CPUS);
    let mut tasks = Vec::new();
    if let Some(root) = ctx.root(TASKS_ROOT) {
        if let Ok(layout) = TaskLayout::of(program) {
            for e in ctx.elements(root).elements.iter() {
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
        panic_cpu,
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
