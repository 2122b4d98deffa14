//! The ELF core Ambulance writes of a guest: which RAM, registers and notes go into it,
//! and how the report's registers map onto the core's.
//!
//! The format itself is [`ambulance_elfcore`]'s. A core of a diagnosed guest holds its RAM
//! (sparse), an `NT_PRSTATUS` per vCPU, the VMCOREINFO text, and — as Ambulance notes —
//! the host's copy of the registration descriptor and its address, the failure and the
//! guest, so that [`Subject::from_core`](crate::Subject::from_core) finds offline what the
//! live diagnosis found. The kernel image's segments are described as virtual windows at
//! their link addresses, so gdb reads globals by symbol.

use std::fs::File;
use std::path::Path;

use ambulance_elfcore::qemu::SEGMENT_NAMES;
use ambulance_elfcore::{
    write_core, write_core_into, CoreInput, ElfNote, PrStatus, RamRange, UserRegs, VirtualWindow,
    NT_AMBULANCE_DESCRIPTOR, NT_AMBULANCE_DESCRIPTOR_GPA, NT_AMBULANCE_FAILURE, NT_AMBULANCE_GUEST,
};
use ambulance_elfcore::{QemuCpuState, NT_QEMU_CPU_STATE, QEMU_NOTE_NAME};
use ambulance_introspect::debuginfo::DebugInfo;
use ambulance_introspect::memory::{LiveMemory, PhysicalMemory};
use ambulance_report::{Hex, Report, SegmentRegister, VcpuRegisters};

/// `cs` and `ss` written for every vCPU (the kernel's flat code and data selectors).
const KERNEL_CS: u64 = 0x10;
const KERNEL_SS: u64 = 0x18;

/// Where an ELF core goes.
pub enum CoreOutput<'a> {
    /// A file to create at this path when the core is written.
    Create(&'a Path),
    /// A file its caller already created at `path`: a sandboxed worker creates its output
    /// before it confines itself, after which it cannot open anything.
    Opened {
        /// The file, empty and open for writing.
        file: File,
        /// Where it is (for messages).
        path: &'a Path,
    },
}

impl CoreOutput<'_> {
    /// Where the core goes.
    pub fn path(&self) -> &Path {
        match self {
            CoreOutput::Create(path) | CoreOutput::Opened { path, .. } => path,
        }
    }
}

/// Writes (and fsyncs) an ELF core of `memory` for `report` to `out`: one `PT_LOAD` per
/// RAM range, `NT_PRSTATUS` per vCPU, VMCOREINFO (the descriptor's, else `vmcoreinfo` —
/// a Linux guest's note text) and the descriptor from the host's copy, the failure and
/// guest as Ambulance notes, and the kernel image's segments as virtual windows when its
/// debug info is known.
pub fn write_core_file(
    out: CoreOutput<'_>,
    memory: &LiveMemory,
    report: &Report,
    debuginfo: Option<&DebugInfo>,
    descriptor: Option<(u64, Vec<u8>)>,
    vmcoreinfo: Option<String>,
) -> Result<(), String> {
    let ram: Vec<RamRange<'_>> = memory
        .ranges()
        .iter()
        .filter_map(|r| {
            memory
                .slice(r.start, r.size as usize)
                .map(|bytes| RamRange {
                    gpa: r.start,
                    bytes,
                })
        })
        .collect();
    let windows = debuginfo
        .map(|d| kernel_windows(d.elf_bytes()))
        .unwrap_or_default();
    let vmcoreinfo = descriptor
        .as_ref()
        .and_then(|(_, bytes)| ambulance_abi::descriptor::parse(bytes).ok())
        .and_then(|d| d.vmcoreinfo)
        .or(vmcoreinfo);
    let direct_map_base = vmcoreinfo
        .as_deref()
        .and_then(|v| ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(v).ok())
        .and_then(|v| v.symbol("direct_map_base"));
    let json =
        |v: serde_json::Result<Vec<u8>>| v.map_err(|e| format!("cannot encode a core note: {e}"));
    let mut notes = Vec::new();
    if let Some((gpa, bytes)) = descriptor {
        notes.push(ElfNote::ambulance(NT_AMBULANCE_DESCRIPTOR, bytes));
        notes.push(ElfNote::ambulance(
            NT_AMBULANCE_DESCRIPTOR_GPA,
            gpa.to_le_bytes().to_vec(),
        ));
    }
    notes.push(ElfNote::ambulance(
        NT_AMBULANCE_FAILURE,
        json(serde_json::to_vec(&report.failure))?,
    ));
    notes.push(ElfNote::ambulance(
        NT_AMBULANCE_GUEST,
        json(serde_json::to_vec(&report.guest))?,
    ));
    let input = CoreInput {
        ram,
        prstatus: report
            .vcpus
            .iter()
            .enumerate()
            .map(|(index, v)| prstatus(index, v))
            .collect(),
        vmcoreinfo,
        notes,
        direct_map_base,
        windows,
        // Never read a sparse RAM file's holes: that would allocate them.
        zero: memory.holes().iter().map(|h| h.start..h.end()).collect(),
    };
    match out {
        CoreOutput::Create(path) => write_core(path, &input),
        CoreOutput::Opened { file, path } => write_core_into(file, path, &input),
    }
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The kernel image's `PT_LOAD` segments as virtual windows (for gdb).
pub fn kernel_windows(elf: &[u8]) -> Vec<VirtualWindow> {
    use goblin::elf::{program_header::PT_LOAD, Elf};
    Elf::parse(elf)
        .map(|e| {
            e.program_headers
                .iter()
                .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
                .map(|p| VirtualWindow {
                    vaddr: p.p_vaddr,
                    paddr: p.p_paddr,
                    size: p.p_memsz,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `NT_PRSTATUS` of the `index`th vCPU: its general-purpose registers, `pr_pid` the
/// vCPU number + 1 (as QEMU writes it), the kernel's selectors, no syscall (`orig_rax`
/// -1).
pub fn prstatus(index: usize, v: &VcpuRegisters) -> PrStatus {
    PrStatus {
        index,
        pid: v.vcpu.wrapping_add(1) as i32,
        regs: UserRegs {
            r15: v.r15.0,
            r14: v.r14.0,
            r13: v.r13.0,
            r12: v.r12.0,
            rbp: v.rbp.0,
            rbx: v.rbx.0,
            r11: v.r11.0,
            r10: v.r10.0,
            r9: v.r9.0,
            r8: v.r8.0,
            rax: v.rax.0,
            rcx: v.rcx.0,
            rdx: v.rdx.0,
            rsi: v.rsi.0,
            rdi: v.rdi.0,
            orig_rax: u64::MAX,
            rip: v.rip.0,
            cs: KERNEL_CS,
            eflags: v.rflags.0,
            rsp: v.rsp.0,
            ss: KERNEL_SS,
            fs_base: v.fs_base.0,
            gs_base: v.gs_base.0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        },
    }
}

/// A core's vCPUs: each `NT_PRSTATUS` ([`vcpu_registers`]) and, when QEMU wrote the core,
/// the `n`th `QEMU` note ([`QemuCpuState`]) for the `n`th: its control registers,
/// segment registers and `MSR_KERNEL_GS_BASE`. A `QEMU` note that does not decode, or
/// whose `rip`/`rsp` disagree with the `NT_PRSTATUS` it is paired with, is not used and
/// is said in `problems`.
pub fn core_vcpus<'a>(
    prstatus: &[PrStatus],
    notes: impl Iterator<Item = ambulance_elfcore::CoreNote<'a>>,
    problems: &mut Vec<String>,
) -> Vec<VcpuRegisters> {
    let mut vcpus: Vec<VcpuRegisters> = prstatus.iter().map(vcpu_registers).collect();
    let states = notes.filter(|n| n.name == QEMU_NOTE_NAME && n.n_type == NT_QEMU_CPU_STATE);
    for (i, note) in states.enumerate() {
        let Some(v) = vcpus.get_mut(i) else {
            problems.push(format!(
                "QEMU CPU-state note {i} has no NT_PRSTATUS to pair with; not used"
            ));
            break;
        };
        match QemuCpuState::parse(note.desc) {
            Ok(s) if s.rip == v.rip.0 && s.rsp() == v.rsp.0 => apply_qemu_state(v, &s),
            Ok(s) => problems.push(format!(
                "QEMU CPU-state note {i} (rip {:#x}, rsp {:#x}) disagrees with NT_PRSTATUS {i} \
                 (rip {}, rsp {}); not used",
                s.rip,
                s.rsp(),
                v.rip,
                v.rsp
            )),
            Err(e) => problems.push(format!("{e}; vCPU {i}'s control registers are unknown")),
        }
    }
    vcpus
}

/// What a `QEMU` note adds to a vCPU's registers.
fn apply_qemu_state(v: &mut VcpuRegisters, s: &QemuCpuState) {
    v.cr0 = Hex(s.cr[0]);
    v.cr2 = Hex(s.cr[2]);
    v.cr3 = Hex(s.cr[3]);
    v.cr4 = Hex(s.cr[4]);
    v.fs_base = Hex(s.fs_base());
    v.gs_base = Hex(s.gs_base());
    v.kernel_gs_base = s.kernel_gs_base.map(Hex);
    v.segments = s
        .segments
        .iter()
        .zip(SEGMENT_NAMES)
        .map(|(seg, name)| SegmentRegister {
            name: name.into(),
            selector: seg.selector,
            base: Hex(seg.base),
            limit: seg.limit,
            flags: seg.flags,
        })
        .collect();
}

/// The report's view of a core's `NT_PRSTATUS`: vCPU number the note's position, activity
/// `unknown`, and the registers a core holds (no control registers).
pub fn vcpu_registers(p: &PrStatus) -> VcpuRegisters {
    let r = &p.regs;
    VcpuRegisters {
        vcpu: p.index as u32,
        activity: "unknown".into(),
        rip: Hex(r.rip),
        rsp: Hex(r.rsp),
        rbp: Hex(r.rbp),
        rflags: Hex(r.eflags),
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
        fs_base: Hex(r.fs_base),
        gs_base: Hex(r.gs_base),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Subject;
    use ambulance_introspect::memory::ElfCore;
    use ambulance_ram::{GuestRam, RamRegion};
    use ambulance_report::{FailureInfo, GuestInfo, ReportId, ToolInfo, SCHEMA_VERSION};

    #[test]
    fn prstatus_puts_registers_where_gdb_looks() {
        let v = VcpuRegisters {
            vcpu: 0,
            rip: Hex(0x1122_3344_5566_7788),
            rsp: Hex(0x99),
            r15: Hex(0x15),
            ..Default::default()
        };
        let b = prstatus(0, &v).encode();
        let reg = |i: usize| u64::from_le_bytes(b[112 + i * 8..120 + i * 8].try_into().unwrap());
        assert_eq!(reg(0), 0x15);
        assert_eq!(reg(16), 0x1122_3344_5566_7788);
        assert_eq!(reg(19), 0x99);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 1);
    }

    #[test]
    fn kernel_windows_of_garbage_are_none() {
        assert!(kernel_windows(b"not an ELF").is_empty());
    }

    /// A core written for a report reads back, through `Subject::from_core`, as the
    /// subject that report was made of.
    #[test]
    fn a_written_core_gives_back_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        let ram_path = dir.path().join("ram");
        let mut ram = vec![0u8; 64 * 4096];
        ram[3 * 4096 + 5] = 0x5a;
        ram[60 * 4096] = 0xa5;
        std::fs::write(&ram_path, &ram).unwrap();
        let file = std::fs::File::open(&ram_path).unwrap();
        let guest_ram =
            GuestRam::new(file, vec![RamRegion::new(0x10_0000, ram.len() as u64, 0)]).unwrap();
        let memory = LiveMemory::map(&guest_ram).unwrap();
        let vcpus: Vec<VcpuRegisters> = (0..2)
            .map(|i| VcpuRegisters {
                vcpu: i,
                activity: "unknown".into(),
                rip: Hex(0xffff_ffff_8000_1000 + u64::from(i)),
                rsp: Hex(0xffff_c900_0000_0ff8),
                rflags: Hex(0x246),
                rax: Hex(42),
                r15: Hex(15),
                gs_base: Hex(0xffff_8880_0fc0_0000),
                ..Default::default()
            })
            .collect();
        let report = Report {
            schema_version: SCHEMA_VERSION,
            id: ReportId::mint("bravo", ambulance_report::now()),
            tool: ToolInfo::current(),
            guest: GuestInfo {
                name: "bravo".into(),
                id: 7,
                generation: 2,
                memory_bytes: ram.len() as u64,
                vcpus: 2,
            },
            failure: FailureInfo {
                cause: "panic".into(),
                detail: "oops".into(),
                time: ambulance_report::timestamp(
                    std::time::SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_millis(1_795_328_595_139),
                ),
                vcpu: Some(1),
                data: Default::default(),
            },
            timeline: vec![],
            vcpus: vcpus.clone(),
            registration: None,
            structures: vec![],
            findings: vec![],
            log: vec![],
            artifacts: Default::default(),
            kernel: None,
        };
        let path = dir.path().join("guest.core");
        let descriptor = vec![0xde, 0xad, 0xbe, 0xef];
        write_core_file(
            CoreOutput::Create(&path),
            &memory,
            &report,
            None,
            Some((0x10_2000, descriptor.clone())),
            Some("OSRELEASE=6.1\n".into()),
        )
        .unwrap();
        let file_bytes = std::fs::metadata(&path).unwrap().len();
        assert!(
            file_bytes < ram.len() as u64,
            "zero pages stored: {file_bytes}"
        );

        let core = ElfCore::open(&path).unwrap();
        let mut b = [0u8; 1];
        core.read(0x10_0000 + 3 * 4096 + 5, &mut b).unwrap();
        assert_eq!(b[0], 0x5a);
        core.read(0x10_0000 + 60 * 4096, &mut b).unwrap();
        assert_eq!(b[0], 0xa5);
        assert_eq!(core.prstatus()[1].pid, 2);
        let subject = Subject::from_core(&core);
        assert_eq!(subject.guest, report.guest);
        assert_eq!(subject.failure, report.failure);
        assert_eq!(subject.vcpus, vcpus);
        assert_eq!(subject.descriptor_bytes, Some(descriptor));
        assert_eq!(subject.descriptor_gpa, Some(0x10_2000));
        assert_eq!(subject.vmcoreinfo.as_deref(), Some("OSRELEASE=6.1\n"));
        assert_eq!(subject.vmcoreinfo_origin.as_deref(), Some("core-note"));
    }
}
