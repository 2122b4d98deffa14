//! ELF core dumps of a guest, for crash, gdb and drgn.
//!
//! The layout follows what kdump's `/proc/vmcore` and QEMU's `dump-guest-memory` write:
//! an `ET_CORE` file for `EM_X86_64` with one `PT_NOTE` segment (an `NT_PRSTATUS` per
//! vCPU, the `VMCOREINFO` note when the guest provided one, and Ambulance's own notes
//! such as the registration descriptor) and `PT_LOAD` segments whose `p_paddr` is the
//! guest-physical address.
//!
//! All-zero memory is left out of the file: each RAM range is split into runs of pages
//! with data, each written as one `PT_LOAD` whose `p_memsz` also covers the zero pages
//! that follow it (`p_filesz < p_memsz`, which readers treat as zeros, as for `.bss`).
//! Zero runs shorter than [`MIN_HOLE_PAGES`] are written out rather than split on.
//!
//! `p_vaddr` of the RAM segments is `direct_map_base + paddr` when the caller knows the
//! kernel's direct map (Linux's `page_offset_base`), else the physical address. Extra
//! "virtual windows" — typically the kernel image at its link address — are described by
//! additional `PT_LOAD`s that point at the same file bytes, so gdb can read globals by
//! their symbol addresses.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::{Error, VcpuRegisters};

/// Page size used to find zero runs.
pub const PAGE: u64 = 4096;
/// Shortest run of zero pages that is left out of the file.
pub const MIN_HOLE_PAGES: u64 = 16;
/// Name of Ambulance's own notes.
pub const NOTE_NAME: &str = "AMBULANCE";
/// Note type of the registration descriptor (the host's boot-time copy).
pub const NT_AMBULANCE_DESCRIPTOR: u32 = 1;
/// Note type of the descriptor's guest-physical address (a little-endian `u64`).
pub const NT_AMBULANCE_DESCRIPTOR_GPA: u32 = 4;
/// `NT_PRSTATUS`.
pub const NT_PRSTATUS: u32 = 1;
/// Size of x86-64 `struct elf_prstatus`.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` inside it.
pub const PRSTATUS_REG_OFFSET: usize = 112;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const MAX_SEGMENTS: usize = 60_000;

/// One range of guest RAM, as the host sees it.
#[derive(Clone, Copy, Debug)]
pub struct RamRange<'a> {
    /// Guest-physical start.
    pub gpa: u64,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// A virtual mapping to describe with its own `PT_LOAD` (e.g. the kernel image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualWindow {
    /// Virtual start.
    pub vaddr: u64,
    /// Physical start.
    pub paddr: u64,
    /// Length.
    pub size: u64,
}

/// A note to include.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Owner name (`CORE`, `VMCOREINFO`, [`NOTE_NAME`]).
    pub name: String,
    /// Type.
    pub n_type: u32,
    /// Contents.
    pub desc: Vec<u8>,
}

/// What was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreStats {
    /// Size of the file.
    pub file_bytes: u64,
    /// Guest RAM described.
    pub ram_bytes: u64,
    /// Guest RAM actually stored (non-zero runs).
    pub stored_bytes: u64,
    /// `PT_LOAD` segments.
    pub segments: usize,
}

/// What goes into a core.
#[derive(Clone, Debug, Default)]
pub struct CoreInput<'a> {
    /// Guest RAM.
    pub ram: Vec<RamRange<'a>>,
    /// Every vCPU's registers.
    pub vcpus: Vec<VcpuRegisters>,
    /// VMCOREINFO text, if the guest provided one.
    pub vmcoreinfo: Option<String>,
    /// The registration descriptor (host copy) and its guest-physical address, if any.
    pub descriptor: Option<(u64, Vec<u8>)>,
    /// More notes (name, type, contents), e.g. the failure and the guest as JSON.
    pub extra_notes: Vec<Note>,
    /// `p_vaddr = direct_map_base + paddr` for RAM segments, when known.
    pub direct_map_base: Option<u64>,
    /// Extra virtual windows.
    pub windows: Vec<VirtualWindow>,
}

/// One `PT_LOAD`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    paddr: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    /// Index into the RAM ranges and offset in it of the file bytes.
    range: usize,
    range_offset: u64,
    /// File offset (set when laid out; windows reuse their data segment's).
    file_offset: u64,
}

fn is_zero(page: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: reinterpreting initialized bytes as u64 words is always valid; align_to
        // puts any unaligned bytes in head and tail.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Splits the RAM into data runs (each followed by its zero tail).
fn plan_ram(input: &CoreInput<'_>, min_hole: u64) -> Vec<Segment> {
    let mut segs = Vec::new();
    for (ri, r) in input.ram.iter().enumerate() {
        let len = r.bytes.len() as u64;
        let pages = len.div_ceil(PAGE);
        let page = |i: u64| &r.bytes[(i * PAGE) as usize..((i + 1) * PAGE).min(len) as usize];
        let mut i = 0;
        while i < pages {
            // data part: up to the next zero run of at least `min_hole` pages
            let start = i;
            let mut data_end = i;
            let mut j = i;
            while j < pages {
                if is_zero(page(j)) {
                    let mut k = j;
                    while k < pages && is_zero(page(k)) {
                        k += 1;
                    }
                    if k - j >= min_hole || k == pages {
                        data_end = j;
                        j = k;
                        break;
                    }
                    j = k;
                    data_end = j;
                } else {
                    j += 1;
                    data_end = j;
                }
            }
            let seg_end = (j * PAGE).min(len);
            let file_end = (data_end * PAGE).min(len);
            let paddr = r.gpa + start * PAGE;
            segs.push(Segment {
                paddr,
                vaddr: input
                    .direct_map_base
                    .map_or(paddr, |b| b.wrapping_add(paddr)),
                filesz: file_end - start * PAGE,
                memsz: seg_end - start * PAGE,
                range: ri,
                range_offset: start * PAGE,
                file_offset: 0,
            });
            i = j;
        }
    }
    segs
}

/// `PT_LOAD`s for the virtual windows, pointing into the RAM segments' file bytes.
fn plan_windows(input: &CoreInput<'_>, ram: &[Segment]) -> Vec<Segment> {
    let mut out = Vec::new();
    for w in &input.windows {
        let w_end = w.paddr.saturating_add(w.size);
        for s in ram {
            let lo = w.paddr.max(s.paddr);
            let hi = w_end.min(s.paddr + s.memsz);
            if lo >= hi {
                continue;
            }
            let into = lo - s.paddr;
            out.push(Segment {
                paddr: lo,
                vaddr: w.vaddr + (lo - w.paddr),
                filesz: s.filesz.saturating_sub(into).min(hi - lo),
                memsz: hi - lo,
                range: s.range,
                range_offset: s.range_offset + into,
                file_offset: into, // relative until laid out
            });
        }
    }
    out
}

fn note_bytes(out: &mut Vec<u8>, name: &str, n_type: u32, desc: &[u8]) {
    let namesz = name.len() as u32 + 1;
    out.extend_from_slice(&namesz.to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(desc);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The `elf_prstatus` of one vCPU.
pub fn prstatus(v: &VcpuRegisters) -> [u8; PRSTATUS_SIZE] {
    let mut b = [0u8; PRSTATUS_SIZE];
    let pid = v.vcpu + 1;
    b[32..36].copy_from_slice(&pid.to_le_bytes());
    let regs = [
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
        u64::MAX, // orig_rax
        v.rip.0,
        0x10, // cs
        v.rflags.0,
        v.rsp.0,
        0x18, // ss
        v.fs_base.0,
        v.gs_base.0,
        0,
        0,
        0,
        0, // ds es fs gs
    ];
    for (i, r) in regs.iter().enumerate() {
        let at = PRSTATUS_REG_OFFSET + i * 8;
        b[at..at + 8].copy_from_slice(&r.to_le_bytes());
    }
    b
}

/// All notes of a core.
fn notes(input: &CoreInput<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in &input.vcpus {
        note_bytes(&mut out, "CORE", NT_PRSTATUS, &prstatus(v));
    }
    if let Some(text) = &input.vmcoreinfo {
        note_bytes(&mut out, "VMCOREINFO", 0, text.as_bytes());
    }
    if let Some((gpa, d)) = &input.descriptor {
        note_bytes(&mut out, NOTE_NAME, NT_AMBULANCE_DESCRIPTOR, d);
        note_bytes(
            &mut out,
            NOTE_NAME,
            NT_AMBULANCE_DESCRIPTOR_GPA,
            &gpa.to_le_bytes(),
        );
    }
    for n in &input.extra_notes {
        note_bytes(&mut out, &n.name, n.n_type, &n.desc);
    }
    out
}

/// Writes the core to `path`.
pub fn write_core(path: &Path, input: &CoreInput<'_>) -> Result<CoreStats, Error> {
    let io = |source| Error::CoreIo {
        path: path.display().to_string(),
        source,
    };
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let stats = write_core_to(&mut w, input).map_err(|e| match e {
        WriteError::Io(source) => io(source),
        WriteError::Input(msg) => Error::CoreInput(msg),
    })?;
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(stats)
}

/// Why writing failed.
#[derive(Debug)]
pub enum WriteError {
    /// The writer failed.
    Io(std::io::Error),
    /// The input is inconsistent.
    Input(String),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// Writes the core to any writer (sequentially, no seeking).
pub fn write_core_to(w: &mut impl Write, input: &CoreInput<'_>) -> Result<CoreStats, WriteError> {
    let mut min_hole = MIN_HOLE_PAGES;
    let mut ram = plan_ram(input, min_hole);
    let mut windows = plan_windows(input, &ram);
    while ram.len() + windows.len() + 1 > MAX_SEGMENTS {
        min_hole *= 4;
        ram = plan_ram(input, min_hole);
        windows = plan_windows(input, &ram);
    }
    let notes = notes(input);
    let phnum = 1 + ram.len() + windows.len();
    let notes_offset = EHDR_SIZE + PHDR_SIZE * phnum as u64;
    let mut offset = (notes_offset + notes.len() as u64).next_multiple_of(PAGE);
    for s in &mut ram {
        s.file_offset = offset;
        offset += s.filesz;
    }
    for win in &mut windows {
        // Find the RAM segment holding the window's bytes.
        let host = ram
            .iter()
            .find(|s| {
                s.range == win.range
                    && win.range_offset >= s.range_offset
                    && win.range_offset < s.range_offset + s.memsz
            })
            .ok_or_else(|| WriteError::Input("virtual window outside RAM".into()))?;
        win.file_offset = host.file_offset + (win.range_offset - host.range_offset);
    }

    // ELF header.
    let mut h = Vec::with_capacity(EHDR_SIZE as usize);
    h.extend_from_slice(b"\x7fELF");
    h.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(phnum as u16).to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    w.write_all(&h)?;

    let phdr = |p_type: u32,
                flags: u32,
                off: u64,
                vaddr: u64,
                paddr: u64,
                filesz: u64,
                memsz: u64,
                align: u64| {
        let mut p = Vec::with_capacity(PHDR_SIZE as usize);
        p.extend_from_slice(&p_type.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        for v in [off, vaddr, paddr, filesz, memsz, align] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p
    };
    w.write_all(&phdr(
        PT_NOTE,
        0,
        notes_offset,
        0,
        0,
        notes.len() as u64,
        notes.len() as u64,
        4,
    ))?;
    for s in ram.iter().chain(&windows) {
        w.write_all(&phdr(
            PT_LOAD,
            7,
            s.file_offset,
            s.vaddr,
            s.paddr,
            s.filesz,
            s.memsz,
            PAGE,
        ))?;
    }
    w.write_all(&notes)?;
    let mut written = notes_offset + notes.len() as u64;
    let pad = vec![0u8; (ram.first().map_or(written, |s| s.file_offset) - written) as usize];
    w.write_all(&pad)?;
    written += pad.len() as u64;
    let mut stored = 0;
    for s in &ram {
        debug_assert_eq!(written, s.file_offset);
        let bytes = &input.ram[s.range].bytes
            [s.range_offset as usize..(s.range_offset + s.filesz) as usize];
        w.write_all(bytes)?;
        written += s.filesz;
        stored += s.filesz;
    }
    Ok(CoreStats {
        file_bytes: written,
        ram_bytes: input.ram.iter().map(|r| r.bytes.len() as u64).sum(),
        stored_bytes: stored,
        segments: ram.len() + windows.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hex;

    fn parse_phdrs(core: &[u8]) -> Vec<(u32, u64, u64, u64, u64, u64)> {
        let phoff = u64::from_le_bytes(core[32..40].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(core[56..58].try_into().unwrap()) as usize;
        (0..phnum)
            .map(|i| {
                let p = &core[phoff + i * 56..];
                let u = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
                (
                    u32::from_le_bytes(p[0..4].try_into().unwrap()),
                    u(8),
                    u(16),
                    u(24),
                    u(32),
                    u(40),
                )
            })
            .collect()
    }

    /// Reads physical memory back from a core the way a reader does (by p_paddr).
    fn read_back(core: &[u8], pa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (t, off, _vaddr, paddr, filesz, memsz) in parse_phdrs(core) {
            if t != PT_LOAD {
                continue;
            }
            for (i, b) in out.iter_mut().enumerate() {
                let a = pa + i as u64;
                if a >= paddr && a < paddr + memsz {
                    let k = a - paddr;
                    *b = if k < filesz {
                        core[(off + k) as usize]
                    } else {
                        0
                    };
                }
            }
        }
        out
    }

    #[test]
    fn zero_pages_are_left_out_and_data_reads_back() {
        let mut ram = vec![0u8; 256 * PAGE as usize];
        ram[5] = 1; // page 0
        ram[100 * PAGE as usize + 7] = 0xab; // page 100, after a long zero run
        ram[101 * PAGE as usize] = 0xcd;
        let regs = VcpuRegisters {
            vcpu: 1,
            rip: Hex(0xffff_ffff_8020_1234),
            rsp: Hex(0x1000),
            ..Default::default()
        };
        let input = CoreInput {
            ram: vec![RamRange {
                gpa: 0,
                bytes: &ram,
            }],
            vcpus: vec![regs],
            vmcoreinfo: Some("OSRELEASE=test\n".into()),
            descriptor: Some((0x1000, vec![1, 2, 3])),
            extra_notes: vec![],
            direct_map_base: Some(0xffff_8880_0000_0000),
            windows: vec![VirtualWindow {
                vaddr: 0xffff_ffff_8000_0000,
                paddr: 0,
                size: 128 * PAGE,
            }],
        };
        let mut core = Vec::new();
        let stats = write_core_to(&mut core, &input).unwrap();
        assert_eq!(stats.file_bytes, core.len() as u64);
        assert!(
            stats.stored_bytes < 32 * PAGE,
            "zero pages stored: {stats:?}"
        );
        assert!(core.len() < 64 * PAGE as usize);
        assert_eq!(read_back(&core, 0, 16)[5], 1);
        assert_eq!(read_back(&core, 100 * PAGE + 7, 1)[0], 0xab);
        assert_eq!(read_back(&core, 101 * PAGE, 1)[0], 0xcd);
        assert_eq!(read_back(&core, 50 * PAGE, 64), vec![0; 64]);
        let loads: Vec<_> = parse_phdrs(&core)
            .into_iter()
            .filter(|p| p.0 == PT_LOAD)
            .collect();
        assert!(
            loads.iter().any(|p| p.2 == 0xffff_8880_0000_0000),
            "direct-map vaddr"
        );
        assert!(
            loads.iter().any(|p| p.2 == 0xffff_ffff_8000_0000),
            "kernel window vaddr"
        );
        let notes = String::from_utf8_lossy(&core);
        assert!(
            notes.contains("VMCOREINFO")
                && notes.contains("OSRELEASE=test")
                && notes.contains("AMBULANCE")
        );
    }

    #[test]
    fn prstatus_puts_registers_where_gdb_looks() {
        let v = VcpuRegisters {
            vcpu: 0,
            rip: Hex(0x1122_3344_5566_7788),
            rsp: Hex(0x99),
            r15: Hex(0x15),
            ..Default::default()
        };
        let b = prstatus(&v);
        let reg = |i: usize| u64::from_le_bytes(b[112 + i * 8..120 + i * 8].try_into().unwrap());
        assert_eq!(reg(0), 0x15);
        assert_eq!(reg(16), 0x1122_3344_5566_7788);
        assert_eq!(reg(19), 0x99);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 1);
    }
}
