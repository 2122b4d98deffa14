//! Reading a core: where its `PT_LOAD` segments and notes are, its CPUs' registers and
//! its `VMCOREINFO`.

use crate::elf::{
    u16_at, u32_at, u64_at, EHDR_SIZE, EM_X86_64, ET_CORE, PHDR_SIZE, PN_XNUM, PT_LOAD, PT_NOTE,
    SHDR_SIZE,
};
use crate::error::malformed as bad;
use crate::note::{decode_notes, NoteEntry};
use crate::{CoreError, CoreNote, PrStatus, CORE_NOTE_NAME, NT_PRSTATUS, VMCOREINFO_NOTE_NAME};

/// Most program headers we accept.
const MAX_PHNUM: u64 = 1 << 20;
/// Longest VMCOREINFO note.
const MAX_VMCOREINFO: usize = 1 << 20;

/// One `PT_LOAD` segment: `memsz` bytes of memory at `paddr`, the first `filesz` of them
/// at `offset` in the file and the rest zeros. Checked: `filesz <= memsz`, `paddr +
/// memsz` does not overflow, and the first `present` file bytes lie inside the file —
/// all `filesz` of them unless the file was cut short (see [`CoreLayout::missing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// How many of the `filesz` file bytes the file holds: `filesz`, or fewer when the
    /// file ends inside the segment (a dump cut short). `[paddr + present, paddr +
    /// filesz)` is then missing — unknown, not zeros.
    pub present: u64,
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr` (the kernel's virtual address, where the writer knew one).
    pub vaddr: u64,
    /// `p_paddr`: the guest-physical address.
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
}

/// A parsed core: where everything is in the file the caller holds. The notes are kept
/// as file ranges; pass the same bytes to [`CoreLayout::notes`] to read them.
#[derive(Clone, Debug)]
pub struct CoreLayout {
    loads: Vec<LoadSegment>,
    notes: Vec<NoteEntry>,
    prstatus: Vec<PrStatus>,
    vmcoreinfo: Option<String>,
    warnings: Vec<String>,
}

/// Guest-physical memory a core's headers promise but its file does not hold: the
/// segment's bytes past the end of a file that was cut short (a disk that filled while
/// dumping, a transfer that stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingRange {
    /// First missing guest-physical address.
    pub paddr: u64,
    /// Bytes missing.
    pub len: u64,
    /// The `PT_LOAD` segment (its index among [`CoreLayout::loads`]).
    pub segment: usize,
}

impl CoreLayout {
    /// Parses the core file `b`: its header, program headers (`PN_XNUM` included),
    /// `PT_LOAD` segments and notes, and decodes every `NT_PRSTATUS` and the first
    /// `VMCOREINFO` note. Refuses what is not a physical-memory core of an x86-64
    /// machine, and anything that does not fit the file — except what a dump cut short
    /// loses: segments (and notes) past the end of the file are kept as far as the file
    /// holds them, the rest is [`missing`](Self::missing) and said in
    /// [`warnings`](Self::warnings), as crash and drgn read such dumps.
    pub fn parse(b: &[u8]) -> Result<CoreLayout, CoreError> {
        let (loads, notes, warnings) = parse_headers(b)?;
        let mut prstatus = Vec::new();
        let mut vmcoreinfo = None;
        for n in &notes {
            let desc = &b[n.desc.clone()];
            if n.name == CORE_NOTE_NAME && n.n_type == NT_PRSTATUS {
                prstatus.push(PrStatus::decode(prstatus.len(), desc)?);
            } else if n.name == VMCOREINFO_NOTE_NAME && vmcoreinfo.is_none() {
                if desc.len() > MAX_VMCOREINFO {
                    return Err(bad(format!(
                        "VMCOREINFO note of {} bytes is over 1 MiB",
                        desc.len()
                    )));
                }
                let text = String::from_utf8_lossy(desc);
                vmcoreinfo = Some(text.trim_end_matches('\0').to_string());
            }
        }
        Ok(CoreLayout {
            loads,
            notes,
            prstatus,
            vmcoreinfo,
            warnings,
        })
    }

    /// The guest-physical ranges the headers promise but the file does not hold,
    /// ascending by segment. Empty for a whole core.
    pub fn missing(&self) -> Vec<MissingRange> {
        self.loads
            .iter()
            .enumerate()
            .filter(|(_, l)| l.present < l.filesz)
            .map(|(segment, l)| MissingRange {
                paddr: l.paddr + l.present,
                len: l.filesz - l.present,
                segment,
            })
            .collect()
    }

    /// What is wrong with a core that was read anyway: the file ends before its
    /// segments or notes do. Empty for a whole core.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The `PT_LOAD` segments with memory (`p_memsz > 0`), in file order.
    pub fn loads(&self) -> &[LoadSegment] {
        &self.loads
    }

    /// Every note, in file order. `file` must be the bytes this layout was parsed from
    /// (notes that do not lie inside other bytes read as empty).
    pub fn notes<'a>(&'a self, file: &'a [u8]) -> impl Iterator<Item = CoreNote<'a>> + 'a {
        self.notes.iter().map(move |n| CoreNote {
            name: &n.name,
            n_type: n.n_type,
            desc: file.get(n.desc.clone()).unwrap_or_default(),
        })
    }

    /// The descriptor of the first note with this name and type.
    pub fn note<'a>(&'a self, file: &'a [u8], name: &str, n_type: u32) -> Option<&'a [u8]> {
        self.notes(file)
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
}

type Headers = (Vec<LoadSegment>, Vec<NoteEntry>, Vec<String>);

fn parse_headers(b: &[u8]) -> Result<Headers, CoreError> {
    let short = || bad("truncated ELF header");
    if b.len() < EHDR_SIZE {
        return Err(bad(format!(
            "{} bytes is too short for an ELF header",
            b.len()
        )));
    }
    if &b[..4] != b"\x7fELF" {
        return Err(bad("no ELF magic"));
    }
    match b[4] {
        2 => {}
        1 => return Err(bad("32-bit ELF (ELFCLASS32); need an x86-64 core")),
        c => return Err(bad(format!("unknown ELF class {c}"))),
    }
    if b[5] != 1 {
        return Err(bad(format!(
            "ELF data encoding {} is not little-endian",
            b[5]
        )));
    }
    let e_type = u16_at(b, 16).ok_or_else(short)?;
    if e_type != ET_CORE {
        return Err(bad(format!("e_type {e_type} is not ET_CORE (4)")));
    }
    let machine = u16_at(b, 18).ok_or_else(short)?;
    if machine != EM_X86_64 {
        return Err(bad(format!(
            "e_machine {machine} is not x86-64 ({EM_X86_64})"
        )));
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
                bad(format!(
                    "e_phnum is PN_XNUM but section header 0 at {shoff:#x} is outside the file"
                ))
            })?;
        u32_at(b, sh0 + 44).ok_or_else(short)? as u64
    } else {
        phnum16 as u64
    };
    if phnum == 0 {
        return Err(bad("no program headers"));
    }
    if phnum > MAX_PHNUM {
        return Err(bad(format!(
            "{phnum} program headers is more than the {MAX_PHNUM} accepted"
        )));
    }
    if phentsize as usize != PHDR_SIZE {
        return Err(bad(format!("e_phentsize {phentsize} is not {PHDR_SIZE}")));
    }
    let ph_end = phnum
        .checked_mul(PHDR_SIZE as u64)
        .and_then(|n| n.checked_add(phoff));
    if ph_end.is_none_or(|e| e > b.len() as u64) {
        return Err(bad(format!(
            "{phnum} program headers at {phoff:#x} extend past the end of the file ({} bytes)",
            b.len()
        )));
    }
    let file_len = b.len() as u64;
    let mut loads = Vec::new();
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    // File bytes the segments need beyond the end of the file, and how many segments.
    let mut cut = (0u64, 0usize);
    for i in 0..phnum as usize {
        let ph = &b[phoff as usize + i * PHDR_SIZE..][..PHDR_SIZE];
        let p_type = u32_at(ph, 0).ok_or_else(short)?;
        let offset = u64_at(ph, 8).ok_or_else(short)?;
        let vaddr = u64_at(ph, 16).ok_or_else(short)?;
        let paddr = u64_at(ph, 24).ok_or_else(short)?;
        let filesz = u64_at(ph, 32).ok_or_else(short)?;
        let memsz = u64_at(ph, 40).ok_or_else(short)?;
        let align = u64_at(ph, 48).ok_or_else(short)?;
        let in_file = offset.checked_add(filesz).is_some_and(|e| e <= file_len);
        match p_type {
            PT_LOAD => {
                if filesz > memsz {
                    return Err(bad(format!(
                        "PT_LOAD {i}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}"
                    )));
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(bad(format!(
                        "PT_LOAD {i}: physical range {paddr:#x}+{memsz:#x} overflows"
                    )));
                }
                // A file cut short holds a segment only up to its end: the rest is
                // missing (not zeros), the segment's zero tail still zeros.
                let present = if in_file {
                    filesz
                } else {
                    file_len.saturating_sub(offset).min(filesz)
                };
                if present < filesz {
                    cut.0 = cut.0.saturating_add(filesz - present);
                    cut.1 += 1;
                }
                if memsz > 0 {
                    loads.push(LoadSegment {
                        present,
                        offset,
                        vaddr,
                        paddr,
                        filesz,
                        memsz,
                    });
                }
            }
            PT_NOTE => {
                let a = if align == 8 { 8 } else { 4 };
                let present = if in_file {
                    filesz
                } else {
                    let present = file_len.saturating_sub(offset).min(filesz);
                    warnings.push(format!(
                        "PT_NOTE {i}: the file ends {:#x} bytes into its {filesz:#x} bytes of notes; notes past the end are lost",
                        present
                    ));
                    present
                };
                // Bounded by the file length, so it fits a usize.
                decode_notes(
                    b,
                    offset as usize,
                    present as usize,
                    a,
                    i,
                    !in_file,
                    &mut notes,
                )?;
            }
            _ => {}
        }
    }
    if loads.len() > 1 && loads.iter().all(|l| l.paddr == 0) {
        return Err(bad(
            "every PT_LOAD has p_paddr 0: not a physical-memory core (a process core, or a dump taken with paging)",
        ));
    }
    if cut.1 > 0 {
        warnings.insert(
            0,
            format!(
                "the file ({file_len} bytes) ends before {} of its PT_LOAD segments do: {:#x} bytes of guest memory are missing (a dump cut short?)",
                cut.1, cut.0
            ),
        );
    }
    Ok((loads, notes, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{PN_XNUM, SHDR_SIZE};
    use crate::{write_core_to, CoreInput, ElfNote, RamRange, UserRegs};
    use proptest::prelude::*;

    /// RAM for [`sample`]: 8 KiB of data and a page of zeros at 0, a page of 0xcc at 1 MiB.
    fn sample_ram() -> (Vec<u8>, Vec<u8>) {
        let mut low: Vec<u8> = (0..=255u8).cycle().take(8192).collect();
        low.resize(12288, 0);
        (low, vec![0xcc; 4096])
    }

    fn sample_input<'a>(low: &'a [u8], high: &'a [u8]) -> CoreInput<'a> {
        let regs = UserRegs {
            rip: 0xffff_ffff_8020_1234,
            rsp: 0xffff_c900_0000_3f00,
            rax: 42,
            gs: 7,
            ..Default::default()
        };
        CoreInput {
            ram: vec![
                RamRange { gpa: 0, bytes: low },
                RamRange {
                    gpa: 0x10_0000,
                    bytes: high,
                },
            ],
            prstatus: vec![
                PrStatus {
                    index: 0,
                    pid: 1,
                    regs,
                },
                PrStatus {
                    index: 1,
                    pid: 2,
                    regs: UserRegs::default(),
                },
            ],
            vmcoreinfo: Some("OSRELEASE=6.1\nPAGESIZE=4096\n\0\0".into()),
            notes: vec![
                ElfNote::ambulance(0x414d, vec![1, 2, 3]),
                // Type 1 but not CORE: not a prstatus.
                ElfNote {
                    name: "GNU".into(),
                    n_type: 1,
                    desc: vec![0; 16],
                },
            ],
            direct_map_base: Some(0xffff_8880_0000_0000),
            windows: vec![],
            zero: Vec::new(),
        }
    }

    fn sample() -> Vec<u8> {
        let (low, high) = sample_ram();
        let mut out = Vec::new();
        write_core_to(&mut out, &sample_input(&low, &high)).unwrap();
        out
    }

    #[test]
    fn written_cores_read_back() {
        let (low, high) = sample_ram();
        let input = sample_input(&low, &high);
        let bytes = sample();
        let core = CoreLayout::parse(&bytes).unwrap();
        assert_eq!(core.prstatus(), &input.prstatus[..]);
        assert_eq!(core.prstatus()[0].regs.rip, 0xffff_ffff_8020_1234);
        assert_eq!(core.vmcoreinfo(), Some("OSRELEASE=6.1\nPAGESIZE=4096\n"));
        assert_eq!(
            core.note(&bytes, "AMBULANCE", 0x414d),
            Some(&[1u8, 2, 3][..])
        );
        assert_eq!(core.note(&bytes, "AMBULANCE", 0x414e), None);
        let names: Vec<_> = core.notes(&bytes).map(|n| (n.name, n.n_type)).collect();
        assert_eq!(
            names,
            [
                ("CORE", 1),
                ("CORE", 1),
                ("VMCOREINFO", 0),
                ("AMBULANCE", 0x414d),
                ("GNU", 1)
            ]
        );
        let loads: Vec<_> = core
            .loads()
            .iter()
            .map(|l| (l.vaddr, l.paddr, l.filesz, l.memsz))
            .collect();
        assert_eq!(
            loads,
            [
                (0xffff_8880_0000_0000, 0, 0x2000, 0x3000),
                (0xffff_8880_0010_0000, 0x10_0000, 0x1000, 0x1000)
            ]
        );
        let l = core.loads()[0];
        assert_eq!(&bytes[l.offset as usize..][..4], &[0, 1, 2, 3]);
        // Other bytes than the core's: notes read as empty rather than panic.
        assert!(core.notes(&[]).all(|n| n.desc.is_empty()));
    }

    fn reason(bytes: &[u8]) -> String {
        match CoreLayout::parse(bytes) {
            Err(CoreError::Malformed { reason }) => reason,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let good = sample();
        assert!(reason(&good[..10]).contains("too short"));
        let mut b = good.clone();
        b[0] = 0;
        assert!(reason(&b).contains("magic"));
        let mut b = good.clone();
        b[4] = 1;
        assert!(reason(&b).contains("32-bit"));
        let mut b = good.clone();
        b[5] = 2;
        assert!(reason(&b).contains("little-endian"));
        let mut b = good.clone();
        b[16] = 2;
        assert!(reason(&b).contains("ET_CORE"));
        let mut b = good.clone();
        b[18] = 3;
        assert!(reason(&b).contains("x86-64"));
        let mut b = good.clone();
        b[54] = 32;
        assert!(reason(&b).contains("e_phentsize 32"));
        // Huge phnum through PN_XNUM with a bogus section header offset.
        let mut b = good.clone();
        b[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(reason(&b).contains("PN_XNUM"));
        // filesz > memsz in the second program header (the first PT_LOAD).
        let mut b = good.clone();
        let ph = EHDR_SIZE + PHDR_SIZE;
        b[ph + 40..ph + 48].copy_from_slice(&1u64.to_le_bytes());
        assert!(reason(&b).contains("exceeds p_memsz"));
        // A physical range that overflows.
        let mut b = good.clone();
        b[ph + 24..ph + 32].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(reason(&b).contains("overflows"));
        // A short NT_PRSTATUS.
        let (low, high) = sample_ram();
        let mut w = sample_input(&low, &high);
        w.prstatus.clear();
        w.notes.insert(
            0,
            ElfNote {
                name: "CORE".into(),
                n_type: NT_PRSTATUS,
                desc: vec![0; 100],
            },
        );
        let mut short = Vec::new();
        write_core_to(&mut short, &w).unwrap();
        assert!(reason(&short).contains("NT_PRSTATUS"));
        // A note whose descriptor runs past its segment.
        let mut b = good.clone();
        let notes_at = EHDR_SIZE + 3 * PHDR_SIZE;
        b[notes_at + 4..notes_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(&b).contains("runs past the segment"));
        // A note with an absurd name.
        let mut b = good.clone();
        b[notes_at..notes_at + 4].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(reason(&b).contains("100000-byte name"));
        // No program headers.
        let mut b = good.clone();
        b[56..58].copy_from_slice(&0u16.to_le_bytes());
        assert!(reason(&b).contains("no program headers"));
        // Program headers past the end.
        let mut b = good[..EHDR_SIZE + PHDR_SIZE].to_vec();
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        assert!(reason(&b).contains("extend past the end of the file"));
    }

    /// A dump cut short (disk full, a transfer that stopped) is read as far as it goes:
    /// what the file lacks is missing, not zeros, and the warnings say so.
    #[test]
    fn truncated_cores_keep_what_is_there() {
        let good = sample();
        let whole = CoreLayout::parse(&good).unwrap();
        assert!(whole.missing().is_empty() && whole.warnings().is_empty());
        // One byte short: the last byte of the last segment (0x10_0000 + 0xfff) is missing.
        let core = CoreLayout::parse(&good[..good.len() - 1]).unwrap();
        assert_eq!(
            core.missing(),
            vec![MissingRange {
                paddr: 0x10_0fff,
                len: 1,
                segment: 1
            }]
        );
        assert!(
            core.warnings()[0].contains("ends before 1 of its PT_LOAD segments"),
            "{:?}",
            core.warnings()
        );
        assert_eq!(core.loads()[1].present, 0xfff);
        assert_eq!(core.prstatus().len(), 2, "the notes are all there");
        // Cut inside the first segment: it keeps its first bytes, its zero tail stays
        // zeros (it is not in the file), the second segment is missing entirely.
        let l0 = whole.loads()[0];
        let cut = l0.offset as usize + 0x100;
        let core = CoreLayout::parse(&good[..cut]).unwrap();
        assert_eq!(
            core.missing(),
            vec![
                MissingRange {
                    paddr: 0x100,
                    len: 0x2000 - 0x100,
                    segment: 0
                },
                MissingRange {
                    paddr: 0x10_0000,
                    len: 0x1000,
                    segment: 1
                }
            ]
        );
        assert_eq!(core.loads()[0].memsz, 0x3000);
        // Cut inside the notes: the notes before the cut survive, the rest are lost.
        let notes_at = EHDR_SIZE + 3 * PHDR_SIZE;
        let core = CoreLayout::parse(&good[..notes_at + 400]).unwrap();
        assert_eq!(core.prstatus().len(), 1, "the second NT_PRSTATUS is cut");
        assert!(core.vmcoreinfo().is_none());
        assert!(core.warnings().iter().any(|w| w.contains("PT_NOTE")));
        assert_eq!(core.missing().len(), 2);
        // Headers alone: every byte of memory missing, nothing refused.
        let core = CoreLayout::parse(&good[..notes_at]).unwrap();
        assert!(core.prstatus().is_empty());
        assert_eq!(
            core.missing().iter().map(|m| m.len).sum::<u64>(),
            0x2000 + 0x1000
        );
    }

    #[test]
    fn pn_xnum_reads_the_count_from_section_header_0() {
        let mut b = sample();
        let shoff = b.len();
        let mut sh = [0u8; SHDR_SIZE];
        sh[44..48].copy_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&sh);
        b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        let core = CoreLayout::parse(&b).unwrap();
        assert_eq!(core.loads().len(), 2);
    }

    #[test]
    fn process_cores_are_refused() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let w = CoreInput {
            ram: vec![
                RamRange { gpa: 0, bytes: &a },
                RamRange { gpa: 0, bytes: &b },
            ],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_core_to(&mut out, &w).unwrap();
        assert!(reason(&out).contains("p_paddr 0"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn damaged_cores_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
            cut in any::<usize>(),
        ) {
            let mut bytes = sample();
            for (at, v) in flips {
                let at = at % bytes.len();
                bytes[at] = v;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(core) = CoreLayout::parse(&bytes) {
                let _ = core.notes(&bytes).map(|n| n.desc.len()).sum::<usize>();
                for l in core.loads() {
                    prop_assert!(l.present <= l.filesz);
                    prop_assert!(l.offset + l.present <= bytes.len() as u64 || l.present == 0);
                    prop_assert!(l.filesz <= l.memsz);
                }
            }
        }
    }
}
