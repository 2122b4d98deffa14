//! ELF core files of whole machines as [`PhysicalMemory`](super::PhysicalMemory): QEMU's
//! `dump-guest-memory`, kdump's `/proc/vmcore` (saved with `cp` or `makedumpfile -E`),
//! and the cores Ambulance writes.
//!
//! The format — headers, `PT_LOAD` segments, notes, `NT_PRSTATUS`, `VMCOREINFO`, every
//! bounds check — is [`ambulance_elfcore`]'s; this is the adapter that maps the file and
//! serves its `PT_LOAD` segments by `p_paddr` (the guest-physical address) through the
//! segment map, where `p_filesz < p_memsz` reading the rest as zeros. A malformed core is
//! [`Error::BadCore`] naming the file and what is wrong. A core cut short (a disk that
//! filled while dumping, a transfer that stopped) is read as far as it goes: what its
//! file lacks is a hole — reads there fail as unreadable, they never return zeros — and
//! [`ElfCore::missing`] and [`ElfCore::warnings`] say what is gone.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use ambulance_elfcore::elf::EHDR_SIZE;
use ambulance_elfcore::{CoreError, CoreLayout, CoreNote, PrStatus};

use super::{map_readonly, Backing, PhysRange, PhysicalMemory, SegSpec, SegmentMap};
use crate::{Error, Result};

/// An ELF core file, mapped read-only.
pub struct ElfCore {
    map: SegmentMap,
    layout: CoreLayout,
    missing: Vec<PhysRange>,
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
        let mut file = File::open(path).map_err(|e| io("cannot open core file", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot stat core file", e))?
            .len();
        let name = path.display().to_string();
        let backing = if len < EHDR_SIZE as u64 {
            // Too short for a header (and an empty file cannot be mapped): read what there
            // is and let the parser say what is wrong.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| io("cannot read core file", e))?;
            Backing::Owned(bytes)
        } else {
            Backing::Map(map_readonly(&file, 0, len).map_err(|e| io("cannot map core file", e))?)
        };
        Self::build(backing, format!("core file {name}"), &name)
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
        let layout = CoreLayout::parse(backing.bytes()).map_err(|e| bad_core(path, e))?;
        let mut specs = Vec::with_capacity(layout.loads().len());
        for l in layout.loads() {
            if l.present == l.filesz {
                specs.push(SegSpec {
                    start: l.paddr,
                    mem_size: l.memsz,
                    file_size: l.filesz,
                    backing: 0,
                    offset: l.offset as usize,
                });
                continue;
            }
            // Cut short: the bytes the file holds, a hole, then the zero tail (which
            // was never in the file). `present <= filesz <= memsz` and `paddr + memsz`
            // does not overflow: the reader checked.
            specs.push(SegSpec {
                start: l.paddr,
                mem_size: l.present,
                file_size: l.present,
                backing: 0,
                offset: l.offset as usize,
            });
            specs.push(SegSpec {
                start: l.paddr + l.filesz,
                mem_size: l.memsz - l.filesz,
                file_size: 0,
                backing: 0,
                offset: 0,
            });
        }
        let map = SegmentMap::new(vec![backing], specs, describe);
        // What is missing and not held by another segment (kdump maps some twice).
        let mut missing: Vec<PhysRange> = Vec::new();
        for m in layout.missing() {
            for r in map.holes_in(m.paddr, m.len) {
                match missing.last_mut() {
                    Some(last) if last.end() == r.start => last.size += r.size,
                    _ => missing.push(r),
                }
            }
        }
        missing.sort_by_key(|r| r.start);
        Ok(ElfCore {
            map,
            layout,
            missing,
        })
    }

    /// Guest-physical ranges the core's headers promise but its file does not hold
    /// (nor another segment), ascending: reads there fail. Empty for a whole core.
    pub fn missing(&self) -> &[PhysRange] {
        &self.missing
    }

    /// What is wrong with a core that was read anyway (see
    /// [`CoreLayout::warnings`]). Empty for a whole core.
    pub fn warnings(&self) -> &[String] {
        self.layout.warnings()
    }

    /// Every note, in file order.
    pub fn notes(&self) -> impl Iterator<Item = CoreNote<'_>> + '_ {
        self.layout.notes(self.map.backings[0].bytes())
    }

    /// The descriptor of the first note with this name and type.
    pub fn note(&self, name: &str, n_type: u32) -> Option<&[u8]> {
        self.layout.note(self.map.backings[0].bytes(), name, n_type)
    }

    /// The CPUs' registers, one entry per `NT_PRSTATUS` note.
    pub fn prstatus(&self) -> &[PrStatus] {
        self.layout.prstatus()
    }

    /// The `VMCOREINFO` note's text (trailing NULs removed, invalid UTF-8 replaced).
    pub fn vmcoreinfo(&self) -> Option<&str> {
        self.layout.vmcoreinfo()
    }

    /// The offset in the core file of guest-physical `pa`, when the file holds its byte
    /// (for tools that patch or carve a core).
    pub fn file_offset(&self, pa: u64) -> Option<u64> {
        self.map.backing_offset(pa).map(|(_, offset)| offset)
    }
}

impl PhysicalMemory for ElfCore {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        self.map.read(pa, buf)
    }
    #[inline]
    fn slice(&self, pa: u64, len: usize) -> Option<&[u8]> {
        self.map.slice(pa, len)
    }
    fn ranges(&self) -> Vec<PhysRange> {
        self.map.ranges()
    }
    fn describe(&self) -> String {
        self.map.name().to_string()
    }
    fn missing(&self) -> Vec<PhysRange> {
        self.missing.clone()
    }
    fn warnings(&self) -> Vec<String> {
        self.layout.warnings().to_vec()
    }
}

/// The reader's complaint as this crate's error, naming the file.
fn bad_core(path: &str, e: CoreError) -> Error {
    let reason = match e {
        CoreError::Malformed { reason } => reason,
        other => other.to_string(),
    };
    Error::BadCore {
        path: path.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{PhysRange, PhysicalMemory};
    use ambulance_elfcore::{write_core_to, CoreInput, ElfNote, RamRange, UserRegs};
    use proptest::prelude::*;

    /// Guest RAM and notes for a core, owned (the writer borrows the RAM).
    #[derive(Clone, Debug, Default)]
    struct Sample {
        /// (guest-physical start, bytes)
        ram: Vec<(u64, Vec<u8>)>,
        prstatus: Vec<PrStatus>,
        vmcoreinfo: Option<String>,
        notes: Vec<ElfNote>,
    }

    impl Sample {
        fn write(&self) -> Vec<u8> {
            let input = CoreInput {
                ram: self
                    .ram
                    .iter()
                    .map(|(gpa, bytes)| RamRange { gpa: *gpa, bytes })
                    .collect(),
                prstatus: self.prstatus.clone(),
                vmcoreinfo: self.vmcoreinfo.clone(),
                notes: self.notes.clone(),
                direct_map_base: Some(0xffff_8880_0000_0000),
                windows: vec![],
                zero: Vec::new(),
            };
            let mut out = Vec::new();
            write_core_to(&mut out, &input).unwrap();
            out
        }
    }

    fn sample() -> Sample {
        let regs = UserRegs {
            rip: 0xffff_ffff_8020_1234,
            rsp: 0xffff_c900_0000_3f00,
            rax: 42,
            gs: 7,
            ..Default::default()
        };
        let mut low: Vec<u8> = (0..=255u8).cycle().take(8192).collect();
        low.resize(8192 + 4096, 0);
        Sample {
            ram: vec![(0, low), (0x10_0000, vec![0xcc; 4096])],
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
                // type 1 but not CORE: not a prstatus
                ElfNote {
                    name: "GNU".into(),
                    n_type: 1,
                    desc: vec![0; 16],
                },
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
        std::fs::write(&path, b"").unwrap();
        let err = ElfCore::open(&path).err().unwrap();
        assert!(err.to_string().contains("0 bytes is too short"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The reader's checks are `ambulance_elfcore`'s (tested there); here, that what it
    /// refuses comes out as `BadCore` naming the source and the reason.
    #[test]
    fn malformed_cores_are_bad_core_errors() {
        let mut bad = sample().write();
        bad[18] = 3; // e_machine
        let err = ElfCore::parse(&bad).err().unwrap();
        match &err {
            Error::BadCore { path, reason } => {
                assert_eq!(path, "<bytes>");
                assert!(reason.contains("x86-64"), "{reason}");
            }
            e => panic!("unexpected error {e}"),
        }
        assert!(
            err.to_string()
                .starts_with("<bytes>: not a usable ELF core: e_machine 3"),
            "{err}"
        );
    }

    /// A core cut short reads as far as its file goes; past the cut, reads fail (the
    /// bytes are unknown, not zeros), and the core says which ranges are missing.
    #[test]
    fn truncated_cores_have_holes_not_zeros() {
        let good = sample().write();
        let whole = ElfCore::parse(&good).unwrap();
        assert!(whole.missing().is_empty() && whole.warnings().is_empty());
        // The sample's RAM: [0, 0x2000) data + a zero page, then a page of 0xcc at 1 MiB.
        // Cut 0x1000 bytes into the low segment's file bytes.
        let at = whole.file_offset(0).unwrap() as usize;
        let core = ElfCore::parse(&good[..at + 0x1000]).unwrap();
        let mut b = [0u8; 2];
        core.read(0xffe, &mut b).unwrap();
        assert_eq!(b, [0xfe, 0xff]);
        let err = core.read(0xfff, &mut b).unwrap_err();
        assert!(matches!(err, Error::Unmapped { .. }), "{err}");
        assert!(core.read(0x1000, &mut b).is_err(), "a hole, not zeros");
        assert!(core.slice(0x1800, 8).is_none());
        assert_eq!(
            core.slice(0x2800, 4),
            Some(&[0u8; 4][..]),
            "the zero tail stays"
        );
        assert!(core.read(0x10_0000, &mut b).is_err());
        assert_eq!(
            core.missing(),
            &[
                PhysRange {
                    start: 0x1000,
                    size: 0x1000
                },
                PhysRange {
                    start: 0x10_0000,
                    size: 0x1000
                }
            ]
        );
        assert_eq!(PhysicalMemory::missing(&core), core.missing().to_vec());
        assert!(
            core.warnings()[0].contains("missing"),
            "{:?}",
            core.warnings()
        );
        assert_eq!(core.prstatus().len(), 2);
    }

    fn arb_core() -> impl Strategy<Value = Sample> {
        (
            proptest::collection::vec(
                (
                    1u64..1 << 20,
                    proptest::collection::vec(any::<u8>(), 0..64),
                    0usize..64,
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
            .prop_map(|(loads, notes)| Sample {
                // Each range: its bytes, then `extra` zeros.
                ram: loads
                    .into_iter()
                    .map(|(pa, mut bytes, extra)| {
                        bytes.resize(bytes.len() + extra, 0);
                        (pa, bytes)
                    })
                    .collect(),
                notes: notes
                    .into_iter()
                    .map(|(name, n_type, desc)| ElfNote { name, n_type, desc })
                    .collect(),
                ..Default::default()
            })
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
            for (pa, bytes) in &w.ram {
                let mut buf = vec![0u8; bytes.len()];
                prop_assert!(core.read(*pa, &mut buf).is_ok() || bytes.is_empty());
            }
            prop_assert!(core.prstatus().is_empty() || w.notes.iter().any(|n| n.name == "CORE"));
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
