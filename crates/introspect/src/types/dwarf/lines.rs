//! Source lines and inlined frames of code addresses: the unit's line program for
//! file:line:column, its `DW_TAG_inlined_subroutine`s (with their `DW_AT_call_file` and
//! `DW_AT_call_line`) for the functions inlined at an address — what gdb and drgn show.
//!
//! [`addr2line`] does the reading over the same sections as the types, and is lazy the
//! way a vmlinux needs: opening reads the unit headers and `.debug_aranges` (once, at
//! the first lookup, not when the file is opened); a lookup finds the unit by address
//! and parses that unit's line program and functions once, cached for later lookups.
//! Damaged DWARF gives an error or no line, never a panic.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::sections::{self, ElfBytes, R};
use crate::{Error, Result};

/// Most frames returned for one address (the function and the functions inlined into
/// it at that address): a deeper chain is cut, innermost frames kept.
pub const MAX_INLINE_DEPTH: usize = 64;

/// One frame at a code address: a function inlined there, or the function whose code it
/// is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFrame {
    /// The function's name (`DW_AT_name` of the subprogram or of the inlined function's
    /// origin).
    pub function: Option<String>,
    /// The source file: where the address is for the innermost frame, where the inner
    /// frame's function was inlined (`DW_AT_call_file`) for the others.
    pub file: Option<String>,
    /// Its line (the line program's, or `DW_AT_call_line`).
    pub line: Option<u32>,
    /// Its column, when the producer gives one (0 is the left edge).
    pub column: Option<u32>,
    /// Whether this function was inlined into the next frame's.
    pub inlined: bool,
}

/// Source lines of one ELF file's code, read on first use and cached by unit.
pub struct SourceLines {
    bytes: Arc<ElfBytes>,
    path: String,
    /// The reader, or why there is none; made at the first lookup. addr2line caches
    /// parsed units in cells that are not `Sync`, hence the lock.
    context: OnceLock<std::result::Result<Mutex<addr2line::Context<R>>, String>>,
}

impl std::fmt::Debug for SourceLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLines")
            .field("path", &self.path)
            .field("opened", &self.context.get().map(|c| c.is_ok()))
            .finish()
    }
}

impl SourceLines {
    /// Source lines of the ELF image `bytes` (called `path` in errors). Reads nothing
    /// until the first lookup.
    pub fn new(bytes: Arc<ElfBytes>, path: &str) -> SourceLines {
        SourceLines {
            bytes,
            path: path.to_string(),
            context: OnceLock::new(),
        }
    }

    fn err(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Dwarf {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn open(&self) -> std::result::Result<Mutex<addr2line::Context<R>>, String> {
        let elf = crate::symbols::parse_elf(&self.bytes, &self.path).map_err(|e| e.to_string())?;
        if elf.header.e_type == goblin::elf::header::ET_REL {
            return Err("a relocatable object: its DWARF needs relocating".into());
        }
        let dwarf = sections::load(&self.bytes, &elf, &self.path, sections::for_lines)
            .map_err(|e| e.to_string())?;
        if gimli::Section::reader(&dwarf.debug_info).is_empty() {
            return Err("no .debug_info section".into());
        }
        addr2line::Context::from_dwarf(dwarf)
            .map(Mutex::new)
            .map_err(|e| format!("unit ranges unreadable: {e}"))
    }

    /// The frames at link-time address `address`, innermost first: the functions
    /// inlined there (`inlined`), then the function whose code it is. Empty when no
    /// unit covers the address. For a return address, look up the call (`address - 1`).
    pub fn frames(&self, address: u64) -> Result<Vec<SourceFrame>> {
        let context = self
            .context
            .get_or_init(|| self.open())
            .as_ref()
            .map_err(|reason| self.err(0, reason.clone()))?
            .lock();
        let gerr = |e: gimli::Error| self.err(address, format!("at {address:#x}: {e}"));
        let mut iter = context
            .find_frames(address)
            .skip_all_loads()
            .map_err(gerr)?;
        let mut frames = Vec::new();
        while let Some(f) = iter.next().map_err(gerr)? {
            if frames.len() == MAX_INLINE_DEPTH {
                break;
            }
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok())
                .map(|n| n.into_owned());
            let (file, line, column) = f.location.map_or((None, None, None), |l| {
                (l.file.map(str::to_string), l.line, l.column)
            });
            frames.push(SourceFrame {
                function,
                file,
                line,
                column,
                inlined: true,
            });
        }
        if let Some(last) = frames.last_mut() {
            last.inlined = false;
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::section;
    use super::*;
    use crate::symbols::Symbols;

    const LINES: &[u8] = include_bytes!("../../../testdata/c-lines.elf");

    fn lines(bytes: &'static [u8]) -> SourceLines {
        SourceLines::new(Arc::new(ElfBytes::Static(bytes)), "c-lines.elf")
    }

    /// The line of `testdata/lines.c` that holds `marker`.
    fn line_of(marker: &str) -> u32 {
        let source = include_str!("../../../testdata/lines.c");
        1 + source
            .lines()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no {marker} in lines.c")) as u32
    }

    #[test]
    fn inlined_functions_and_their_call_sites() {
        let l = lines(LINES);
        let syms = Symbols::from_elf(LINES, "c-lines.elf", 0).unwrap();
        let (outer, size) = syms.get_sized("outer").unwrap();
        // Somewhere in outer() is the inlined scale(), called from middle(), itself
        // inlined into outer(): three frames, innermost first.
        let found = (outer..outer + size)
            .map(|pc| l.frames(pc).unwrap())
            .find(|f| f.len() == 3)
            .expect("an address in outer() with two inlined frames");
        let names: Vec<_> = found.iter().map(|f| f.function.as_deref()).collect();
        assert_eq!(names, [Some("scale"), Some("middle"), Some("outer")]);
        assert_eq!(
            found.iter().map(|f| f.inlined).collect::<Vec<_>>(),
            [true, true, false]
        );
        for f in &found {
            assert!(f.file.as_deref().unwrap().ends_with("lines.c"), "{f:?}");
        }
        // The innermost frame is in scale()'s body; the others at their call sites.
        assert_eq!(found[0].line, Some(line_of("INSIDE scale")));
        assert_eq!(found[1].line, Some(line_of("CALLS scale")));
        assert_eq!(found[2].line, Some(line_of("CALLS middle")));
        // Past the inlined code: outer()'s own lines, nothing inlined.
        let own = (outer..outer + size)
            .map(|pc| l.frames(pc).unwrap())
            .find(|f| f.len() == 1)
            .expect("an address in outer() with nothing inlined");
        assert_eq!(own[0].function.as_deref(), Some("outer"));
        assert!(!own[0].inlined);
        assert!(own[0].line > Some(line_of("CALLS middle")), "{own:?}");
        // An address outside every unit: no frames.
        assert!(l.frames(0x10).unwrap().is_empty());
    }

    #[test]
    fn files_without_lines_say_so() {
        // The test kernel's ELF without .debug_info.
        let mut stripped = ambulance_test_kernel::ELF.to_vec();
        let (shstr, len) = section(&stripped, ".shstrtab");
        let at = stripped[shstr..shstr + len]
            .windows(11)
            .position(|w| w == b".debug_info")
            .unwrap();
        stripped[shstr + at + 1] = b'x';
        let l = SourceLines::new(Arc::new(ElfBytes::Owned(stripped)), "stripped");
        match l.frames(0x1000) {
            Err(Error::Dwarf { path, reason, .. }) => {
                assert_eq!(path, "stripped");
                assert!(reason.contains(".debug_info"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let garbage = SourceLines::new(Arc::new(ElfBytes::Owned(vec![0x7f; 100])), "garbage");
        assert!(garbage.frames(0).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn damaged_lines_never_panic(
            flips in proptest::collection::vec((0usize..1 << 16, proptest::prelude::any::<u8>()), 1..32),
            probes in proptest::collection::vec(0u64..0x1000, 1..16),
        ) {
            let mut bytes = LINES.to_vec();
            let (line, line_len) = section(LINES, ".debug_line");
            let (info, info_len) = section(LINES, ".debug_info");
            for (i, (at, v)) in flips.into_iter().enumerate() {
                let (start, len) = if i % 2 == 0 { (line, line_len) } else { (info, info_len) };
                bytes[start + at % len] = v;
            }
            let l = SourceLines::new(Arc::new(ElfBytes::Owned(bytes)), "damaged");
            let syms = Symbols::from_elf(LINES, "c-lines.elf", 0).unwrap();
            let (outer, _) = syms.get_sized("outer").unwrap();
            for p in probes {
                if let Ok(frames) = l.frames(outer - 0x800 + p) {
                    proptest::prop_assert!(frames.len() <= MAX_INLINE_DEPTH);
                }
            }
        }
    }
}
