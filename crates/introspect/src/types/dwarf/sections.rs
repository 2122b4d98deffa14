//! Loading an ELF's debug sections for gimli: the bytes of the file however they are
//! held, the sections as ranges of them (inflated when compressed), and the reader type
//! every part of the DWARF code reads through.

use std::fmt::Debug;
use std::io::Read as _;
use std::ops::Deref;
use std::sync::Arc;

use gimli::{RunTimeEndian, SectionId};
use goblin::elf::Elf;

use crate::{Error, Result};

/// The bytes of an ELF file, however they are held. DWARF sections borrow from it
/// without copying (except compressed sections, which are inflated).
pub enum ElfBytes {
    /// Bytes that live for the whole program (e.g. `include_bytes!`).
    Static(&'static [u8]),
    /// A read-only memory mapping of a file.
    Mapped(memmap2::Mmap),
    /// Bytes on the heap.
    Owned(Vec<u8>),
}

impl Deref for ElfBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ElfBytes::Static(b) => b,
            ElfBytes::Mapped(m) => m,
            ElfBytes::Owned(v) => v,
        }
    }
}

impl Debug for ElfBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ElfBytes::Static(_) => "static",
            ElfBytes::Mapped(_) => "mapped",
            ElfBytes::Owned(_) => "owned",
        };
        write!(f, "ElfBytes({kind}, {} bytes)", self.len())
    }
}

/// One DWARF section: a range of bytes kept alive by an `Arc`.
#[derive(Clone)]
pub(super) struct Sect {
    owner: Arc<ElfBytes>,
    start: usize,
    len: usize,
}

impl Deref for Sect {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // The range was checked against the owner's length when the Sect was made.
        &self.owner[self.start..self.start + self.len]
    }
}

impl Debug for Sect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sect({:#x}+{:#x})", self.start, self.len)
    }
}

// SAFETY: `Sect` derefs to a range of the bytes owned by an `ElfBytes` behind an `Arc`.
// Those bytes never move or change while the `Arc` lives: a `'static` slice, a read-only
// mapping that is unmapped only on drop, or a `Vec` that is never touched after creation.
// Moving a `Sect` moves the `Arc` pointer, not the bytes, so the slice stays put.
unsafe impl gimli::StableDeref for Sect {}
// SAFETY: cloning a `Sect` clones the `Arc` and the range: the clone derefs to the very
// same bytes, which stay put as argued above.
unsafe impl gimli::CloneStableDeref for Sect {}

/// The gimli reader over a [`Sect`].
pub(super) type R = gimli::EndianReader<RunTimeEndian, Sect>;

/// Largest inflated debug section.
const MAX_INFLATED: u64 = 4 << 30;

/// Reads an ELF section's bytes, inflating compressed sections.
fn section_bytes(owner: &Arc<ElfBytes>, elf: &Elf<'_>, id: SectionId, path: &str) -> Result<Sect> {
    let bad = |reason: String| Error::BadElf {
        path: path.to_string(),
        reason,
    };
    let name = id.name();
    let zname = format!(".z{}", &name[1..]);
    let empty = Sect {
        owner: owner.clone(),
        start: 0,
        len: 0,
    };
    let found = elf.section_headers.iter().find_map(|sh| {
        let n = elf.shdr_strtab.get_at(sh.sh_name)?;
        if n == name {
            Some((sh, false))
        } else if n == zname {
            Some((sh, true))
        } else {
            None
        }
    });
    let Some((sh, gnu_z)) = found else {
        return Ok(empty);
    };
    if sh.sh_type == goblin::elf::section_header::SHT_NOBITS || sh.sh_size == 0 {
        return Ok(empty);
    }
    let start = usize::try_from(sh.sh_offset).map_err(|_| bad(format!("{name}: bad offset")))?;
    let len = usize::try_from(sh.sh_size).map_err(|_| bad(format!("{name}: bad size")))?;
    if start.checked_add(len).is_none_or(|end| end > owner.len()) {
        return Err(bad(format!(
            "section {} ({len} bytes at file offset {start:#x}) extends past the end of the \
             file ({} bytes): truncated?",
            if gnu_z { &zname } else { name },
            owner.len()
        )));
    }
    let raw = &owner[start..start + len];
    let compressed = sh.sh_flags & u64::from(goblin::elf::section_header::SHF_COMPRESSED) != 0;
    if !compressed && !gnu_z {
        return Ok(Sect {
            owner: owner.clone(),
            start,
            len,
        });
    }
    let (size, stream) = if gnu_z {
        // "ZLIB", 8-byte big-endian size, zlib stream.
        if raw.len() < 12 || &raw[..4] != b"ZLIB" {
            return Err(bad(format!("{zname}: no ZLIB header")));
        }
        let size = u64::from_be_bytes(raw[4..12].try_into().expect("8 bytes"));
        (size, &raw[12..])
    } else {
        // Elf32_Chdr / Elf64_Chdr.
        let le = elf.little_endian;
        let rd32 = |b: &[u8]| {
            let a: [u8; 4] = b.try_into().expect("4 bytes");
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let rd64 = |b: &[u8]| {
            let a: [u8; 8] = b.try_into().expect("8 bytes");
            if le {
                u64::from_le_bytes(a)
            } else {
                u64::from_be_bytes(a)
            }
        };
        let (ch_type, size, header) = if elf.is_64 {
            if raw.len() < 24 {
                return Err(bad(format!("{name}: truncated compression header")));
            }
            (rd32(&raw[0..4]), rd64(&raw[8..16]), 24)
        } else {
            if raw.len() < 12 {
                return Err(bad(format!("{name}: truncated compression header")));
            }
            (rd32(&raw[0..4]), u64::from(rd32(&raw[4..8])), 12)
        };
        match ch_type {
            1 => {}
            2 => {
                return Err(bad(format!(
                    "{name} is zstd-compressed, which is not supported; decompress it with \
                     `objcopy --decompress-debug-sections`"
                )))
            }
            t => return Err(bad(format!("{name}: unknown compression type {t}"))),
        }
        (size, &raw[header..])
    };
    // zlib cannot expand more than ~1032:1; anything claiming more is lying.
    let limit = (stream.len() as u64).saturating_mul(1100).min(MAX_INFLATED);
    if size > limit {
        return Err(bad(format!(
            "{name}: claims {size} bytes inflated from {} compressed",
            stream.len()
        )));
    }
    let mut out = Vec::with_capacity(size as usize);
    flate2::read::ZlibDecoder::new(stream)
        .take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("{name}: cannot inflate: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!(
            "{name}: inflated to {} bytes, header says {size}",
            out.len()
        )));
    }
    let len = out.len();
    Ok(Sect {
        owner: Arc::new(ElfBytes::Owned(out)),
        start: 0,
        len,
    })
}

/// The sections types are read from.
pub(super) fn for_types(id: SectionId) -> bool {
    matches!(
        id,
        SectionId::DebugInfo
            | SectionId::DebugAbbrev
            | SectionId::DebugStr
            | SectionId::DebugStrOffsets
            | SectionId::DebugLineStr
            | SectionId::DebugAddr
    )
}

/// The sections source lines and inlined frames are read from: those of types, the line
/// programs, and the address ranges of units and functions.
pub(super) fn for_lines(id: SectionId) -> bool {
    for_types(id)
        || matches!(
            id,
            SectionId::DebugLine
                | SectionId::DebugAranges
                | SectionId::DebugRanges
                | SectionId::DebugRngLists
        )
}

/// The DWARF sections `wanted` (one of [`for_types`], [`for_lines`]), as gimli readers
/// over `bytes` (inflated where compressed); the others are left empty, so nothing is
/// inflated that is not read.
pub(super) fn load(
    bytes: &Arc<ElfBytes>,
    elf: &Elf<'_>,
    path: &str,
    wanted: fn(SectionId) -> bool,
) -> Result<gimli::Dwarf<R>> {
    let endian = if elf.little_endian {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    gimli::Dwarf::load(|id| -> Result<R> {
        let sect = if wanted(id) {
            section_bytes(bytes, elf, id, path)?
        } else {
            Sect {
                owner: bytes.clone(),
                start: 0,
                len: 0,
            }
        };
        Ok(gimli::EndianReader::new(sect, endian))
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{c_fixture, open_owned, section};
    use super::*;
    use crate::types::TypeSource;
    use ambulance_test_kernel::ELF;

    #[test]
    fn compressed_sections() {
        c_fixture(
            include_bytes!("../../../testdata/c-dwarf4-zlib.elf"),
            "c-dwarf4-zlib.elf",
        );
        c_fixture(
            include_bytes!("../../../testdata/c-dwarf4-zlib-gnu.elf"),
            "c-dwarf4-zlib-gnu.elf",
        );
    }

    #[test]
    fn hostile_files_give_clear_errors() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.resize(2000, 0);
        let random: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("first 1000 bytes", ELF[..1000].to_vec()),
            ("png", png),
            ("random", random),
        ] {
            match open_owned(bytes, what) {
                Err(Error::BadElf { path, reason }) => {
                    assert_eq!(path, what);
                    assert!(!reason.is_empty());
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        // No DWARF: rename .debug_info.
        let mut stripped = ELF.to_vec();
        let (shstr, len) = section(ELF, ".shstrtab");
        let at = stripped[shstr..shstr + len]
            .windows(11)
            .position(|w| w == b".debug_info")
            .unwrap();
        stripped[shstr + at + 1] = b'x';
        match open_owned(stripped, "stripped") {
            Err(Error::Dwarf { reason, .. }) => assert!(reason.contains(".debug_info"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A section claiming to extend past the end of the file.
        let mut short = ELF.to_vec();
        let elf = Elf::parse(ELF).unwrap();
        let idx = elf
            .section_headers
            .iter()
            .position(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".debug_info"))
            .unwrap();
        let shdr = elf.header.e_shoff as usize + idx * 64;
        short[shdr + 32..shdr + 40].copy_from_slice(&(ELF.len() as u64).to_le_bytes());
        match open_owned(short, "short") {
            Err(Error::BadElf { reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A relocatable object.
        let mut rel = include_bytes!("../../../testdata/c-dwarf5.elf").to_vec();
        rel[16] = 1; // e_type = ET_REL
        match open_owned(rel, "module.ko") {
            Err(Error::BadElf { reason, .. }) => assert!(reason.contains("relocat"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Abbreviations wiped: units unreadable, lookups say so.
        let mut wiped = ELF.to_vec();
        let (abbrev, len) = section(ELF, ".debug_abbrev");
        wiped[abbrev..abbrev + len].fill(0xff);
        let d = open_owned(wiped, "wiped").unwrap();
        match d.find("Task") {
            Err(Error::NoType { searched, .. }) => {
                assert!(searched.contains("unreadable"), "{searched}")
            }
            other => panic!("{other:?}"),
        }
    }
}
