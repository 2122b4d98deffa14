//! What each fuzz target does with its input.
//!
//! Every parser of guest- or user-controlled bytes has a target here: a plain function
//! from bytes to nothing, which must return — quickly, without panicking, without
//! exhausting memory — whatever the bytes are, and which checks the invariants the
//! parser promises (a descriptor that parses re-encodes to one that parses equal, a
//! report re-serializes to itself, …) with `assert!`s, so a broken promise is a crash
//! like any other.
//!
//! Two callers:
//!
//! * `fuzz/` (a cargo-fuzz project outside the workspace, built with nightly): one
//!   libFuzzer binary per target, each `fuzz_target!(|data| run(data))`;
//! * this crate's test (`tests/replay.rs`, stable, part of `cargo test --workspace`):
//!   replays every committed seed (`fuzz/seeds/<target>/`) and regression input
//!   (`fuzz/regressions/<target>/`) through the same function, so the targets cannot rot
//!   and a fixed crash stays fixed.
//!
//! [`TARGETS`] lists them; its names are the cargo-fuzz binaries' names.

pub mod image;

use std::fs::File;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ambulance_abi::descriptor;
use ambulance_introspect::memory::{ElfCore, PhysicalMemory, RawImage};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::types::btf::BtfTypes;
use ambulance_introspect::types::dwarf::{DwarfTypes, ElfBytes};
use ambulance_introspect::types::{TypeId, TypeKind, TypeSource};
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use ambulance_introspect::walk::{check_prev, walk_array, walk_list, WalkLimits};
use ambulance_report::Report;
use ambulance_worker_protocol::{Reply, Request};

use image::GuestImage;

/// A target: its name (the cargo-fuzz binary's and the corpus directories') and what it
/// does with one input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("descriptor", descriptor),
    ("vmcoreinfo", vmcoreinfo),
    ("elf_core", elf_core),
    ("page_walk", page_walk),
    ("dwarf", dwarf),
    ("btf", btf),
    ("kallsyms", kallsyms),
    ("printk", printk),
    ("kernel_log", kernel_log),
    ("orc_unwind", orc_unwind),
    ("qmp_registers", qmp_registers),
    ("worker_protocol", worker_protocol),
    ("rules", rules),
    ("report_json", report_json),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

/// The registration descriptor a guest writes into its RAM (`abi::descriptor::parse`).
/// The input is parsed as it is, and again with its checksum made right (so mutations
/// get past the CRC to the fields). Whatever parses re-encodes to bytes that parse equal.
pub fn descriptor(data: &[u8]) {
    let _ = descriptor::declared_size(data);
    let _ = descriptor::check_registration_gpa(u64_at(data, 0));
    let _ = descriptor::parse(data);
    let mut sealed = data.to_vec();
    descriptor::reseal(&mut sealed);
    if let Ok(d) = descriptor::parse(&sealed) {
        for r in &d.roots {
            let _ = (r.spec(), d.root(&r.name));
        }
        let bytes = d.encode().expect("a descriptor that parsed can be encoded");
        let again = descriptor::parse(&bytes).expect("an encoded descriptor parses");
        assert_eq!(again, d, "a descriptor changed through encode and parse");
    }
}

/// VMCOREINFO text, from a guest's note, a registration or a descriptor
/// (`Vmcoreinfo::parse`, `parse_bytes`), and what the host derives from it. Whatever
/// parses prints as text that parses back equal, without problems.
pub fn vmcoreinfo(data: &[u8]) {
    // UTF-8 bytes parse as their text, once; others are refused by `parse_bytes`, and
    // their lossy text is parsed instead.
    let parsed = match std::str::from_utf8(data) {
        Ok(_) => Vmcoreinfo::parse_bytes(data),
        Err(_) => {
            assert!(
                Vmcoreinfo::parse_bytes(data).is_err(),
                "bytes that are not UTF-8 parsed"
            );
            Vmcoreinfo::parse(&String::from_utf8_lossy(data))
        }
    };
    let Ok(v) = parsed else {
        return;
    };
    let _ = (v.osrelease(), v.build_id(), v.page_size(), v.kerneloffset());
    let _ = (
        v.crashtime(),
        v.symbol("init_task"),
        v.link_time_symbol("_stext"),
    );
    let _ = (v.offset("task_struct", "tasks"), v.size("task_struct"));
    let _ = (
        v.length("mem_section"),
        v.number("PG_lru"),
        v.get_raw("OSRELEASE"),
    );
    let _ = v.symbols().count();
    let _ = ambulance_linux::vmcoreinfo::page_table_root(&v);
    let _ = ambulance_linux::vmcoreinfo::paging(&v);
    let _ = ambulance_linux::vmcoreinfo::kaslr_offset(&v);
    let types = v.types();
    for name in ["task_struct", "list_head", "printk_ringbuffer", "u64"] {
        if let Ok(id) = types.find(name) {
            if let Ok(t) = types.get(id) {
                for m in &t.members {
                    let _ = types.get(m.ty);
                }
            }
        }
    }
    let printed = v.to_text();
    let again = Vmcoreinfo::parse(&printed).expect("printed VMCOREINFO parses");
    assert!(
        again.problems().is_empty(),
        "printed VMCOREINFO has problems: {:?}",
        again.problems()
    );
    assert_eq!(
        again.to_text(),
        printed,
        "VMCOREINFO changed through print and parse"
    );
}

/// ELF cores (QEMU's `dump-guest-memory`, kdump, ours): the `elfcore` reader, and
/// introspect's `ElfCore` view of guest-physical memory over it.
pub fn elf_core(data: &[u8]) {
    if let Ok(layout) = ambulance_elfcore::CoreLayout::parse(data) {
        for l in layout.loads() {
            let _ = (l.paddr, l.memsz, l.filesz, l.offset);
        }
        for note in layout.notes(data) {
            let _ = (note.name.len(), note.n_type, note.desc.len());
        }
        let _ = layout.note(data, ambulance_elfcore::NOTE_NAME, 1);
        let _ = layout.prstatus().len();
        let _ = layout.vmcoreinfo().map(str::len);
    }
    let Ok(core) = ElfCore::parse(data) else {
        return;
    };
    let _ = core.prstatus().len();
    let _ = core.vmcoreinfo().map(str::len);
    for note in core.notes() {
        let _ = (note.name.len(), note.n_type, note.desc.len());
    }
    let mut buf = [0u8; 64];
    for r in core.ranges() {
        let _ = core.read(r.start, &mut buf);
        let _ = core.read(r.end().saturating_sub(8), &mut buf);
        let _ = core.slice(r.start, 16);
        let _ = core.slice(r.end().saturating_sub(1), 2);
        let _ = core.file_offset(r.start);
    }
    let _ = core.read(u64::MAX - 4, &mut buf);
}

/// Page tables and linked structures are guest-written: translation and the list and
/// array walks over arbitrary RAM must end, quickly, without panicking.
///
/// Input: 8 bytes of CR3, 1 byte of mode, 8 bytes of list head, then RAM (from
/// guest-physical 0), whose first words double as virtual addresses to translate.
pub fn page_walk(data: &[u8]) {
    if data.len() < 17 {
        return;
    }
    let cr3 = u64_at(data, 0);
    let mode = data[8];
    let head = u64_at(data, 9);
    let ram = data[17..].to_vec();
    let vas: Vec<u64> = (0..ram.len().min(256) / 8)
        .map(|i| u64_at(&ram, i * 8))
        .collect();
    let paging = if mode & 1 == 0 {
        Paging::Four
    } else {
        Paging::Five
    };
    let prog = Program::new(Arc::new(RawImage::from_bytes(ram, 0)), cr3, paging);
    for &va in &vas {
        let _ = prog.translator().translate_uncached(&**prog.memory(), va);
        let _ = prog.translation(va);
        let _ = prog.read_u64(va);
        let _ = prog.is_mapped(va);
        let mut buf = [0u8; 64];
        let _ = prog.read_virt(va, &mut buf);
    }
    let limits = WalkLimits::new(4096, Duration::from_millis(100));
    let w = walk_list(&prog, head, mode & 2 != 0, limits);
    let _ = check_prev(&prog, head, &w);
    let _ = walk_array(&prog, head, 64, 64, mode & 4 != 0, limits);
}

/// Converts the type `id` and, breadth-first, what it refers to: at most `budget` types.
fn exercise_type(src: &dyn TypeSource, id: TypeId, budget: &mut usize) {
    let mut queue = vec![id];
    while let Some(id) = queue.pop() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(t) = src.get(id) else {
            continue;
        };
        match &t.kind {
            TypeKind::Pointer { target: Some(t) } => queue.push(*t),
            TypeKind::Array { element, .. } => queue.push(*element),
            TypeKind::Typedef { target } => queue.push(*target),
            _ => {}
        }
        queue.extend(t.members.iter().map(|m| m.ty));
    }
}

/// Names the type targets look up: the test kernel's, the C fixtures', Linux's.
const TYPE_NAMES: &[&str] = &[
    "Task",
    "ListHead",
    "test_kernel::sched::Task",
    "holder",
    "struct holder",
    "task_struct",
    "struct list_head",
    "union u",
    "enum e",
    "int",
    "u64",
];

/// DWARF in an ELF file (a kernel's debug info: `DwarfTypes`). The input is the file.
pub fn dwarf(data: &[u8]) {
    let Ok(d) = DwarfTypes::new(Arc::new(ElfBytes::Owned(data.to_vec())), "fuzz.elf") else {
        return;
    };
    let mut budget = 256;
    for name in TYPE_NAMES {
        if let Ok(id) = d.find(name) {
            exercise_type(&d, id, &mut budget);
        }
    }
    for name in ["test_kernel::sched::TASKS", "init_task", "global"] {
        if let Ok(v) = d.variable(name) {
            exercise_type(&d, v.ty, &mut budget);
        }
    }
    let _ = d.index_progress();
}

/// BTF, as a kernel carries it (`BtfTypes::parse`; in a guest, `__start_BTF`..).
pub fn btf(data: &[u8]) {
    let Ok(b) = BtfTypes::parse(data.to_vec(), "fuzz") else {
        return;
    };
    let mut budget = 512;
    for name in TYPE_NAMES {
        if let Ok(id) = b.find(name) {
            exercise_type(&b, id, &mut budget);
        }
    }
    for id in 0..b.type_count().min(256) as u64 {
        if budget == 0 {
            break;
        }
        exercise_type(&b, TypeId(id), &mut budget);
    }
}

/// Time and node budgets for the readers of guest tables, as the diagnosis gives them
/// (smaller, so one input costs milliseconds).
fn table_limits() -> WalkLimits {
    WalkLimits::new(1 << 16, Duration::from_millis(500))
}

/// The kernel's compressed kallsyms tables in guest memory (`linux::kallsyms`), located
/// by VMCOREINFO. The input is a [`GuestImage`].
pub fn kallsyms(data: &[u8]) {
    let Some(image) = GuestImage::decode(data) else {
        return;
    };
    let Ok(v) = Vmcoreinfo::parse(&image.text()) else {
        return;
    };
    let program = image.program();
    let Ok(k) = ambulance_linux::kallsyms::Kallsyms::read(&program, &v, table_limits()) else {
        return;
    };
    let _ = (
        k.len(),
        k.is_empty(),
        k.get("_stext"),
        k.type_of("init_task"),
    );
    let mut addrs = Vec::new();
    for s in k.iter().take(64) {
        addrs.push(s.addr);
    }
    for a in addrs {
        let _ = k.lookup_addr(a);
        let _ = k.lookup_addr(a.wrapping_add(1));
    }
    let _ = k.into_symbols();
}

/// The kernel's printk ring in guest memory (`linux::printk::read_log`), its layout from
/// VMCOREINFO. The input is a [`GuestImage`].
pub fn printk(data: &[u8]) {
    let Some(image) = GuestImage::decode(data) else {
        return;
    };
    let Ok(v) = Vmcoreinfo::parse(&image.text()) else {
        return;
    };
    let program = image.program();
    if let Ok(log) = ambulance_linux::printk::read_log(&program, &v, table_limits()) {
        let _ = ambulance_linux::crash::panic_message(&log.records);
        let _ = ambulance_linux::crash::crash(&log.records);
    }
}

/// The kernel's log as lines of text (`linux::crash`): each line a record; the failure
/// found, and its panic message, must be text the records hold.
pub fn kernel_log(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let records: Vec<ambulance_linux::printk::PrintkRecord> = text
        .split('\n')
        .take(4096)
        .enumerate()
        .map(|(i, t)| ambulance_linux::printk::PrintkRecord {
            seq: i as u64,
            timestamp_ns: 0,
            level: 0,
            facility: 0,
            caller_id: 0,
            text: t.to_string(),
        })
        .collect();
    let _ = ambulance_linux::crash::panic_message(&records);
    if let Some(c) = ambulance_linux::crash::crash(&records) {
        assert!(records.iter().any(|r| r.seq == c.seq));
        assert!(text.contains(&c.message));
        if let Some(m) = &c.panic_message {
            assert!(text.contains(m.as_str()));
        }
    }
}

/// The ORC unwinder (`linux::orc`) over a table, registers and a stack all taken from
/// the input: byte 0 the format, byte 1 the entry count; then per entry a `u16` offset
/// into a 64 KiB text and a six-byte entry; then 21 registers; the rest is the stack,
/// at a fixed kernel address. Whatever they hold, the unwind must end within its frame
/// limit.
pub fn orc_unwind(data: &[u8]) {
    use ambulance_linux::orc::{self, OrcTable, OrcVersion, Registers, StackMemory, Start};
    const TEXT: u64 = 0xffff_ffff_8100_0000;
    const STACK: u64 = 0xffff_c900_0000_0000;
    struct Stack<'a>(&'a [u8]);
    impl StackMemory for Stack<'_> {
        fn read_u64(&self, addr: u64) -> Option<u64> {
            let at = usize::try_from(addr.checked_sub(STACK)?).ok()?;
            let b = self.0.get(at..at.checked_add(8)?)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        }
    }
    let Some((&[v, n], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let version = [OrcVersion::V1, OrcVersion::V2, OrcVersion::V3][usize::from(v % 3)];
    let n = usize::from(n);
    let Some((table, rest)) = rest.split_at_checked(n * 8) else {
        return;
    };
    let pairs = table
        .chunks_exact(8)
        .map(|e| {
            let ip = TEXT + u64::from(u16::from_le_bytes([e[0], e[1]]));
            (ip, [e[2], e[3], e[4], e[5], e[6], e[7]])
        })
        .collect();
    let text = std::iter::once(TEXT..TEXT + 0x1_0000).collect();
    let table = OrcTable::from_parts(version, pairs, text);
    let Some((regs, stack)) = rest.split_at_checked(21 * 8) else {
        return;
    };
    let mut r = Registers::default();
    for (slot, w) in r.0.iter_mut().zip(regs.chunks_exact(8)) {
        *slot = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
    }
    let is_text = |a: u64| (TEXT..TEXT + 0x1_0000).contains(&a);
    for start in [
        Start::Registers(r),
        Start::Saved {
            ip: r.ip(),
            sp: r.sp(),
            bp: r.bp(),
            signal: r.cs() & 1 == 1,
        },
    ] {
        let u = orc::unwind(&|ip| table.find(ip), &Stack(stack), start, &is_text, &[]);
        assert!(u.frames.len() <= orc::MAX_FRAMES);
        assert!(u.frames.iter().skip(1).all(|f| is_text(f.pc)));
    }
}

/// QEMU's `info registers -a` text (`qemu::registers::parse_registers`).
pub fn qmp_registers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(vcpus) = ambulance_qemu::parse_registers(&text) {
        for w in vcpus.windows(2) {
            assert!(w[0].vcpu < w[1].vcpu, "vCPUs out of order or repeated");
        }
    }
}

/// A small read-only file standing for a guest's RAM descriptor.
fn ram_file() -> File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let f = tempfile::tempfile().expect("a temporary file");
        f.set_len(1 << 20).expect("a 1 MiB file");
        use std::os::fd::AsRawFd;
        File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .expect("the temporary file, reopened read-only")
    })
    .try_clone()
    .expect("a duplicate descriptor")
}

/// The worker protocol (`ambulance_worker_protocol`): the reading of a frame, the worker's
/// reading of a request and what it checks before diagnosing (the RAM regions against its
/// descriptor, the registration descriptor, VMCOREINFO, then the diagnosis itself over a
/// small RAM file), and the daemon's reading of a reply. Paths in a request
/// (debug info, rules, core) are not followed: they name the host's files.
pub fn worker_protocol(data: &[u8]) {
    if let Ok(frame) = ambulance_worker_protocol::read_frame(&mut &data[..]) {
        assert!(
            frame.len() + 4 <= data.len(),
            "a frame longer than its input"
        );
    }
    if let Ok(mut request) = serde_json::from_slice::<Request>(data) {
        let json = serde_json::to_vec(&request).expect("a request serializes");
        serde_json::from_slice::<Request>(&json).expect("a serialized request parses");
        if let Some(bytes) = &request.subject.descriptor_bytes {
            let _ = descriptor::parse(bytes);
        }
        if let Some(text) = &request.subject.vmcoreinfo {
            let _ = Vmcoreinfo::parse(text);
        }
        request.debuginfo = None;
        request.rules = None;
        request.core_path = None;
        if let Ok(ram) = ambulance_ram::GuestRam::new(ram_file(), request.regions.clone()) {
            let options = ambulance_diagnose::Options {
                debuginfo: None,
                rules: None,
                config: Default::default(),
            };
            if let Ok(report) = ambulance_diagnose::diagnose_ram(
                &ram,
                &request.subject,
                &options,
                request.timeline.clone(),
                None,
            ) {
                assert_eq!(report.id, request.subject.report_id, "the report's id");
                let _ = report.to_json();
            }
        }
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(data) {
        let json = serde_json::to_vec(&reply).expect("a reply serializes");
        serde_json::from_slice::<Reply>(&json).expect("a serialized reply parses");
        if let Reply::Report(report) = reply {
            let _ = ambulance_report::text::render(&report);
        }
    }
}

/// Rule files (`validate::rules::RuleSet::parse`): TOML an operator writes.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(set) = ambulance_validate::rules::RuleSet::parse(&text, "fuzz.toml") {
        let _ = set.rules.len();
    }
}

/// Stored reports (`Report::from_json`: the store, the API's clients): whatever parses
/// re-serializes to JSON that parses equal, and renders as text.
pub fn report_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(report) = Report::from_json(&text) else {
        return;
    };
    let json = report.to_json();
    let again = Report::from_json(&json).expect("a serialized report parses");
    assert_eq!(again, report, "a report changed through JSON");
    let _ = ambulance_report::text::render(&report);
    let _ = report.worst();
}
