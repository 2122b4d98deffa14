//! Finding and opening a kernel's debug info: an ELF with symbols and DWARF, by explicit
//! path or by build ID in a debuginfod-style directory (`.build-id/xx/rest.debug`).
//!
//! [`DebugInfo::open`] maps the file read-only and reads its section headers, symbol table
//! and build ID; DWARF is indexed lazily by [`DwarfTypes`] on first lookup, and its line
//! programs and inlined subroutines are read by [`SourceLines`] on the first source
//! lookup ([`DebugInfo::source_frames`]), one unit at a time. A file
//! without DWARF (a stripped vmlinux) still opens: its symbols are usable and
//! [`DebugInfo::types`] says why there are no types.
//!
//! [`DebugInfo::find`] looks, in `dir`, for the build ID `b1b2b3…` (hex) at
//!
//! 1. `.build-id/b1/b2b3….debug` (the layout of Debian's `-dbg` packages and of
//!    `/usr/lib/debug`),
//! 2. `b1/b2b3….debug`,
//! 3. `.build-id/b1/b2b3…` and `b1/b2b3…` (the image itself, e.g. a symlink to vmlinux),
//! 4. `b1b2b3…/debuginfo` (the debuginfod client cache),
//!
//! and checks that the file found has that build ID.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::symbols::{elf_build_id, parse_elf, Symbols};
use crate::types::dwarf::{DwarfTypes, ElfBytes, SourceFrame, SourceLines};
use crate::types::TypeSource;
use crate::{Error, Result};

/// Lowercase hex of a build ID.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// An opened debug-info file: symbols, DWARF types and build ID.
pub struct DebugInfo {
    path: PathBuf,
    bytes: Arc<ElfBytes>,
    symbols: Symbols,
    /// Symbol tables with a KASLR slide applied, by slide: a guest kernel's slide rarely
    /// changes between diagnoses, and rebuilding a vmlinux's table takes tens of ms.
    slid: std::sync::Mutex<Vec<(i64, Arc<Symbols>)>>,
    dwarf: std::result::Result<Arc<DwarfTypes>, String>,
    /// Source lines and inlined frames, read at the first lookup and kept.
    lines: SourceLines,
    build_id: Option<Vec<u8>>,
}

impl std::fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugInfo")
            .field("path", &self.path)
            .field("build_id", &self.build_id.as_deref().map(hex))
            .field("symbols", &self.symbols.len())
            .field("dwarf", &self.dwarf.is_ok())
            .finish()
    }
}

impl DebugInfo {
    /// Opens (memory-maps) an ELF file with symbols and, usually, DWARF.
    pub fn open(path: impl AsRef<Path>) -> Result<DebugInfo> {
        let path = path.as_ref();
        let io = |what, source| Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(|e| io("cannot open debug info", e))?;
        let len = file
            .metadata()
            .map_err(|e| io("cannot stat debug info", e))?
            .len();
        if len == 0 {
            return Err(Error::BadElf {
                path: path.display().to_string(),
                reason: "empty file".to_string(),
            });
        }
        // SAFETY: the mapping is read-only and private; we never write through it. The
        // usual caveat of file mappings applies: if another process truncates or rewrites
        // the file while it is mapped, reads may fault or see new bytes. Debug-info files
        // are the operator's read-only artefacts, so we accept that, as gdb and drgn do.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("cannot map debug info", e))?;
        Self::from_bytes(Arc::new(ElfBytes::Mapped(map)), &path.display().to_string())
    }

    /// Opens an ELF image already in memory (e.g. the test kernel's `include_bytes!`).
    pub fn from_bytes(bytes: Arc<ElfBytes>, name: &str) -> Result<DebugInfo> {
        let (symbols, build_id) = {
            let elf = parse_elf(&bytes, name)?;
            (
                Symbols::from_parsed(&elf, &bytes, name, 0)?,
                elf_build_id(&elf, &bytes),
            )
        };
        let dwarf = DwarfTypes::new(bytes.clone(), name)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        Ok(DebugInfo {
            path: PathBuf::from(name),
            lines: SourceLines::new(bytes.clone(), name),
            bytes,
            symbols,
            slid: Default::default(),
            dwarf,
            build_id,
        })
    }

    /// The paths [`DebugInfo::find`] tries for `build_id` under `dir`, in order.
    pub fn candidate_paths(dir: &Path, build_id: &[u8]) -> Vec<PathBuf> {
        if build_id.len() < 2 {
            return Vec::new();
        }
        let h = hex(build_id);
        let (head, rest) = h.split_at(2);
        let debug = format!("{rest}.debug");
        vec![
            dir.join(".build-id").join(head).join(&debug),
            dir.join(head).join(&debug),
            dir.join(".build-id").join(head).join(rest),
            dir.join(head).join(rest),
            dir.join(&h).join("debuginfo"),
        ]
    }

    /// Finds and opens the debug info for `build_id` under `dir` (see the module
    /// documentation for the layouts), checking the build ID of the file found.
    pub fn find(dir: impl AsRef<Path>, build_id: &[u8]) -> Result<DebugInfo> {
        let dir = dir.as_ref();
        let candidates = Self::candidate_paths(dir, build_id);
        let not_found = |looked_for: String| Error::DebugInfoNotFound {
            build_id: hex(build_id),
            dir: dir.display().to_string(),
            looked_for,
        };
        if candidates.is_empty() {
            return Err(not_found(format!(
                "nothing: a build ID of {} bytes is too short",
                build_id.len()
            )));
        }
        for path in &candidates {
            if path.is_file() {
                let info = Self::open(path)?;
                info.check_build_id(build_id)?;
                return Ok(info);
            }
        }
        Err(not_found(
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }

    /// Checks that this file is the debug info of the guest kernel with `guest_build_id`.
    pub fn check_build_id(&self, guest_build_id: &[u8]) -> Result<()> {
        match &self.build_id {
            Some(b) if b.as_slice() == guest_build_id => Ok(()),
            other => Err(Error::BuildIdMismatch {
                path: self.path.display().to_string(),
                file: other
                    .as_deref()
                    .map(hex)
                    .unwrap_or_else(|| "none (the file has no GNU build-ID note)".to_string()),
                guest: hex(guest_build_id),
            }),
        }
    }

    /// The file's path (or the name given to [`DebugInfo::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole ELF file (e.g. to compare the kernel image with guest memory).
    pub fn elf_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The GNU build ID of the file.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The ELF symbols with no load offset applied.
    pub fn symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// The ELF symbols with a load offset (KASLR slide) applied; the last few slides'
    /// tables are kept.
    pub fn symbols_at(&self, load_offset: i64) -> Result<Arc<Symbols>> {
        const KEEP: usize = 4;
        let mut slid = self.slid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = slid.iter().find(|(o, _)| *o == load_offset) {
            return Ok(s.clone());
        }
        let s = Arc::new(self.symbols.with_load_offset(load_offset));
        if slid.len() == KEEP {
            slid.remove(0);
        }
        slid.push((load_offset, s.clone()));
        Ok(s)
    }

    /// The DWARF types, or why there are none.
    pub fn dwarf(&self) -> Result<&Arc<DwarfTypes>> {
        self.dwarf.as_ref().map_err(|reason| Error::Dwarf {
            path: self.path.display().to_string(),
            offset: 0,
            reason: reason.clone(),
        })
    }

    /// The source frames at link-time (unslid) code address `address`, innermost first:
    /// the functions inlined there, then the one whose code it is, each with its file
    /// and line ([`SourceLines::frames`]). The first call reads the units' ranges; each
    /// unit's line program and functions are read once, at its first lookup.
    pub fn source_frames(&self, address: u64) -> Result<Vec<SourceFrame>> {
        self.lines.frames(address)
    }

    /// The DWARF types as a [`TypeSource`], or why there are none.
    pub fn types(&self) -> Result<Arc<dyn TypeSource>> {
        Ok(self.dwarf()?.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TypeKind;
    use ambulance_test_kernel::ELF;

    fn kernel_build_id() -> Vec<u8> {
        Symbols::from_elf(ELF, "k", 0)
            .unwrap()
            .build_id()
            .unwrap()
            .to_vec()
    }

    fn put(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn open_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        put(&path, ELF);
        let info = DebugInfo::open(&path).unwrap();
        assert_eq!(info.path(), path);
        assert_eq!(info.build_id(), Some(kernel_build_id().as_slice()));
        info.check_build_id(&kernel_build_id()).unwrap();
        assert!(info.symbols().get("HEARTBEAT").is_some());
        let slid = info.symbols_at(0x1000).unwrap();
        assert_eq!(
            slid.get("HEARTBEAT"),
            info.symbols().get("HEARTBEAT").map(|a| a + 0x1000)
        );
        // The slid table is kept for the next diagnosis at the same slide.
        assert!(Arc::ptr_eq(&slid, &info.symbols_at(0x1000).unwrap()));
        assert!(!Arc::ptr_eq(&slid, &info.symbols_at(0x2000).unwrap()));
        let types = info.types().unwrap();
        let task = types.get(types.find("Task").unwrap()).unwrap();
        assert_eq!(task.size, Some(104));
        assert_eq!(task.kind, TypeKind::Struct);
        assert!(types.describe().contains("vmlinux"));
        let tasks = info.dwarf().unwrap().variable_address("TASKS").unwrap();
        assert_eq!(Some(tasks), info.symbols().get("TASKS"));
    }

    #[test]
    fn find_by_build_id_in_each_layout() {
        let id = kernel_build_id();
        let h = hex(&id);
        let (head, rest) = h.split_at(2);
        for layout in [
            format!(".build-id/{head}/{rest}.debug"),
            format!("{head}/{rest}.debug"),
            format!(".build-id/{head}/{rest}"),
            format!("{head}/{rest}"),
            format!("{h}/debuginfo"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            put(&dir.path().join(&layout), ELF);
            let info = DebugInfo::find(dir.path(), &id).unwrap_or_else(|e| panic!("{layout}: {e}"));
            assert_eq!(info.path(), dir.path().join(&layout));
            assert!(info.types().unwrap().find("Task").is_ok());
        }
        // The first layout wins when several exist.
        let dir = tempfile::tempdir().unwrap();
        put(&dir.path().join(format!("{head}/{rest}")), ELF);
        put(
            &dir.path().join(format!(".build-id/{head}/{rest}.debug")),
            ELF,
        );
        let info = DebugInfo::find(dir.path(), &id).unwrap();
        assert!(info
            .path()
            .ends_with(format!(".build-id/{head}/{rest}.debug")));
    }

    #[test]
    fn not_found_names_the_paths_tried() {
        let dir = tempfile::tempdir().unwrap();
        let id = [0xab, 0xcd, 0xef, 0x01];
        match DebugInfo::find(dir.path(), &id) {
            Err(Error::DebugInfoNotFound {
                build_id,
                dir: d,
                looked_for,
            }) => {
                assert_eq!(build_id, "abcdef01");
                assert_eq!(d, dir.path().display().to_string());
                assert!(
                    looked_for.contains(".build-id/ab/cdef01.debug"),
                    "{looked_for}"
                );
                assert!(looked_for.contains("abcdef01/debuginfo"), "{looked_for}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            DebugInfo::find(dir.path(), &[0xab]),
            Err(Error::DebugInfoNotFound { .. })
        ));
        assert!(matches!(
            DebugInfo::open(dir.path().join("nope")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn mismatching_build_ids() {
        let info = DebugInfo::from_bytes(Arc::new(ElfBytes::Static(ELF)), "test-kernel").unwrap();
        let guest = [0x11u8; 20];
        match info.check_build_id(&guest) {
            Err(e @ Error::BuildIdMismatch { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&hex(&kernel_build_id())), "{msg}");
                assert!(msg.contains(&"11".repeat(20)), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // A file under the wrong name in the tree: found, then refused.
        let dir = tempfile::tempdir().unwrap();
        put(
            &dir.path()
                .join(".build-id/11/".to_string() + &"11".repeat(19) + ".debug"),
            ELF,
        );
        assert!(matches!(
            DebugInfo::find(dir.path(), &guest),
            Err(Error::BuildIdMismatch { .. })
        ));
    }

    #[test]
    fn truncated_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.resize(4096, 0x42);
        let random: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        for (name, bytes) in [
            ("first-1000", &ELF[..1000]),
            ("png", &png[..]),
            ("random", &random[..]),
            ("empty", &[][..]),
        ] {
            let path = dir.path().join(name);
            put(&path, bytes);
            match DebugInfo::open(&path) {
                Err(Error::BadElf { path: p, reason }) => {
                    assert!(p.ends_with(name), "{p}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // An ELF without DWARF opens, with symbols, and says why it has no types.
        let mut stripped = ELF.to_vec();
        let pos = stripped
            .windows(11)
            .rposition(|w| w == b".debug_info")
            .unwrap();
        stripped[pos + 1] = b'x';
        let path = dir.path().join("stripped");
        put(&path, &stripped);
        let info = DebugInfo::open(&path).unwrap();
        assert!(info.symbols().get("HEARTBEAT").is_some());
        match info.types() {
            Err(Error::Dwarf { reason, .. }) => assert!(reason.contains(".debug_info"), "{reason}"),
            other => panic!("{:?}", other.map(|t| t.describe())),
        }
    }
}
