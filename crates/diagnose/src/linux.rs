//! Linux guests that registered nothing: what [`ambulance_linux`] knows of Linux stands in
//! for a registration, and its results become the report's `kernel` section.
//!
//! * [`load`] gives the program its symbols and types ([`ambulance_linux::sources`]);
//! * [`roots`] gives the roots a registration would have declared: the task list, the
//!   module list and the vmap-area list, so the list and stack validators check them
//!   like any other root (the validators of Linux's own structures, in
//!   `ambulance_validate`, check the rest);
//! * [`kernel_info`] reads the report's `kernel` section: release, dmesg from the printk
//!   ring, the panic message and CPU, the tasks.

use std::sync::Arc;

use ambulance_abi::descriptor::Root;
use ambulance_introspect::debuginfo::{hex, DebugInfo};
use ambulance_introspect::memory::PhysicalMemory;
use ambulance_introspect::program::Program;
use ambulance_introspect::types::dwarf::SourceFrame;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::WalkLimits;
use ambulance_linux::tasks::{read_task, task_list_root, TaskLayout};
use ambulance_linux::{crash, modules, orc, panic_cpu, printk, sources, stack, vmap};
use ambulance_report::{
    CpuInfo, DmesgRecord, Hex, KernelCrash, KernelInfo, KernelSources, Phase, StackFrame,
    StackTrace, TaskInfo, VcpuRegisters,
};
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
/// layout is known; its module list and its list of vmap areas, when the kernel has
/// them.
pub fn roots(program: &Program, limits: WalkLimits, sources: &mut KernelSources) -> Vec<Root> {
    let mut roots = Vec::new();
    match task_list_root(program, limits.max_nodes) {
        Ok(root) => roots.push(root),
        Err(e) => sources.missing.push(format!("task list: {e}")),
    }
    match modules::module_list_root(program, limits.max_nodes) {
        Ok(root) => roots.push(root),
        Err(e) => sources.missing.push(format!("module list: {e}")),
    }
    // The busy vmap areas: one global list, or (Linux 6.9 and later) one per node.
    match vmap::vmap_list_roots(program, limits.max_nodes) {
        Ok(lists) => roots.extend(lists),
        Err(e) => sources.missing.push(format!("vmap area lists: {e}")),
    }
    roots
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
        cpus: Vec::new(),
        sources,
        crash: None,
    }
}

/// Source lines of the kernel's code from its debug info, whose link-time addresses the
/// guest's code runs `slide` bytes away from (KASLR). Remembers the first failed lookup,
/// for the report's `sources.missing`.
pub struct SourceLines<'a> {
    debuginfo: &'a DebugInfo,
    slide: i64,
    first_error: std::cell::RefCell<Option<String>>,
}

impl<'a> SourceLines<'a> {
    /// Lines from `debuginfo`, the kernel's (checked by build ID), slid by `slide`.
    pub fn new(debuginfo: &'a DebugInfo, slide: i64) -> SourceLines<'a> {
        SourceLines {
            debuginfo,
            slide,
            first_error: Default::default(),
        }
    }

    /// The source frames at guest code address `at`, innermost first; none when the
    /// debug info has none (an error is kept to be reported once).
    fn frames(&self, at: u64) -> Vec<SourceFrame> {
        let link = at.wrapping_sub(self.slide as u64);
        match self.debuginfo.source_frames(link) {
            Ok(f) => f,
            Err(e) => {
                self.first_error
                    .borrow_mut()
                    .get_or_insert_with(|| e.to_string());
                Vec::new()
            }
        }
    }
}

/// The report's `kernel` section, from what the validators' context already walked;
/// with `lines`, each kernel frame gets its source line and the functions inlined there.
pub fn kernel_info(
    ctx: &Context<'_>,
    vmcoreinfo: &Vmcoreinfo,
    sources: KernelSources,
    limits: WalkLimits,
    lines: Option<&SourceLines<'_>>,
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
    let panic_message = crash::panic_message(&dmesg);
    let mut crash = crash_info(program, &dmesg, ctx.vcpus);
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
                        stack: None,
                    }),
                    Err(err) => sources
                        .missing
                        .push(format!("task at {:#x}: {err}", e.addr)),
                }
            }
        }
    }
    let cpus = stacks(
        program,
        vmcoreinfo,
        ctx.vcpus,
        &mut tasks,
        started,
        limits,
        lines,
        &mut sources,
    );
    if let Some(e) = lines.and_then(|l| l.first_error.borrow_mut().take()) {
        sources.missing.push(format!("source lines: {e}"));
    }
    if let Some(c) = crash.as_mut() {
        oops_registers_from_stack(program, c, &cpus);
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
        cpus,
        sources,
        crash,
    }
}

/// An oops whose log lost its register dump: the registers of the first full exception
/// frame on the failed CPU's stack (the fault `die()` reported), read from guest memory.
fn oops_registers_from_stack(program: &Program, c: &mut KernelCrash, cpus: &[CpuInfo]) {
    let oops = matches!(
        c.kind.as_str(),
        "null_dereference" | "general_protection_fault" | "bug" | "oops"
    );
    if !oops || c.registers.contains_key("rsp") {
        return;
    }
    let frame = c
        .cpu
        .and_then(|cpu| cpus.iter().find(|x| x.cpu == cpu))
        .and_then(|x| x.stack.as_ref())
        .and_then(|s| s.frames.iter().find(|f| f.regs.is_some()));
    let Some(at) = frame.and_then(|f| f.regs) else {
        return;
    };
    let mut words = [0u8; orc::pt_regs::SIZE as usize];
    if let Err(e) = program.read_virt(at.0, &mut words) {
        c.notes
            .push(format!("the exception frame at {at} is unreadable: {e}"));
        return;
    }
    for (name, w) in orc::pt_regs::NAMES.iter().zip(words.chunks_exact(8)) {
        let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        c.registers.insert((*name).to_string(), Hex(v));
    }
    c.notes.push(format!(
        "registers read from the exception frame (pt_regs) at {at} on CPU {}'s stack",
        c.cpu.unwrap_or(0)
    ));
}

/// Most CPUs whose stacks are read.
const MAX_STACK_CPUS: u32 = 1024;

/// A vCPU's registers in `pt_regs` order, for the unwinder. `cs` is the dumped selector
/// when the source gave one, else what the instruction pointer's half of the address
/// space says.
fn pt_regs_of(v: &VcpuRegisters) -> orc::Registers {
    let cs = v
        .segments
        .iter()
        .find(|s| s.name == "cs")
        .map(|s| u64::from(s.selector))
        .unwrap_or(if v.rip.0 >> 63 == 1 { 0x10 } else { 0x33 });
    orc::Registers([
        v.r15.0,
        v.r14.0,
        v.r13.0,
        v.r12.0,
        v.rbp.0,
        v.rbx.0,
        v.r11.0,
        v.r10.0,
        v.r9.0,
        v.r8.0,
        v.rax.0,
        v.rcx.0,
        v.rdx.0,
        v.rsi.0,
        v.rdi.0,
        u64::MAX,
        v.rip.0,
        cs,
        v.rflags.0,
        v.rsp.0,
        0x18,
    ])
}

/// An unwind as the report shows it, symbolized; with `lines`, each frame in the
/// kernel's own code (not a module's: their DWARF is not here) gets its source line and
/// is preceded by the functions inlined at its address. `saved` says the first frame's
/// address is a return address too (a sleeping task's, saved by the switch).
fn trace(
    program: &Program,
    unwinder: &stack::Unwinder,
    u: &orc::Unwind,
    lines: Option<&SourceLines<'_>>,
    saved: bool,
) -> StackTrace {
    let mut frames = Vec::with_capacity(u.frames.len());
    for (i, f) in u.frames.iter().enumerate() {
        let return_address = (i == 0 && saved)
            || matches!(
                f.source,
                orc::FrameSource::Orc | orc::FrameSource::FramePointer
            );
        let mut frame = StackFrame {
            pc: Hex(f.pc),
            sp: Hex(f.sp),
            symbol: unwinder.symbolize(program, f.pc, return_address),
            via: match f.source {
                orc::FrameSource::Registers => "registers",
                orc::FrameSource::Orc => "orc",
                orc::FrameSource::OrcRegs => "pt_regs",
                orc::FrameSource::FramePointer => "frame_pointer",
            }
            .into(),
            regs: f.regs.map(Hex),
            ..Default::default()
        };
        // A return address is looked up one byte back, in the call.
        let at = f.pc.wrapping_sub(u64::from(return_address));
        let source = match lines {
            Some(l) if !unwinder.modules().any(|m| m.text.contains(&at)) => l.frames(at),
            _ => Vec::new(),
        };
        for s in source {
            let located = StackFrame {
                function: s.function,
                file: s.file,
                line: s.line,
                column: s.column,
                inlined: s.inlined,
                ..frame.clone()
            };
            if s.inlined {
                frames.push(StackFrame {
                    symbol: None,
                    regs: None,
                    ..located
                });
            } else {
                frame = located;
            }
        }
        frames.push(frame);
    }
    StackTrace {
        frames,
        complete: u.end.is_complete(),
        end: u.end.describe(),
    }
}

/// Every CPU's current task and stack (from its vCPU's registers), and every task's
/// stack: a running task's is its CPU's, a sleeping one's is unwound from its saved
/// frame. Bounded by the CPU count, the tasks already read and the time budget.
#[allow(clippy::too_many_arguments)] // the kernel_info's state, passed apart
fn stacks(
    program: &Program,
    vmcoreinfo: &Vmcoreinfo,
    vcpus: &[VcpuRegisters],
    tasks: &mut [TaskInfo],
    started: std::time::Instant,
    limits: WalkLimits,
    lines: Option<&SourceLines<'_>>,
    sources: &mut KernelSources,
) -> Vec<CpuInfo> {
    let Some(release) = vmcoreinfo.osrelease() else {
        sources
            .missing
            .push("stacks: VMCOREINFO gives no kernel release".into());
        return Vec::new();
    };
    let unwinder = match stack::Unwinder::new(program, release) {
        Ok(u) => u,
        Err(e) => {
            sources.missing.push(format!("stacks: {e}"));
            return Vec::new();
        }
    };
    sources
        .missing
        .extend(unwinder.problems().iter().map(|p| format!("stacks: {p}")));
    let layout = TaskLayout::of(program).ok();
    let n = ambulance_linux::nr_cpu_ids(program)
        .unwrap_or(vcpus.len() as u32)
        .min(MAX_STACK_CPUS);
    let mut cpus = Vec::new();
    for cpu in 0..n {
        let mut info = CpuInfo {
            cpu,
            vcpu: vcpu_of_cpu(program, vcpus, cpu),
            ..Default::default()
        };
        match ambulance_linux::current_task(program, cpu) {
            Ok(addr) => {
                info.task = Some(Hex(addr));
                if let Some(Ok(t)) = layout.as_ref().map(|l| read_task(program, l, addr)) {
                    info.pid = Some(t.pid);
                    info.comm = Some(t.comm);
                }
            }
            Err(e) => info.notes.push(format!("current task: {e}")),
        }
        match info.vcpu.and_then(|i| vcpus.iter().find(|v| v.vcpu == i)) {
            Some(v) if v.rip.0 >> 63 == 0 => {
                info.stack = Some(StackTrace {
                    frames: Vec::new(),
                    complete: true,
                    end: format!("running in user mode at {}", v.rip),
                });
            }
            Some(v) => {
                let u = unwinder.unwind_registers(program, pt_regs_of(v));
                info.stack = Some(trace(program, &unwinder, &u, lines, false));
            }
            None => info
                .notes
                .push("no vCPU's GS base is this CPU's per-CPU area: registers unknown".into()),
        }
        cpus.push(info);
    }
    let mut failed = 0usize;
    let mut first_failure = None;
    for (i, t) in tasks.iter_mut().enumerate() {
        if i % 64 == 63 && started.elapsed() > limits.time_budget {
            sources.missing.push(format!(
                "stacks: only {i} of {} tasks unwound before the time ran out",
                tasks.len()
            ));
            break;
        }
        if let Some(c) = cpus.iter().find(|c| c.task == Some(t.address)) {
            t.stack = c.stack.clone();
            continue;
        }
        if t.state == "X" || t.state == "Z" {
            continue;
        }
        match unwinder.unwind_sleeping(program, t.address.0) {
            Ok(u) => t.stack = Some(trace(program, &unwinder, &u, lines, true)),
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("task {} ({}): {e}", t.pid, t.comm));
            }
        }
    }
    if let Some(first) = first_failure {
        sources.missing.push(format!(
            "stacks: {failed} task(s) could not be unwound (the first: {first})"
        ));
    }
    cpus
}

/// The vCPU that ran Linux CPU `cpu`: the one whose GS base (in the kernel) or kernel GS
/// base (in user mode) is that CPU's per-CPU area.
pub fn vcpu_of_cpu(program: &Program, vcpus: &[VcpuRegisters], cpu: u32) -> Option<u32> {
    let base = ambulance_linux::per_cpu_offset(program, cpu).ok()?;
    let mut matching = vcpus
        .iter()
        .filter(|v| v.gs_base.0 == base || v.kernel_gs_base.is_some_and(|k| k.0 == base));
    let first = matching.next()?;
    // Two vCPUs claiming one per-CPU area: neither is trusted.
    matching.next().is_none().then_some(first.vcpu)
}

/// Why the kernel died: the log's account ([`crash::crash`]) with what memory says —
/// the kernel's `panic_cpu`, the task current on that CPU, the vCPU that ran it. `None`
/// when neither the log nor `panic_cpu` shows a failure.
pub fn crash_info(
    program: &Program,
    dmesg: &[printk::PrintkRecord],
    vcpus: &[VcpuRegisters],
) -> Option<KernelCrash> {
    let from_log = crash::crash(dmesg);
    let panicked_on = panic_cpu(program);
    let mut k = match from_log {
        Some(c) => KernelCrash {
            kind: c.kind.name().into(),
            message: c.message,
            panic_message: c.panic_message,
            seq: c.seq,
            cpu: c.cpu,
            vcpu: None,
            pid: c.pid,
            comm: c.comm,
            task: None,
            registers: c
                .registers
                .into_iter()
                .map(|(name, v)| (name, Hex(v)))
                .collect(),
            rip_symbol: c.rip_symbol,
            notes: Vec::new(),
        },
        None => {
            let cpu = panicked_on?;
            KernelCrash {
                kind: crash::CrashKind::Panic.name().into(),
                message: format!("panic_cpu is {cpu}, but the log holds no panic message"),
                cpu: Some(cpu),
                ..Default::default()
            }
        }
    };
    // A panic's CPU is the kernel's own panic_cpu; the log names the CPU that printed
    // the event (for an oops the same; for a hung task, the detector's).
    if let Some(p) = panicked_on.filter(|_| k.panic_message.is_some() || k.kind == "panic") {
        if let Some(c) = k.cpu.filter(|&c| c != p) {
            k.notes.push(format!(
                "the log names CPU {c}, the kernel's panic_cpu is {p}"
            ));
        }
        k.cpu = Some(p);
    }
    let Some(cpu) = k.cpu else {
        return Some(k);
    };
    k.vcpu = vcpu_of_cpu(program, vcpus, cpu);
    // The task: the CPU's current one, when it is the task the log names (an oops that
    // did not panic has let the CPU run other tasks since).
    let layout = TaskLayout::of(program).ok();
    match ambulance_linux::current_task(program, cpu) {
        Ok(addr) => match layout.as_ref().map(|l| read_task(program, l, addr)) {
            Some(Ok(t)) if k.pid.is_none() || k.pid == Some(t.pid) => {
                k.pid = Some(t.pid);
                k.comm = Some(t.comm);
                k.task = Some(Hex(addr));
            }
            Some(Ok(t)) if panicked_on == Some(cpu) => k.notes.push(format!(
                "CPU {cpu}'s current task is {} ({}) at {addr:#x}, the log names PID {}",
                t.pid,
                t.comm,
                k.pid.unwrap_or(0)
            )),
            Some(Ok(_)) => {}
            Some(Err(e)) => k
                .notes
                .push(format!("CPU {cpu}'s current task at {addr:#x}: {e}")),
            None => {}
        },
        Err(e) => k
            .notes
            .push(format!("CPU {cpu}'s current task unknown: {e}")),
    }
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambulance_introspect::memory::RawImage;
    use ambulance_introspect::translate::{PageTableBuilder, Paging};

    const STACK: u64 = 0xffff_c900_0001_0000;
    const STACK_PA: u64 = 0x10_0000;

    /// A program whose one mapped page (at `STACK`) holds `words` from its start.
    fn program(words: &[u64]) -> Program {
        let mut b =
            PageTableBuilder::new(vec![0u8; 0x20_0000], 0x1000, STACK_PA, Paging::Four).unwrap();
        b.map_range(STACK, STACK_PA, 4096, 4096, true, true)
            .unwrap();
        let ram = b.ram_mut();
        for (i, w) in words.iter().enumerate() {
            let pa = STACK_PA as usize + i * 8;
            ram[pa..pa + 8].copy_from_slice(&w.to_le_bytes());
        }
        let root = b.root();
        Program::new(
            Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
            root,
            Paging::Four,
        )
    }

    fn cpu_with_frames(frames: Vec<StackFrame>) -> CpuInfo {
        CpuInfo {
            cpu: 1,
            stack: Some(StackTrace {
                frames,
                complete: true,
                end: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_oops_without_a_logged_register_dump_gets_its_exception_frame() {
        // pt_regs: r15 = 0, r14 = 1, … each word its index; rsp (word 19) a stack value.
        let mut words: Vec<u64> = (0..21).collect();
        words[19] = STACK + 0x800;
        let p = program(&words);
        let frame = |regs: Option<u64>| StackFrame {
            via: if regs.is_some() { "pt_regs" } else { "orc" }.into(),
            regs: regs.map(Hex),
            ..Default::default()
        };
        let cpus = [cpu_with_frames(vec![
            frame(None),
            frame(Some(STACK)),
            frame(None),
        ])];
        let mut c = KernelCrash {
            kind: "null_dereference".into(),
            cpu: Some(1),
            ..Default::default()
        };
        oops_registers_from_stack(&p, &mut c, &cpus);
        assert_eq!(c.registers["r15"], Hex(0));
        assert_eq!(c.registers["rbx"], Hex(5));
        assert_eq!(c.registers["rip"], Hex(16));
        assert_eq!(c.registers["rsp"], Hex(STACK + 0x800));
        assert!(c.notes[0].contains("exception frame"), "{:?}", c.notes);

        // What the kernel printed wins; a bare panic has no registers of its own; an
        // unreadable frame is said, not guessed.
        let mut logged = KernelCrash {
            kind: "oops".into(),
            cpu: Some(1),
            registers: [("rsp".to_string(), Hex(7))].into(),
            ..Default::default()
        };
        oops_registers_from_stack(&p, &mut logged, &cpus);
        assert_eq!(logged.registers.len(), 1);
        let mut panic = KernelCrash {
            kind: "panic".into(),
            cpu: Some(1),
            ..Default::default()
        };
        oops_registers_from_stack(&p, &mut panic, &cpus);
        assert!(panic.registers.is_empty());
        let far = [cpu_with_frames(vec![frame(Some(STACK + 0x10_0000))])];
        let mut c = KernelCrash {
            kind: "bug".into(),
            cpu: Some(1),
            ..Default::default()
        };
        oops_registers_from_stack(&p, &mut c, &far);
        assert!(c.registers.is_empty());
        assert!(c.notes[0].contains("unreadable"), "{:?}", c.notes);
    }
}
