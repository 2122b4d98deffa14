//! ELF notes: their encoding and decoding, the note names a core uses, and every note type
//! number — the standard ones and Ambulance's own, which live here and nowhere else.

use std::ops::Range;

use crate::elf::u32_at;
use crate::error::malformed as bad;
use crate::CoreError;

/// Owner name of the kernel's notes (`NT_PRSTATUS`).
pub const CORE_NOTE_NAME: &str = "CORE";
/// `n_type` of a CPU's register note (name [`CORE_NOTE_NAME`], an `elf_prstatus`).
pub const NT_PRSTATUS: u32 = 1;
/// Owner name of the kernel's `VMCOREINFO` note.
pub const VMCOREINFO_NOTE_NAME: &str = "VMCOREINFO";
/// `n_type` of the `VMCOREINFO` note.
pub const NT_VMCOREINFO: u32 = 0;

/// Owner name of Ambulance's own notes.
pub const NOTE_NAME: &str = "AMBULANCE";
/// Ambulance note: the registration descriptor (the host's boot-time copy).
pub const NT_AMBULANCE_DESCRIPTOR: u32 = 1;
/// Ambulance note: the failure, as the report's JSON.
pub const NT_AMBULANCE_FAILURE: u32 = 2;
/// Ambulance note: the guest facts, as the report's JSON.
pub const NT_AMBULANCE_GUEST: u32 = 3;
/// Ambulance note: the descriptor's guest-physical address (a little-endian `u64`).
pub const NT_AMBULANCE_DESCRIPTOR_GPA: u32 = 4;

/// Most notes the reader accepts, over all note segments.
const MAX_NOTES: usize = 1 << 16;
/// Longest note name the reader accepts.
const MAX_NOTE_NAME: usize = 4096;

/// A note to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfNote {
    /// Owner name ([`CORE_NOTE_NAME`], [`VMCOREINFO_NOTE_NAME`], [`NOTE_NAME`], ...).
    pub name: String,
    /// Type.
    pub n_type: u32,
    /// Contents.
    pub desc: Vec<u8>,
}

impl ElfNote {
    /// One of Ambulance's own notes (name [`NOTE_NAME`]).
    pub fn ambulance(n_type: u32, desc: Vec<u8>) -> ElfNote {
        ElfNote {
            name: NOTE_NAME.into(),
            n_type,
            desc,
        }
    }
}

/// A note read from a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreNote<'a> {
    /// Its name, without the terminating NUL (`CORE`, `VMCOREINFO`, ...).
    pub name: &'a str,
    /// `n_type`.
    pub n_type: u32,
    /// Its descriptor bytes.
    pub desc: &'a [u8],
}

/// Appends one note, 4-byte aligned as on x86-64: header, NUL-terminated name, padding,
/// descriptor, padding. Fails when the name or descriptor is too long for its 32-bit
/// size field.
pub fn encode_note(
    out: &mut Vec<u8>,
    name: &str,
    n_type: u32,
    desc: &[u8],
) -> Result<(), CoreError> {
    let too_long = |what: &str, len: usize| {
        CoreError::Input(format!(
            "the {what} of note {name:?} type {n_type} ({len} bytes) does not fit a 32-bit size"
        ))
    };
    let namesz = u32::try_from(name.len() + 1).map_err(|_| too_long("name", name.len()))?;
    let descsz = u32::try_from(desc.len()).map_err(|_| too_long("descriptor", desc.len()))?;
    out.extend_from_slice(&namesz.to_le_bytes());
    out.extend_from_slice(&descsz.to_le_bytes());
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
    Ok(())
}

/// Where a note lies in the file.
#[derive(Clone, Debug)]
pub(crate) struct NoteEntry {
    pub(crate) name: String,
    pub(crate) n_type: u32,
    /// Its descriptor, as a range of file offsets.
    pub(crate) desc: Range<usize>,
}

/// Decodes the notes of the `PT_NOTE` segment `ph` at `[start, start + len)` of the file
/// `b` (already checked to lie inside it), with names and descriptors padded to `align`.
/// With `cut`, the segment was cut short by the end of the file: a note that runs past
/// `len` ends the decoding (it and what follows are lost) instead of being an error.
pub(crate) fn decode_notes(
    b: &[u8],
    start: usize,
    len: usize,
    align: usize,
    ph: usize,
    cut: bool,
    notes: &mut Vec<NoteEntry>,
) -> Result<(), CoreError> {
    let seg = start
        .checked_add(len)
        .and_then(|end| b.get(start..end))
        .ok_or_else(|| bad(format!("PT_NOTE {ph}: outside the file")))?;
    let mut at = 0usize;
    while at < seg.len() {
        if seg.len() - at < 12 {
            // Trailing padding shorter than a header, or the cut.
            if cut || seg[at..].iter().all(|&x| x == 0) {
                break;
            }
            return Err(bad(format!(
                "PT_NOTE {ph}: truncated note header at offset {at:#x}"
            )));
        }
        if notes.len() >= MAX_NOTES {
            return Err(bad(format!("more than {MAX_NOTES} notes")));
        }
        let namesz = u32_at(seg, at).unwrap_or(0) as usize;
        let descsz = u32_at(seg, at + 4).unwrap_or(0) as usize;
        let n_type = u32_at(seg, at + 8).unwrap_or(0);
        if namesz > MAX_NOTE_NAME {
            return Err(bad(format!(
                "PT_NOTE {ph}: note at offset {at:#x} has a {namesz}-byte name"
            )));
        }
        let name_at = at + 12;
        let desc_at = name_at
            .checked_add(namesz.next_multiple_of(align))
            .filter(|&d| d <= seg.len());
        let desc_end = desc_at
            .and_then(|d| d.checked_add(descsz))
            .filter(|&e| e <= seg.len());
        if cut && desc_end.is_none() {
            break;
        }
        let desc_at = desc_at.ok_or_else(|| {
            bad(format!(
                "PT_NOTE {ph}: name of the note at offset {at:#x} runs past the segment"
            ))
        })?;
        let desc_end = desc_at.checked_add(descsz).filter(|&e| e <= seg.len());
        let desc_end = desc_end.ok_or_else(|| {
            bad(format!(
                "PT_NOTE {ph}: descriptor of the note at offset {at:#x} ({descsz} bytes) runs past the segment"
            ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_with_padding() {
        let mut seg = Vec::new();
        encode_note(&mut seg, "CORE", NT_PRSTATUS, &[1, 2, 3, 4, 5]).unwrap();
        encode_note(&mut seg, NOTE_NAME, NT_AMBULANCE_GUEST, b"{}").unwrap();
        encode_note(&mut seg, "", 7, &[]).unwrap();
        assert_eq!(seg.len() % 4, 0);
        // "CORE\0" pads to 8, 5 bytes of descriptor to 8.
        assert_eq!(&seg[..12], &[5, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&seg[12..20], b"CORE\0\0\0\0");
        let mut file = vec![0xee; 3];
        file.extend_from_slice(&seg);
        let mut notes = Vec::new();
        decode_notes(&file, 3, seg.len(), 4, 0, false, &mut notes).unwrap();
        let got: Vec<_> = notes
            .iter()
            .map(|n| (n.name.as_str(), n.n_type, &file[n.desc.clone()]))
            .collect();
        assert_eq!(
            got,
            vec![
                ("CORE", NT_PRSTATUS, &[1u8, 2, 3, 4, 5][..]),
                ("AMBULANCE", NT_AMBULANCE_GUEST, &b"{}"[..]),
                ("", 7, &[][..]),
            ]
        );
    }

    #[test]
    fn ambulance_note_numbers_are_distinct() {
        let mut n = [
            NT_AMBULANCE_DESCRIPTOR,
            NT_AMBULANCE_FAILURE,
            NT_AMBULANCE_GUEST,
            NT_AMBULANCE_DESCRIPTOR_GPA,
        ];
        n.sort_unstable();
        assert_eq!(n, [1, 2, 3, 4]);
        assert_eq!(ElfNote::ambulance(2, vec![9]).name, "AMBULANCE");
    }
}
