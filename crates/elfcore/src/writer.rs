//! Writing a core, the way kdump's `/proc/vmcore` and QEMU's `dump-guest-memory` lay one
//! out: one `PT_NOTE` segment (an `NT_PRSTATUS` per CPU, the `VMCOREINFO` note when
//! there is one, then the caller's notes) and `PT_LOAD` segments whose `p_paddr` is the
//! guest-physical address.
//!
//! All-zero memory is left out of the file: each RAM range is split into runs of pages
//! with data, each written as one `PT_LOAD` whose `p_memsz` also covers the zero pages
//! that follow it (`p_filesz < p_memsz`, which readers treat as zeros, as for `.bss`).
//! Zero runs shorter than [`MIN_HOLE_PAGES`] are written out rather than split on.
//!
//! Pages the caller knows to be zero without looking ([`CoreInput::zero`]: the holes of a
//! sparse RAM file) are never read: reading a tmpfs or memfd hole through a mapping
//! allocates it, so a core of a large, mostly untouched guest would otherwise cost the
//! host the guest's whole RAM. Their zeros are written from a buffer of our own when
//! they fall inside a data run.
//!
//! `p_vaddr` of the RAM segments is `direct_map_base + paddr` when the caller knows the
//! kernel's direct map (Linux's `page_offset_base`), else the physical address. Extra
//! "virtual windows" — typically the kernel image at its link address — are described by
//! additional `PT_LOAD`s that point at the same file bytes, so gdb can read globals by
//! their symbol addresses.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::Path;

use crate::elf::{EHDR_SIZE, EM_X86_64, ET_CORE, PHDR_SIZE, PT_LOAD, PT_NOTE};
use crate::note::encode_note;
use crate::{
    CoreError, ElfNote, PrStatus, CORE_NOTE_NAME, NT_PRSTATUS, NT_VMCOREINFO, VMCOREINFO_NOTE_NAME,
};

/// Page size used to find zero runs.
pub const PAGE: u64 = 4096;
/// Shortest run of zero pages that is left out of the file.
pub const MIN_HOLE_PAGES: u64 = 16;
/// Most program headers written (well under `PN_XNUM`); zero runs are left in the file,
/// coarser and coarser, until the segments fit.
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
    /// One `NT_PRSTATUS` note per CPU, written in this order.
    pub prstatus: Vec<PrStatus>,
    /// VMCOREINFO text, if the guest provided one.
    pub vmcoreinfo: Option<String>,
    /// More notes, after the registers and VMCOREINFO (e.g. Ambulance's own).
    pub notes: Vec<ElfNote>,
    /// `p_vaddr = direct_map_base + paddr` for RAM segments, when known.
    pub direct_map_base: Option<u64>,
    /// Extra virtual windows.
    pub windows: Vec<VirtualWindow>,
    /// Guest-physical ranges known to hold only zeros (a sparse RAM file's holes), in any
    /// order: never read, written as zeros where a data run spans them.
    pub zero: Vec<Range<u64>>,
}

/// The known-zero ranges, sorted and merged, asked page by page.
struct KnownZero(Vec<Range<u64>>);

impl KnownZero {
    fn new(ranges: &[Range<u64>]) -> KnownZero {
        let mut v: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
        v.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        KnownZero(merged)
    }

    /// Whether `[gpa, gpa + len)` lies wholly in one known-zero range.
    fn covers(&self, gpa: u64, len: u64) -> bool {
        let i = self.0.partition_point(|r| r.end <= gpa);
        self.0
            .get(i)
            .is_some_and(|r| r.start <= gpa && gpa.saturating_add(len) <= r.end)
    }

    /// The known-zero parts of `[start, end)`, ascending.
    fn within(&self, start: u64, end: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        let i = self.0.partition_point(|r| r.end <= start);
        self.0[i..]
            .iter()
            .take_while(move |r| r.start < end)
            .map(move |r| r.start.max(start)..r.end.min(end))
    }
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

/// Whether a page holds only zeros (in 64-byte blocks the compiler vectorizes).
fn is_zero(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Splits the RAM into data runs (each followed by its zero tail).
fn plan_ram(input: &CoreInput<'_>, known: &KnownZero, min_hole: u64) -> Vec<Segment> {
    let mut segs = Vec::new();
    for (ri, r) in input.ram.iter().enumerate() {
        let len = r.bytes.len() as u64;
        let pages = len.div_ceil(PAGE);
        let zero_page = |i: u64| {
            let (lo, hi) = (i * PAGE, ((i + 1) * PAGE).min(len));
            known.covers(r.gpa.saturating_add(lo), hi - lo)
                || is_zero(&r.bytes[lo as usize..hi as usize])
        };
        let mut i = 0;
        while i < pages {
            // data part: up to the next zero run of at least `min_hole` pages
            let start = i;
            let mut data_end = i;
            let mut j = i;
            while j < pages {
                if zero_page(j) {
                    let mut k = j;
                    while k < pages && zero_page(k) {
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

/// All notes of a core.
fn notes(input: &CoreInput<'_>) -> Result<Vec<u8>, CoreError> {
    let mut out = Vec::new();
    for p in &input.prstatus {
        encode_note(&mut out, CORE_NOTE_NAME, NT_PRSTATUS, &p.encode())?;
    }
    if let Some(text) = &input.vmcoreinfo {
        encode_note(
            &mut out,
            VMCOREINFO_NOTE_NAME,
            NT_VMCOREINFO,
            text.as_bytes(),
        )?;
    }
    for n in &input.notes {
        encode_note(&mut out, &n.name, n.n_type, &n.desc)?;
    }
    Ok(out)
}

/// Writes the core to `path` and syncs it.
pub fn write_core(path: &Path, input: &CoreInput<'_>) -> Result<CoreStats, CoreError> {
    let file = File::create(path).map_err(|source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    write_core_into(file, path, input)
}

/// Writes the core into `file`, already created at `path` (which only names it in
/// errors), and syncs it: for a writer that may not open files any more when it writes.
pub fn write_core_into(
    file: File,
    path: &Path,
    input: &CoreInput<'_>,
) -> Result<CoreStats, CoreError> {
    let io = |source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let stats = write_core_to(&mut w, input).map_err(|e| match e {
        CoreError::Write(source) => io(source),
        other => other,
    })?;
    w.flush().map_err(io)?;
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(stats)
}

/// Writes the core to any writer (sequentially, no seeking).
pub fn write_core_to(w: &mut impl Write, input: &CoreInput<'_>) -> Result<CoreStats, CoreError> {
    let known = KnownZero::new(&input.zero);
    let mut min_hole = MIN_HOLE_PAGES;
    let mut ram = plan_ram(input, &known, min_hole);
    let mut windows = plan_windows(input, &ram);
    while ram.len() + windows.len() + 1 > MAX_SEGMENTS {
        min_hole *= 4;
        ram = plan_ram(input, &known, min_hole);
        windows = plan_windows(input, &ram);
    }
    let notes = notes(input)?;
    let phnum = 1 + ram.len() + windows.len();
    let notes_offset = (EHDR_SIZE + PHDR_SIZE * phnum) as u64;
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
            .ok_or_else(|| CoreError::Input("virtual window outside RAM".into()))?;
        win.file_offset = host.file_offset + (win.range_offset - host.range_offset);
    }
    write_all(w, &elf_header(phnum))?;
    let note_segment = ProgramHeader {
        p_type: PT_NOTE,
        flags: 0,
        offset: notes_offset,
        vaddr: 0,
        paddr: 0,
        filesz: notes.len() as u64,
        memsz: notes.len() as u64,
        align: 4,
    };
    write_all(w, &note_segment.bytes())?;
    for s in ram.iter().chain(&windows) {
        let load = ProgramHeader {
            p_type: PT_LOAD,
            flags: 7, // rwx
            offset: s.file_offset,
            vaddr: s.vaddr,
            paddr: s.paddr,
            filesz: s.filesz,
            memsz: s.memsz,
            // As kdump's /proc/vmcore and QEMU write it: `crash` takes a core whose first
            // PT_LOAD is page-aligned with a non-zero p_align for an old netdump and then
            // skips the KASLR relocation VMCOREINFO gives (vmlinux "does not match").
            align: 0,
        };
        write_all(w, &load.bytes())?;
    }
    write_all(w, &notes)?;
    let mut written = notes_offset + notes.len() as u64;
    let pad = vec![0u8; (ram.first().map_or(written, |s| s.file_offset) - written) as usize];
    write_all(w, &pad)?;
    written += pad.len() as u64;
    let mut stored = 0;
    static ZEROS: [u8; PAGE as usize * 16] = [0; PAGE as usize * 16];
    for s in &ram {
        debug_assert_eq!(written, s.file_offset);
        let r = &input.ram[s.range];
        let (start, end) = (s.range_offset, s.range_offset + s.filesz);
        // The data, with the known-zero stretches inside it written from ZEROS.
        let mut at = start;
        for hole in known.within(r.gpa + start, r.gpa + end) {
            let (lo, hi) = (hole.start - r.gpa, hole.end - r.gpa);
            write_all(w, &r.bytes[at as usize..lo as usize])?;
            let mut left = hi - lo;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64);
                write_all(w, &ZEROS[..n as usize])?;
                left -= n;
            }
            at = hi;
        }
        write_all(w, &r.bytes[at as usize..end as usize])?;
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

fn write_all(w: &mut impl Write, bytes: &[u8]) -> Result<(), CoreError> {
    w.write_all(bytes).map_err(CoreError::Write)
}

/// The ELF header of a core with `phnum` program headers right after it.
fn elf_header(phnum: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(EHDR_SIZE);
    h.extend_from_slice(b"\x7fELF");
    h.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&ET_CORE.to_le_bytes());
    h.extend_from_slice(&EM_X86_64.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(phnum as u16).to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    h.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    h
}

/// An ELF64 program header.
struct ProgramHeader {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

impl ProgramHeader {
    fn bytes(&self) -> [u8; PHDR_SIZE] {
        let mut p = [0u8; PHDR_SIZE];
        p[0..4].copy_from_slice(&self.p_type.to_le_bytes());
        p[4..8].copy_from_slice(&self.flags.to_le_bytes());
        let words = [
            self.offset,
            self.vaddr,
            self.paddr,
            self.filesz,
            self.memsz,
            self.align,
        ];
        for (i, v) in words.iter().enumerate() {
            p[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        CoreLayout, UserRegs, NOTE_NAME, NT_AMBULANCE_DESCRIPTOR, NT_AMBULANCE_DESCRIPTOR_GPA,
    };

    /// Reads physical memory back from a core the way a reader does (by p_paddr).
    fn read_back(core: &[u8], pa: u64, len: usize) -> Vec<u8> {
        let layout = CoreLayout::parse(core).unwrap();
        let mut out = vec![0u8; len];
        for l in layout.loads() {
            for (i, b) in out.iter_mut().enumerate() {
                let a = pa + i as u64;
                if a >= l.paddr && a < l.paddr + l.memsz {
                    let k = a - l.paddr;
                    *b = if k < l.filesz {
                        core[(l.offset + k) as usize]
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
        let regs = PrStatus {
            index: 0,
            pid: 2,
            regs: UserRegs {
                rip: 0xffff_ffff_8020_1234,
                rsp: 0x1000,
                ..Default::default()
            },
        };
        let input = CoreInput {
            ram: vec![RamRange {
                gpa: 0,
                bytes: &ram,
            }],
            prstatus: vec![regs],
            vmcoreinfo: Some("OSRELEASE=test\n".into()),
            notes: vec![
                ElfNote::ambulance(NT_AMBULANCE_DESCRIPTOR, vec![1, 2, 3]),
                ElfNote::ambulance(NT_AMBULANCE_DESCRIPTOR_GPA, 0x1000u64.to_le_bytes().into()),
            ],
            direct_map_base: Some(0xffff_8880_0000_0000),
            windows: vec![VirtualWindow {
                vaddr: 0xffff_ffff_8000_0000,
                paddr: 0,
                size: 128 * PAGE,
            }],
            zero: Vec::new(),
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
        let layout = CoreLayout::parse(&core).unwrap();
        let loads = layout.loads();
        assert!(
            loads.iter().any(|p| p.vaddr == 0xffff_8880_0000_0000),
            "direct-map vaddr"
        );
        assert!(
            loads.iter().any(|p| p.vaddr == 0xffff_ffff_8000_0000),
            "kernel window vaddr"
        );
        let notes = String::from_utf8_lossy(&core);
        assert!(
            notes.contains("VMCOREINFO")
                && notes.contains("OSRELEASE=test")
                && notes.contains("AMBULANCE")
        );
        // The reader finds what was written.
        assert_eq!(layout.prstatus(), &[regs]);
        assert_eq!(layout.vmcoreinfo(), Some("OSRELEASE=test\n"));
        assert_eq!(
            layout.note(&core, NOTE_NAME, NT_AMBULANCE_DESCRIPTOR_GPA),
            Some(&0x1000u64.to_le_bytes()[..])
        );
        assert_eq!(stats.segments, loads.len());
    }

    #[test]
    fn sparse_runs_and_windows_share_file_bytes() {
        // Data, a short zero run (kept), data, a long zero run (a hole), data, zeros.
        let mut ram = vec![0u8; 64 * PAGE as usize];
        ram[0] = 1;
        ram[4 * PAGE as usize] = 2; // after 3 zero pages: stays in the same run
        ram[30 * PAGE as usize] = 3; // after 25 zero pages: a new run
        let input = CoreInput {
            ram: vec![RamRange {
                gpa: 0x10_0000,
                bytes: &ram,
            }],
            windows: vec![VirtualWindow {
                vaddr: 0xffff_ffff_8100_0000,
                paddr: 0x10_0000 + 4 * PAGE,
                size: 40 * PAGE,
            }],
            ..Default::default()
        };
        let mut core = Vec::new();
        let stats = write_core_to(&mut core, &input).unwrap();
        let layout = CoreLayout::parse(&core).unwrap();
        let l = layout.loads();
        assert_eq!(stats.segments, 4, "{l:?}");
        assert_eq!(
            (l[0].paddr, l[0].filesz, l[0].memsz),
            (0x10_0000, 5 * PAGE, 30 * PAGE)
        );
        assert_eq!(l[0].vaddr, l[0].paddr, "no direct map: vaddr is paddr");
        assert_eq!(
            (l[1].paddr, l[1].filesz, l[1].memsz),
            (0x10_0000 + 30 * PAGE, PAGE, 34 * PAGE)
        );
        assert_eq!(stats.stored_bytes, 6 * PAGE);
        // The window's two pieces point at the data segments' bytes.
        assert_eq!(l[2].vaddr, 0xffff_ffff_8100_0000);
        assert_eq!(l[2].offset, l[0].offset + 4 * PAGE);
        assert_eq!(core[l[2].offset as usize], 2);
        assert_eq!(l[3].offset, l[1].offset);
        assert_eq!(l[3].memsz, 14 * PAGE);
        assert_eq!(core[l[3].offset as usize], 3);
    }

    #[test]
    fn unwritable_paths_name_the_file() {
        let ram = [1u8; 16];
        let input = CoreInput {
            ram: vec![RamRange {
                gpa: 0,
                bytes: &ram,
            }],
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("x.core");
        let err = write_core(&missing, &input).unwrap_err();
        assert!(matches!(err, CoreError::Io { .. }), "{err}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
        let path = dir.path().join("x.core");
        let stats = write_core(&path, &input).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), stats.file_bytes);
    }

    #[test]
    fn known_zero_pages_are_never_read() {
        // Every byte is 0xaa, so any byte read from a "known zero" page would show.
        let ram = vec![0xaau8; 64 * PAGE as usize];
        let gpa = 0x100_0000;
        let page = |i: u64| gpa + i * PAGE;
        let input = CoreInput {
            ram: vec![RamRange { gpa, bytes: &ram }],
            // A long hole (its own gap between segments), a short one inside a data run
            // (written as zeros), and a tail.
            zero: vec![page(8)..page(40), page(50)..page(52), page(60)..page(64)],
            ..Default::default()
        };
        let mut core = Vec::new();
        let stats = write_core_to(&mut core, &input).unwrap();
        assert_eq!(stats.ram_bytes, 64 * PAGE);
        // Pages 0..8 and 40..60 hold data: 28 pages, the two zero pages included.
        assert_eq!(stats.stored_bytes, 28 * PAGE);
        assert!(read_back(&core, page(7), PAGE as usize)
            .iter()
            .all(|&b| b == 0xaa));
        for p in [8, 20, 39, 50, 51, 60, 63] {
            assert!(
                read_back(&core, page(p), PAGE as usize)
                    .iter()
                    .all(|&b| b == 0),
                "page {p} is known to be zero"
            );
        }
        for p in [40, 49, 52, 59] {
            assert!(read_back(&core, page(p), PAGE as usize)
                .iter()
                .all(|&b| b == 0xaa));
        }
        // A known-zero range that only partly covers a page keeps the page in the data
        // (its known part still written, as zeros, without being read).
        let partial = CoreInput {
            ram: vec![RamRange {
                gpa,
                bytes: &ram[..2 * PAGE as usize],
            }],
            zero: std::iter::once(gpa + 100..gpa + PAGE).collect(),
            ..Default::default()
        };
        let mut core = Vec::new();
        let stats = write_core_to(&mut core, &partial).unwrap();
        assert_eq!(stats.stored_bytes, 2 * PAGE);
        assert!(read_back(&core, gpa, 100).iter().all(|&b| b == 0xaa));
        assert!(read_back(&core, gpa + 100, PAGE as usize - 100)
            .iter()
            .all(|&b| b == 0));
        assert!(read_back(&core, gpa + PAGE, PAGE as usize)
            .iter()
            .all(|&b| b == 0xaa));
    }
}
