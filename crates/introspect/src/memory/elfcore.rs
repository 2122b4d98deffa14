//! ELF core files of whole machines: QEMU's `dump-guest-memory`, kdump's `/proc/vmcore`
//! (saved with `cp` or `makedumpfile -E`), and the cores Ambulance writes.
//!
//! `PT_LOAD` segments are addressed by `p_paddr` (the guest-physical address; both QEMU
//! and the kernel's vmcore write it); where `p_filesz < p_memsz` the rest reads as zeros.
//! Notes are kept whole: every `NT_PRSTATUS` (one per CPU, x86-64 `elf_prstatus`) is
//! decoded into [`PrStatus`], the `VMCOREINFO` note is exposed as text, and all notes,
//! ours included, stay reachable through [`ElfCore::notes`].
//!
//! The parser is hand-written and bounded: every offset, size and count is checked
//! against the file before use, and anything malformed is [`Error::BadCore`] naming what
//! is wrong.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use super::{map_readonly, Backing, SegSpec, SegmentMap};
use crate::{Error, Result};

/// `n_type` of a CPU's register note (name `CORE`).
pub const NT_PRSTATUS: u32 = 1;
/// Size of x86-64 `struct elf_prstatus`.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` (`struct user_regs_struct`) in `elf_prstatus`.
pub const PR_REG_OFFSET: usize = 112;
/// Offset of `pr_pid` in `elf_prstatus`.
const PR_PID_OFFSET: usize = 32;
/// Number of registers in `user_regs_struct`.
const USER_REGS: usize = 27;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PN_XNUM: u16 = 0xffff;
/// Most program headers we accept.
const MAX_PHNUM: u64 = 1 << 20;
/// Most notes we accept, over all note segments.
const MAX_NOTES: usize = 1 << 16;
/// Longest note name.
const MAX_NOTE_NAME: usize = 4096;
/// Longest VMCOREINFO note.
const MAX_VMCOREINFO: usize = 1 << 20;

/// x86-64 general-purpose registers, in `struct user_regs_struct` order (the layout of
/// `pr_reg` in `NT_PRSTATUS`).
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl CpuRegs {
    /// From the 27 words of `user_regs_struct`.
    pub fn from_array(r: [u64; USER_REGS]) -> CpuRegs {
        CpuRegs {
            r15: r[0],
            r14: r[1],
            r13: r[2],
            r12: r[3],
            rbp: r[4],
            rbx: r[5],
            r11: r[6],
            r10: r[7],
            r9: r[8],
            r8: r[9],
            rax: r[10],
            rcx: r[11],
            rdx: r[12],
            rsi: r[13],
            rdi: r[14],
            orig_rax: r[15],
            rip: r[16],
            cs: r[17],
            eflags: r[18],
            rsp: r[19],
            ss: r[20],
            fs_base: r[21],
            gs_base: r[22],
            ds: r[23],
            es: r[24],
            fs: r[25],
            gs: r[26],
        }
    }

    /// The 27 words of `user_regs_struct`.
    pub fn to_array(&self) -> [u64; USER_REGS] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }
}

/// One CPU's `NT_PRSTATUS` note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrStatus {
    /// Position among the core's `NT_PRSTATUS` notes (QEMU and kdump write one per CPU,
    /// in CPU order).
    pub index: usize,
    /// `pr_pid` (QEMU: the CPU index + 1; kdump: the task that ran on the CPU).
    pub pid: i32,
    /// The registers.
    pub regs: CpuRegs,
}

/// One note of the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// Its name, without the terminating NUL (`CORE`, `VMCOREINFO`, ...).
    pub name: &'a str,
    /// `n_type`.
    pub n_type: u32,
    /// Its descriptor bytes.
    pub desc: &'a [u8],
}

#[derive(Clone, Debug)]
struct NoteEntry {
    name: String,
    n_type: u32,
    desc: Range<usize>,
}

/// An ELF core file, mapped read-only.
pub struct ElfCore {
    map: SegmentMap,
    notes: Vec<NoteEntry>,
    prstatus: Vec<PrStatus>,
    vmcoreinfo: Option<String>,
}

impl ElfCore {
    /// Maps and parses the core at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<ElfCore> {
        let path = path.as_ref();
        let io = |what, e| Error::Io {
            what,
            path: path.to_path_buf(),
            source: e,
        };
        let file = File::open(path).map_err(|e| io("cannot open core file", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot stat core file", e))?
            .len();
        let name = path.display().to_string();
        if len < EHDR_SIZE as u64 {
            return Err(bad(
                &name,
                format!("{len} bytes is too short for an ELF header"),
            ));
        }
        let m = map_readonly(&file, 0, len).map_err(|e| io("cannot map core file", e))?;
        Self::build(Backing::Map(m), format!("core file {name}"), &name)
    }

    /// Parses a core held in memory (tests and fuzzers; the bytes are copied).
    pub fn parse(bytes: &[u8]) -> Result<ElfCore> {
        Self::build(
            Backing::Owned(bytes.to_vec()),
            "core <bytes>".into(),
            "<bytes>",
        )
    }

    fn build(backing: Backing, describe: String, path: &str) -> Result<ElfCore> {
        let layout = parse_layout(backing.bytes(), path)?;
        let bytes = backing.bytes();
        let mut prstatus = Vec::new();
        let mut vmcoreinfo = None;
        for n in &layout.notes {
            let desc = &bytes[n.desc.clone()];
            if n.name == "CORE" && n.n_type == NT_PRSTATUS {
                prstatus.push(decode_prstatus(prstatus.len(), desc, path)?);
            } else if n.name == "VMCOREINFO" && vmcoreinfo.is_none() {
                if desc.len() > MAX_VMCOREINFO {
                    return Err(bad(
                        path,
                        format!("VMCOREINFO note of {} bytes is over 1 MiB", desc.len()),
                    ));
                }
                let text = String::from_utf8_lossy(desc);
                vmcoreinfo = Some(text.trim_end_matches('\0').to_string());
            }
        }
        let specs = layout
            .loads
            .iter()
            .map(|l| SegSpec {
                start: l.paddr,
                mem_size: l.memsz,
                file_size: l.filesz,
                backing: 0,
                offset: l.offset as usize,
            })
            .collect();
        Ok(ElfCore {
            map: SegmentMap::new(vec![backing], specs, describe),
            notes: layout.notes,
            prstatus,
            vmcoreinfo,
        })
    }

    /// Every note, in file order.
    pub fn notes(&self) -> impl Iterator<Item = Note<'_>> + '_ {
        let bytes = self.map.backings[0].bytes();
        self.notes.iter().map(move |n| Note {
            name: &n.name,
            n_type: n.n_type,
            desc: &bytes[n.desc.clone()],
        })
    }

    /// The descriptor of the first note with this name and type.
    pub fn note(&self, name: &str, n_type: u32) -> Option<&[u8]> {
        self.notes()
            .find(|n| n.name == name && n.n_type == n_type)
            .map(|n| n.desc)
    }

    /// The CPUs' registers, one entry per `NT_PRSTATUS` note.
    pub fn prstatus(&self) -> &[PrStatus] {
        &self.prstatus
    }

    /// The `VMCOREINFO` note's text (trailing NULs removed, invalid UTF-8 replaced).
    pub fn vmcoreinfo(&self) -> Option<&str> {
        self.vmcoreinfo.as_deref()
    }

    /// The offset in the core file of guest-physical `pa`, when the file holds its byte
    /// (for tools that patch or carve a core).
    pub fn file_offset(&self, pa: u64) -> Option<u64> {
        self.map.backing_offset(pa).map(|(_, offset)| offset)
    }
}

super::physical_memory_from_segment_map!(ElfCore);

// ---------------------------------------------------------------------------------------

fn bad(path: &str, reason: impl Into<String>) -> Error {
    Error::BadCore {
        path: path.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug)]
struct Load {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

#[derive(Debug)]
struct Layout {
    loads: Vec<Load>,
    notes: Vec<NoteEntry>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn parse_layout(b: &[u8], path: &str) -> Result<Layout> {
    let short = || bad(path, "truncated ELF header");
    if b.len() < EHDR_SIZE {
        return Err(bad(
            path,
            format!("{} bytes is too short for an ELF header", b.len()),
        ));
    }
    if &b[..4] != b"\x7fELF" {
        return Err(bad(path, "no ELF magic"));
    }
    match b[4] {
        2 => {}
        1 => return Err(bad(path, "32-bit ELF (ELFCLASS32); need an x86-64 core")),
        c => return Err(bad(path, format!("unknown ELF class {c}"))),
    }
    if b[5] != 1 {
        return Err(bad(
            path,
            format!("ELF data encoding {} is not little-endian", b[5]),
        ));
    }
    let e_type = u16_at(b, 16).ok_or_else(short)?;
    if e_type != ET_CORE {
        return Err(bad(path, format!("e_type {e_type} is not ET_CORE (4)")));
    }
    let machine = u16_at(b, 18).ok_or_else(short)?;
    if machine != EM_X86_64 {
        return Err(bad(
            path,
            format!("e_machine {machine} is not x86-64 ({EM_X86_64})"),
        ));
    }
    let phoff = u64_at(b, 32).ok_or_else(short)?;
    let shoff = u64_at(b, 40).ok_or_else(short)?;
    let phentsize = u16_at(b, 54).ok_or_else(short)?;
    let phnum16 = u16_at(b, 56).ok_or_else(short)?;
    let phnum = if phnum16 == PN_XNUM {
        // The real count is in section header 0's sh_info.
        let sh0 = usize::try_from(shoff)
            .ok()
            .filter(|&o| o.checked_add(SHDR_SIZE).is_some_and(|e| e <= b.len()))
            .ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "e_phnum is PN_XNUM but section header 0 at {shoff:#x} is outside the file"
                    ),
                )
            })?;
        u32_at(b, sh0 + 44).ok_or_else(short)? as u64
    } else {
        phnum16 as u64
    };
    if phnum == 0 {
        return Err(bad(path, "no program headers"));
    }
    if phnum > MAX_PHNUM {
        return Err(bad(
            path,
            format!("{phnum} program headers is more than the {MAX_PHNUM} accepted"),
        ));
    }
    if phentsize as usize != PHDR_SIZE {
        return Err(bad(
            path,
            format!("e_phentsize {phentsize} is not {PHDR_SIZE}"),
        ));
    }
    let ph_end = phnum
        .checked_mul(PHDR_SIZE as u64)
        .and_then(|n| n.checked_add(phoff));
    if ph_end.is_none_or(|e| e > b.len() as u64) {
        return Err(bad(
            path,
            format!(
                "{phnum} program headers at {phoff:#x} extend past the end of the file ({} bytes)",
                b.len()
            ),
        ));
    }
    let file_len = b.len() as u64;
    let mut loads = Vec::new();
    let mut notes = Vec::new();
    for i in 0..phnum as usize {
        let ph = &b[phoff as usize + i * PHDR_SIZE..][..PHDR_SIZE];
        let p_type = u32_at(ph, 0).ok_or_else(short)?;
        let offset = u64_at(ph, 8).ok_or_else(short)?;
        let paddr = u64_at(ph, 24).ok_or_else(short)?;
        let filesz = u64_at(ph, 32).ok_or_else(short)?;
        let memsz = u64_at(ph, 40).ok_or_else(short)?;
        let align = u64_at(ph, 48).ok_or_else(short)?;
        let in_file = offset.checked_add(filesz).is_some_and(|e| e <= file_len);
        match p_type {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(bad(
                        path,
                        format!("PT_LOAD {i}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}"),
                    ));
                }
                if !in_file {
                    return Err(bad(
                        path,
                        format!(
                            "PT_LOAD {i}: {filesz:#x} bytes at file offset {offset:#x} extend past the end of the file ({file_len} bytes): truncated core?"
                        ),
                    ));
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(bad(
                        path,
                        format!("PT_LOAD {i}: physical range {paddr:#x}+{memsz:#x} overflows"),
                    ));
                }
                if memsz > 0 {
                    loads.push(Load {
                        offset,
                        paddr,
                        filesz,
                        memsz,
                    });
                }
            }
            PT_NOTE => {
                if !in_file {
                    return Err(bad(
                        path,
                        format!(
                            "PT_NOTE {i}: {filesz:#x} bytes at file offset {offset:#x} extend past the end of the file"
                        ),
                    ));
                }
                let a = if align == 8 { 8 } else { 4 };
                parse_notes(b, offset as usize, filesz as usize, a, i, path, &mut notes)?;
            }
            _ => {}
        }
    }
    if loads.len() > 1 && loads.iter().all(|l| l.paddr == 0) {
        return Err(bad(
            path,
            "every PT_LOAD has p_paddr 0: not a physical-memory core (a process core, or a dump taken with paging)",
        ));
    }
    Ok(Layout { loads, notes })
}

fn parse_notes(
    b: &[u8],
    start: usize,
    len: usize,
    align: usize,
    ph: usize,
    path: &str,
    notes: &mut Vec<NoteEntry>,
) -> Result<()> {
    let seg = &b[start..start + len];
    let mut at = 0usize;
    while at < seg.len() {
        if seg.len() - at < 12 {
            // Trailing padding shorter than a header.
            if seg[at..].iter().all(|&x| x == 0) {
                break;
            }
            return Err(bad(
                path,
                format!("PT_NOTE {ph}: truncated note header at offset {at:#x}"),
            ));
        }
        if notes.len() >= MAX_NOTES {
            return Err(bad(path, format!("more than {MAX_NOTES} notes")));
        }
        let namesz = u32_at(seg, at).unwrap_or(0) as usize;
        let descsz = u32_at(seg, at + 4).unwrap_or(0) as usize;
        let n_type = u32_at(seg, at + 8).unwrap_or(0);
        if namesz > MAX_NOTE_NAME {
            return Err(bad(
                path,
                format!("PT_NOTE {ph}: note at offset {at:#x} has a {namesz}-byte name"),
            ));
        }
        let name_at = at + 12;
        let desc_at = name_at
            .checked_add(namesz.next_multiple_of(align))
            .filter(|&d| d <= seg.len());
        let desc_at = desc_at.ok_or_else(|| {
            bad(
                path,
                format!("PT_NOTE {ph}: name of the note at offset {at:#x} runs past the segment"),
            )
        })?;
        let desc_end = desc_at.checked_add(descsz).filter(|&e| e <= seg.len());
        let desc_end = desc_end.ok_or_else(|| {
            bad(
                path,
                format!(
                    "PT_NOTE {ph}: descriptor of the note at offset {at:#x} ({descsz} bytes) runs past the segment"
                ),
            )
        })?;
        let raw_name = &seg[name_at..name_at + namesz];
        let name_len = raw_name.iter().position(|&c| c == 0).unwrap_or(namesz);
        let name = String::from_utf8_lossy(&raw_name[..name_len]).into_owned();
        notes.push(NoteEntry {
            name,
            n_type,
            desc: start + desc_at..start + desc_end,
        });
        // The next note starts after the padded descriptor (which may run off the end).
        at = desc_at.saturating_add(descsz.next_multiple_of(align));
    }
    Ok(())
}

fn decode_prstatus(index: usize, desc: &[u8], path: &str) -> Result<PrStatus> {
    let need = PR_REG_OFFSET + USER_REGS * 8;
    if desc.len() < need {
        return Err(bad(
            path,
            format!(
                "NT_PRSTATUS note {index} has {} bytes; an x86-64 elf_prstatus needs at least {need}",
                desc.len()
            ),
        ));
    }
    let pid = u32_at(desc, PR_PID_OFFSET).unwrap_or(0) as i32;
    let mut r = [0u64; USER_REGS];
    for (i, w) in r.iter_mut().enumerate() {
        *w = u64_at(desc, PR_REG_OFFSET + i * 8).unwrap_or(0);
    }
    Ok(PrStatus {
        index,
        pid,
        regs: CpuRegs::from_array(r),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::{PhysRange, PhysicalMemory};
    use proptest::prelude::*;

    /// A tiny ELF core writer for tests (goblin cannot write).
    #[derive(Default, Clone, Debug)]
    pub(crate) struct CoreWriter {
        /// (paddr, bytes, extra zero bytes in memory)
        pub loads: Vec<(u64, Vec<u8>, u64)>,
        /// (name, type, desc)
        pub notes: Vec<(String, u32, Vec<u8>)>,
    }

    impl CoreWriter {
        pub fn prstatus(pid: i32, regs: &CpuRegs) -> Vec<u8> {
            let mut d = vec![0u8; PRSTATUS_SIZE];
            d[PR_PID_OFFSET..PR_PID_OFFSET + 4].copy_from_slice(&pid.to_le_bytes());
            for (i, r) in regs.to_array().iter().enumerate() {
                let at = PR_REG_OFFSET + i * 8;
                d[at..at + 8].copy_from_slice(&r.to_le_bytes());
            }
            d
        }

        pub fn write(&self) -> Vec<u8> {
            let mut notes = Vec::new();
            for (name, ty, desc) in &self.notes {
                let mut nm = name.as_bytes().to_vec();
                nm.push(0);
                notes.extend_from_slice(&(nm.len() as u32).to_le_bytes());
                notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
                notes.extend_from_slice(&ty.to_le_bytes());
                nm.resize(nm.len().next_multiple_of(4), 0);
                notes.extend_from_slice(&nm);
                let mut d = desc.clone();
                d.resize(d.len().next_multiple_of(4), 0);
                notes.extend_from_slice(&d);
            }
            let phnum = 1 + self.loads.len();
            let mut out = vec![0u8; EHDR_SIZE];
            out[..4].copy_from_slice(b"\x7fELF");
            out[4] = 2;
            out[5] = 1;
            out[6] = 1;
            out[16..18].copy_from_slice(&ET_CORE.to_le_bytes());
            out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
            out[20..24].copy_from_slice(&1u32.to_le_bytes());
            out[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
            out[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
            out[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
            out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
            let mut data_at = (EHDR_SIZE + phnum * PHDR_SIZE) as u64;
            let phdr = |out: &mut Vec<u8>, ty: u32, off: u64, pa: u64, fsz: u64, msz: u64| {
                let mut p = [0u8; PHDR_SIZE];
                p[0..4].copy_from_slice(&ty.to_le_bytes());
                p[8..16].copy_from_slice(&off.to_le_bytes());
                p[16..24].copy_from_slice(&pa.wrapping_add(0xffff_8880_0000_0000).to_le_bytes());
                p[24..32].copy_from_slice(&pa.to_le_bytes());
                p[32..40].copy_from_slice(&fsz.to_le_bytes());
                p[40..48].copy_from_slice(&msz.to_le_bytes());
                p[48..56].copy_from_slice(&4u64.to_le_bytes());
                out.extend_from_slice(&p);
            };
            phdr(&mut out, PT_NOTE, data_at, 0, notes.len() as u64, 0);
            data_at += notes.len() as u64;
            for (pa, bytes, extra) in &self.loads {
                let n = bytes.len() as u64;
                phdr(&mut out, PT_LOAD, data_at, *pa, n, n + extra);
                data_at += n;
            }
            out.extend_from_slice(&notes);
            for (_, bytes, _) in &self.loads {
                out.extend_from_slice(bytes);
            }
            out
        }
    }

    fn sample() -> CoreWriter {
        let regs = CpuRegs {
            rip: 0xffff_ffff_8020_1234,
            rsp: 0xffff_c900_0000_3f00,
            rax: 42,
            gs: 7,
            ..Default::default()
        };
        CoreWriter {
            loads: vec![
                (0, (0..=255u8).cycle().take(8192).collect(), 4096),
                (0x10_0000, vec![0xcc; 4096], 0),
            ],
            notes: vec![
                ("CORE".into(), NT_PRSTATUS, CoreWriter::prstatus(1, &regs)),
                (
                    "CORE".into(),
                    NT_PRSTATUS,
                    CoreWriter::prstatus(2, &CpuRegs::default()),
                ),
                (
                    "VMCOREINFO".into(),
                    0,
                    b"OSRELEASE=6.1\nPAGESIZE=4096\n\0\0".to_vec(),
                ),
                ("AMBULANCE".into(), 0x414d, vec![1, 2, 3]),
                ("GNU".into(), 1, vec![0; 16]), // type 1 but not CORE: not a prstatus
            ],
        }
    }

    #[test]
    fn sample_core_parses() {
        let core = ElfCore::parse(&sample().write()).unwrap();
        assert_eq!(core.prstatus().len(), 2);
        let p = core.prstatus()[0];
        assert_eq!(p.index, 0);
        assert_eq!(p.pid, 1);
        assert_eq!(p.regs.rip, 0xffff_ffff_8020_1234);
        assert_eq!(p.regs.rsp, 0xffff_c900_0000_3f00);
        assert_eq!(p.regs.rax, 42);
        assert_eq!(p.regs.gs, 7);
        assert_eq!(core.prstatus()[1].pid, 2);
        assert_eq!(core.vmcoreinfo(), Some("OSRELEASE=6.1\nPAGESIZE=4096\n"));
        assert_eq!(core.note("AMBULANCE", 0x414d), Some(&[1u8, 2, 3][..]));
        assert_eq!(core.notes().count(), 5);
        let mut b = [0u8; 4];
        core.read(0x1ffe, &mut b).unwrap();
        assert_eq!(b, [254, 255, 0, 0], "file bytes then the zero tail");
        assert_eq!(core.slice(0x2800, 16), Some(&[0u8; 16][..]));
        assert_eq!(core.slice(0x10_0000, 2), Some(&[0xcc, 0xcc][..]));
        let err = core.read(0x3000, &mut b).unwrap_err();
        assert!(err.to_string().contains("0x3000"), "{err}");
        // File offsets: the byte the file holds for an address, none in a zero tail.
        let bytes = sample().write();
        let at = core.file_offset(0x1ffe).unwrap() as usize;
        assert_eq!(&bytes[at..at + 2], &[254, 255]);
        let at = core.file_offset(0x10_0000).unwrap() as usize;
        assert_eq!(bytes[at], 0xcc);
        assert_eq!(core.file_offset(0x2800), None);
        assert_eq!(core.file_offset(0x3000), None);
        assert_eq!(
            core.ranges(),
            vec![
                PhysRange {
                    start: 0,
                    size: 0x3000
                },
                PhysRange {
                    start: 0x10_0000,
                    size: 0x1000
                }
            ]
        );
    }

    #[test]
    fn open_maps_a_file() {
        let dir = std::env::temp_dir().join(format!("ambulance-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.core");
        std::fs::write(&path, sample().write()).unwrap();
        let core = ElfCore::open(&path).unwrap();
        assert_eq!(core.prstatus().len(), 2);
        assert!(core.describe().contains("x.core"));
        std::fs::write(&path, b"\x7fELF").unwrap();
        let err = ElfCore::open(&path).err().unwrap();
        assert!(err.to_string().contains("too short"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn reason(bytes: &[u8]) -> String {
        match ElfCore::parse(bytes) {
            Err(Error::BadCore { reason, .. }) => reason,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let good = sample().write();
        assert!(reason(&good[..10]).contains("too short"));
        let mut b = good.clone();
        b[0] = 0;
        assert!(reason(&b).contains("magic"));
        let mut b = good.clone();
        b[4] = 1;
        assert!(reason(&b).contains("32-bit"));
        let mut b = good.clone();
        b[16] = 2;
        assert!(reason(&b).contains("ET_CORE"));
        let mut b = good.clone();
        b[18] = 3;
        assert!(reason(&b).contains("x86-64"));
        // Truncated: the last segment runs past the end.
        assert!(reason(&good[..good.len() - 1]).contains("truncated core"));
        // Huge phnum through PN_XNUM with a bogus section header offset.
        let mut b = good.clone();
        b[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(reason(&b).contains("PN_XNUM"));
        // filesz > memsz in the second PT_LOAD.
        let mut b = good.clone();
        let ph = EHDR_SIZE + PHDR_SIZE;
        b[ph + 40..ph + 48].copy_from_slice(&1u64.to_le_bytes());
        assert!(reason(&b).contains("exceeds p_memsz"));
        // A short NT_PRSTATUS.
        let mut w = sample();
        w.notes[0].2.truncate(100);
        assert!(reason(&w.write()).contains("NT_PRSTATUS"));
        // A note whose descriptor runs past its segment.
        let mut b = good.clone();
        let notes_at = EHDR_SIZE + 3 * PHDR_SIZE;
        b[notes_at + 4..notes_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(&b).contains("runs past the segment"));
    }

    #[test]
    fn pn_xnum_reads_the_count_from_section_header_0() {
        let mut b = sample().write();
        let shoff = b.len();
        let mut sh = [0u8; SHDR_SIZE];
        sh[44..48].copy_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&sh);
        b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        let core = ElfCore::parse(&b).unwrap();
        assert_eq!(core.ranges().len(), 2);
    }

    #[test]
    fn process_cores_are_refused() {
        let w = CoreWriter {
            loads: vec![(0, vec![1; 16], 0), (0, vec![2; 16], 0)],
            notes: vec![],
        };
        assert!(reason(&w.write()).contains("p_paddr 0"));
    }

    fn arb_core() -> impl Strategy<Value = CoreWriter> {
        (
            proptest::collection::vec(
                (
                    1u64..1 << 20,
                    proptest::collection::vec(any::<u8>(), 0..64),
                    0u64..64,
                ),
                0..4,
            ),
            proptest::collection::vec(
                (
                    "[A-Z]{0,12}",
                    0u32..4,
                    proptest::collection::vec(any::<u8>(), 0..400),
                ),
                0..4,
            ),
        )
            .prop_map(|(loads, notes)| CoreWriter { loads, notes })
    }

    fn exercise(core: &ElfCore, probes: &[(u64, usize)]) {
        let _ = core.prstatus();
        let _ = core.vmcoreinfo();
        let _ = core.notes().map(|n| n.desc.len()).sum::<usize>();
        let ranges = core.ranges();
        for &(pa, len) in probes {
            let mut buf = vec![0u8; len];
            let _ = core.read(pa, &mut buf);
            let _ = core.slice(pa, len);
        }
        for r in ranges {
            let mut buf = [0u8; 8];
            let _ = core.read(r.start, &mut buf[..r.size.min(8) as usize]);
            let _ = core.read(r.end().saturating_sub(1), &mut buf[..1]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok(core) = ElfCore::parse(&bytes) {
                exercise(&core, &[(0, 8), (u64::MAX - 3, 8)]);
            }
        }

        #[test]
        fn elf_headers_with_random_tails_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..1024),
            phnum in any::<u16>(),
        ) {
            let mut bytes = sample().write()[..EHDR_SIZE].to_vec();
            bytes[56..58].copy_from_slice(&phnum.to_le_bytes());
            bytes.extend_from_slice(&tail);
            if let Ok(core) = ElfCore::parse(&bytes) {
                exercise(&core, &[(0, 8), (1 << 20, 64)]);
            }
        }

        #[test]
        fn valid_cores_read_back(w in arb_core()) {
            let core = ElfCore::parse(&w.write()).unwrap();
            // Every byte of a segment that no earlier-starting segment covers reads back.
            for (pa, bytes, extra) in &w.loads {
                let mut buf = vec![0u8; bytes.len() + *extra as usize];
                prop_assert!(core.read(*pa, &mut buf).is_ok() || bytes.is_empty() && *extra == 0);
            }
            prop_assert!(core.prstatus().is_empty() || w.notes.iter().any(|n| n.0 == "CORE"));
        }

        #[test]
        fn mutated_cores_never_panic(
            w in arb_core(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..24),
            cut in any::<usize>(),
            probes in proptest::collection::vec((any::<u64>(), 0usize..128), 0..8),
        ) {
            let mut bytes = w.write();
            for (at, v) in flips {
                let at = at % bytes.len();
                bytes[at] = v;
            }
            if cut % 4 == 0 {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            if let Ok(core) = ElfCore::parse(&bytes) {
                exercise(&core, &probes);
            }
        }
    }
}
