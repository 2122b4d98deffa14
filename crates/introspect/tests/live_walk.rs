//! On real KVM: boot the test kernel, freeze it, map its RAM read-only, and walk the
//! structures its descriptor declares — the run queue (an intrusive doubly linked list of
//! `Task`s), the task table, the log ring — through the kernel's own page tables. Then
//! copy the RAM to a raw image file, and write it as an ELF core with the vCPUs'
//! registers, and check that the same walk comes out of both.
//!
//! Prints `SKIPPED (no /dev/kvm)` and passes on machines without KVM (fails in CI).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambulance_abi::boot::KERNEL_VIRT_BASE;
use ambulance_abi::descriptor::{root_flags, Descriptor, Root, RootKind};
use ambulance_elfcore::{CoreInput, PrStatus, RamRange, UserRegs};
use ambulance_introspect::memory::{ElfCore, LiveMemory, PhysRange, RawImage};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::walk::{
    check_prev, read_ring, walk_array, walk_list, ListWalk, WalkEnd, WalkLimits,
};
use ambulance_vmm::{FrozenState, GuestConfig, Vmm};

/// `Task::magic` (guest-agent/test-kernel/src/sched.rs).
const TASK_MAGIC: u64 = 0x6b73_6174_7562_6d61;
const TASKS: u32 = 16;

/// `OFFSET(Type.member)=N` and `SIZE(Type)=N` lines of the descriptor's VMCOREINFO text,
/// parsed by hand (the crate's own parser is tested elsewhere).
fn vmcoreinfo_numbers(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

fn root<'a>(d: &'a Descriptor, name: &str) -> &'a Root {
    d.roots
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("descriptor has no root {name}"))
}

struct Walked {
    run_queue: ListWalk,
    tasks: Vec<u64>,
}

/// Walks the run queue and the task table, checking what a healthy kernel guarantees.
fn walk_and_check(prog: &Program, d: &Descriptor, offsets: &HashMap<String, u64>) -> Walked {
    let pid_off = offsets["OFFSET(Task.pid)"];
    let magic_off = offsets["OFFSET(Task.magic)"];
    let limits = WalkLimits::new(1 << 16, Duration::from_secs(5));

    let tasks_root = root(d, "tasks");
    assert_eq!(tasks_root.kind, RootKind::Array);
    assert_eq!(tasks_root.max_count, TASKS);
    assert_eq!(tasks_root.element_size as u64, offsets["SIZE(Task)"]);
    let tasks = walk_array(
        prog,
        tasks_root.address,
        tasks_root.element_size as u64,
        tasks_root.max_count as u64,
        tasks_root.flags & root_flags::POINTER_ELEMENTS != 0,
        limits,
    );
    assert_eq!(tasks.end, WalkEnd::Complete);
    assert_eq!(tasks.elements.len(), TASKS as usize);
    let mut pids = HashSet::new();
    for e in &tasks.elements {
        assert_eq!(e.problem, None);
        assert_eq!(prog.read_u64(e.addr + magic_off).unwrap(), TASK_MAGIC);
        let pid = prog.read_u32(e.addr + pid_off).unwrap();
        assert!((1..=TASKS).contains(&pid), "pid {pid}");
        assert!(pids.insert(pid), "pid {pid} twice");
    }
    let task_addrs: Vec<u64> = tasks.elements.iter().map(|e| e.addr).collect();

    let rq = root(d, "run_queue");
    assert_eq!(rq.kind, RootKind::List);
    assert_eq!(rq.link_offset as u64, offsets["OFFSET(Task.run_list)"]);
    let walk = walk_list(
        prog,
        rq.address,
        rq.flags & root_flags::SINGLY_LINKED != 0,
        limits,
    );
    assert_eq!(walk.end, WalkEnd::Complete, "{walk:?}");
    // Tasks running on a vCPU are off the queue; the others are on it.
    assert!(
        walk.links.len() <= TASKS as usize && walk.links.len() >= TASKS as usize - 2,
        "{} tasks on the run queue",
        walk.links.len()
    );
    let mut seen = HashSet::new();
    for &link in &walk.links {
        let task = link - rq.link_offset as u64;
        assert!(
            task_addrs.contains(&task),
            "{task:#x} is not a task of the table"
        );
        assert_eq!(prog.read_u64(task + magic_off).unwrap(), TASK_MAGIC);
        let pid = prog.read_u32(task + pid_off).unwrap();
        assert!((1..=TASKS).contains(&pid), "pid {pid}");
        assert!(seen.insert(pid), "pid {pid} queued twice");
    }
    assert_eq!(check_prev(prog, rq.address, &walk), vec![]);
    Walked {
        run_queue: walk,
        tasks: task_addrs,
    }
}

#[test]
fn walks_a_frozen_test_kernel_live_from_a_raw_image_and_from_an_elf_core() {
    if !ambulance_testkit::kvm() {
        return;
    }
    let vmm = Vmm::new().expect("/dev/kvm exists but the VMM cannot use it");
    let mut cfg = GuestConfig::new("introspect-live", ambulance_test_kernel::ELF);
    cfg.vcpus = 2;
    cfg.memory_bytes = 64 << 20;
    cfg.cmdline = "fault=none".into();
    let guest = vmm.start(cfg).expect("guest starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let reg = loop {
        if let Some(r) = guest.registration() {
            break r;
        }
        assert!(Instant::now() < deadline, "no registration within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(300));
    let d = &reg.descriptor;
    let offsets = vmcoreinfo_numbers(d.vmcoreinfo.as_deref().expect("VMCOREINFO text"));
    let paging = if d.flags & ambulance_abi::descriptor::FLAG_LA57 != 0 {
        Paging::Five
    } else {
        Paging::Four
    };
    let rq = root(d, "run_queue");

    // Freeze at a moment when nobody holds the run queue lock (a freeze may land in the
    // middle of an insertion, when the prev pointers are briefly inconsistent). The
    // root's `lock` is the address of the lock word itself.
    let mut attempt = 0;
    let (prog, export, frozen) = loop {
        attempt += 1;
        let frozen = guest.freeze().expect("freeze");
        let export = guest.memory_export().expect("memory export");
        let mem = LiveMemory::map(&export).expect("map guest RAM");
        let prog = Program::new(Arc::new(mem), d.page_table_root, paging);
        assert_ne!(rq.lock, 0, "the run queue declares its lock");
        if prog.read_u32(rq.lock).unwrap() == 0 {
            break (prog, export, frozen);
        }
        assert!(
            attempt < 200,
            "the run queue lock was held at 200 freezes in a row"
        );
        guest.resume().expect("resume");
        std::thread::sleep(Duration::from_millis(3));
    };
    assert!(prog.memory().describe().contains("64 MiB"));

    // The kernel image is mapped at KERNEL_VIRT_BASE + physical.
    assert_eq!(
        prog.translate(rq.address).unwrap(),
        rq.address - KERNEL_VIRT_BASE
    );
    let t = prog.translation(rq.address).unwrap();
    assert_eq!(t.page_size, 4096);
    assert!(t.writable && t.nx, "kernel data is RW and NX: {t:?}");

    let live = walk_and_check(&prog, d, &offsets);

    // Task stacks live in the vmalloc area, 4 KiB pages with guard pages below.
    let stack_off = offsets["OFFSET(Task.stack_base)"];
    for &task in &live.tasks {
        let base = prog.read_u64(task + stack_off).unwrap();
        assert!(prog.is_mapped(base));
        assert_eq!(prog.translation(base).unwrap().page_size, 4096);
        assert!(!prog.is_mapped(base - 1), "guard page below {base:#x}");
    }

    // The log ring: records oldest first, consecutive sequence numbers.
    let log = root(d, "log");
    let records = read_ring(
        &prog,
        log.address,
        log.element_size as u64,
        log.max_count as u64,
        log.aux,
        offsets["OFFSET(LogRecord.seq)"],
    )
    .unwrap();
    assert!(!records.is_empty());
    assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    let text_off = offsets["OFFSET(LogRecord.text)"];
    let mut first = vec![0u8; 64];
    prog.read_virt(records[0].1 + text_off, &mut first).unwrap();
    assert!(first.iter().any(|&b| b != 0), "a log record has text");

    // The same RAM as a raw image file gives the identical walk.
    let dir = std::env::temp_dir().join(format!("ambulance-live-walk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ram.img");
    let ranges = prog.memory().ranges();
    assert_eq!(ranges.len(), 1, "64 MiB of RAM is one range");
    assert_eq!(ranges[0].start, 0);
    let mut f = std::fs::File::create(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < ranges[0].size {
        let n = buf.len().min((ranges[0].size - at) as usize);
        prog.memory().read(at, &mut buf[..n]).unwrap();
        f.write_all(&buf[..n]).unwrap();
        at += n as u64;
    }
    drop(f);
    let raw = Program::new(
        Arc::new(RawImage::open(&path, 0).unwrap()),
        d.page_table_root,
        paging,
    );
    let from_file = walk_and_check(&raw, d, &offsets);
    assert_eq!(from_file.run_queue, live.run_queue);
    assert_eq!(from_file.tasks, live.tasks);

    // And as an ELF core, read back through the vCPUs' own CR3.
    let core_path = dir.join("guest.core");
    write_core(
        &core_path,
        &prog,
        &ranges,
        &frozen,
        d.vmcoreinfo.as_deref().unwrap(),
    );
    let core = ElfCore::open(&core_path).unwrap();
    assert_eq!(core.prstatus().len(), 2);
    for p in core.prstatus() {
        let v = frozen.vcpu(p.index as u32).unwrap();
        assert_eq!(p.pid, p.index as i32 + 1);
        assert_eq!(p.regs.rip, v.regs.rip);
        assert_eq!(p.regs.rsp, v.regs.rsp);
        assert_eq!(p.regs.rbx, v.regs.rbx);
        assert_eq!(p.regs.gs_base, v.sregs.gs.base);
    }
    assert_eq!(core.vmcoreinfo(), d.vmcoreinfo.as_deref());
    let cr3 = frozen.vcpu(0).unwrap().sregs.cr3;
    assert_eq!(
        cr3 & !0xfff,
        d.page_table_root,
        "vCPU 0 runs on the kernel's tables"
    );
    let from_core = walk_and_check(&Program::new(Arc::new(core), cr3, paging), d, &offsets);
    assert_eq!(from_core.run_queue, live.run_queue);

    drop(export);
    guest.destroy();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes an ELF core of the guest with `ambulance_elfcore`: an `NT_PRSTATUS` per vCPU,
/// the VMCOREINFO text, and its RAM addressed by `p_paddr`.
fn write_core(
    path: &Path,
    prog: &Program,
    ranges: &[PhysRange],
    frozen: &FrozenState,
    vmcoreinfo: &str,
) {
    let prstatus = frozen
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let r = &v.regs;
            let regs = UserRegs {
                r15: r.r15,
                r14: r.r14,
                r13: r.r13,
                r12: r.r12,
                rbp: r.rbp,
                rbx: r.rbx,
                r11: r.r11,
                r10: r.r10,
                r9: r.r9,
                r8: r.r8,
                rax: r.rax,
                rcx: r.rcx,
                rdx: r.rdx,
                rsi: r.rsi,
                rdi: r.rdi,
                rip: r.rip,
                eflags: r.rflags,
                rsp: r.rsp,
                cs: v.sregs.cs.selector as u64,
                ss: v.sregs.ss.selector as u64,
                fs_base: v.sregs.fs.base,
                gs_base: v.sregs.gs.base,
                ..Default::default()
            };
            PrStatus {
                index,
                pid: v.index as i32 + 1,
                regs,
            }
        })
        .collect();
    let ram = ranges
        .iter()
        .map(|r| RamRange {
            gpa: r.start,
            bytes: prog
                .memory()
                .slice(r.start, r.size as usize)
                .expect("live RAM is contiguous"),
        })
        .collect();
    let input = CoreInput {
        ram,
        prstatus,
        vmcoreinfo: Some(vmcoreinfo.to_string()),
        ..Default::default()
    };
    ambulance_elfcore::write_core(path, &input).unwrap();
}
