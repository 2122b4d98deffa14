//! Symbols from the guest kernel's ELF (goblin): name → address with the guest's load
//! offset (KASLR slide) applied, and address → nearest symbol for backtraces.
//!
//! The table comes from `.symtab`, or from `.dynsym` when the image has no `.symtab`.
//! Undefined, file and section symbols are dropped. Absolute symbols (`SHN_ABS`, such as
//! linker-script constants) keep their value: the slide only moves what is in a section.
//!
//! # Names
//!
//! [`Symbols::get`] accepts, in this order of preference:
//!
//! 1. the name exactly as in the ELF file (`HEARTBEAT`, `_start`, `task_struct_cachep`,
//!    `_ZN11test_kernel5sched5TASKS17h…E`);
//! 2. the demangled Rust path without its hash (`test_kernel::sched::TASKS`), for legacy
//!    (`_ZN…E`) and v0 (`_R…`) mangling, with compiler suffixes such as `.0` or
//!    `.llvm.123` ignored;
//! 3. the last component of a demangled path (`TASKS`), when exactly one address has it.
//!
//! When several symbols share a name (C `static`s of different files), a global one is
//! preferred to a local one, then the first in the table.

use std::fmt::Write as _;
use std::hash::BuildHasher as _;

use hashbrown::HashTable;

use goblin::elf::section_header::{SHF_ALLOC, SHN_ABS, SHN_UNDEF};
use goblin::elf::sym::{STB_GLOBAL, STB_WEAK, STT_FILE, STT_FUNC, STT_OBJECT, STT_SECTION};
use goblin::elf::Elf;

use crate::{Error, Result};

/// Largest symbol count accepted (a distribution vmlinux has ~200k).
const MAX_SYMBOLS: usize = 20_000_000;

/// Where a name lies in the table's string of names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn of(self, names: &str) -> &str {
        &names[self.start as usize..][..self.len as usize]
    }
}

/// One symbol.
#[derive(Clone, Debug)]
struct Sym {
    /// The name as in the file.
    raw: Span,
    /// Demangled path without hash, when the name is a mangled Rust name.
    demangled: Option<Span>,
    /// Address with the load offset applied.
    addr: u64,
    /// Size in bytes (0 when unknown, e.g. linker-script labels).
    size: u64,
    /// Global or weak.
    global: bool,
    /// STT_FUNC or STT_OBJECT.
    typed: bool,
    /// `SHN_ABS`: the load offset does not move it.
    absolute: bool,
}

impl Sym {
    fn display<'a>(&self, names: &'a str) -> &'a str {
        self.demangled.unwrap_or(self.raw).of(names)
    }

    /// Preference among symbols sharing a name or an address: higher is better.
    fn rank(&self) -> (bool, bool, bool) {
        (self.typed, self.size > 0, self.global)
    }
}

/// A kernel's symbol table.
#[derive(Clone, Debug)]
pub struct Symbols {
    path: String,
    load_offset: i64,
    /// Every name (as in the file, and demangled), one after the other: a kernel has
    /// ~150k symbols, and a string of its own for each, in the table and again as keys
    /// of the name maps, was most of the time to build a table and to free it.
    names: String,
    /// Sorted by address, then best first among equal addresses.
    by_addr: Vec<Sym>,
    /// Names to symbols.
    index: NameIndex,
    /// Address ranges of allocated sections (slid), for bounding `lookup_addr`.
    alloc_ranges: Vec<(u64, u64)>,
    build_id: Option<Vec<u8>>,
    from_dynsym: bool,
    /// For tables not read from an ELF file (see [`Symbols::from_entries`]): what they
    /// are, and that `lookup_addr` only names an address inside a symbol's extent.
    entries_of: Option<String>,
}

/// Marks a last path component that several addresses have.
const AMBIGUOUS: u32 = u32::MAX;

/// The name maps of a table sorted by address: indexes into the table, hashed with
/// foldhash (seeded per process: the names may be a hostile guest's).
#[derive(Clone, Debug, Default)]
struct NameIndex {
    hasher: foldhash::fast::RandomState,
    /// Raw name → index.
    raw: HashTable<u32>,
    /// Demangled path → index.
    demangled: HashTable<u32>,
    /// Last path component → index, or [`AMBIGUOUS`].
    short: HashTable<(Span, u32)>,
}

/// A table being built: the names' string and the symbols, in any order.
#[derive(Default)]
struct Builder {
    names: String,
    table: Vec<Sym>,
}

impl Builder {
    fn with_capacity(symbols: usize, name_bytes: usize) -> Builder {
        Builder {
            names: String::with_capacity(name_bytes),
            table: Vec::with_capacity(symbols),
        }
    }

    fn span(&mut self, name: &str) -> Option<Span> {
        let start = u32::try_from(self.names.len()).ok()?;
        let len = u32::try_from(name.len()).ok()?;
        start.checked_add(len)?;
        self.names.push_str(name);
        Some(Span { start, len })
    }

    /// Adds a symbol; `false` when the names would pass 4 GiB (the symbol is dropped).
    fn push(
        &mut self,
        name: &str,
        addr: u64,
        size: u64,
        global: bool,
        typed: bool,
        absolute: bool,
    ) -> bool {
        let Some(raw) = self.span(name) else {
            return false;
        };
        let demangled = match demangle(name) {
            Some(path) => match self.span(&path) {
                Some(span) => Some(span),
                None => return false,
            },
            None => None,
        };
        self.table.push(Sym {
            raw,
            demangled,
            addr,
            size,
            global,
            typed,
            absolute,
        });
        true
    }

    /// Sorts the table by address (among equals, best first) and indexes its names.
    fn finish(self) -> (String, Vec<Sym>, NameIndex) {
        let Builder { names, mut table } = self;
        // By address; among equals, best first (typed, sized, global), then by name for a
        // stable order.
        table.sort_by(|a, b| {
            a.addr
                .cmp(&b.addr)
                .then_with(|| b.rank().cmp(&a.rank()))
                .then_with(|| a.raw.of(&names).cmp(b.raw.of(&names)))
        });
        let index = NameIndex::new(&names, &table);
        (names, table, index)
    }
}

impl NameIndex {
    fn new<'n>(names: &'n str, table: &[Sym]) -> NameIndex {
        let hasher = foldhash::fast::RandomState::default();
        let hash = |name: &str| hasher.hash_one(name);
        let mut raw = HashTable::with_capacity(table.len());
        let mut demangled = HashTable::new();
        let mut short: HashTable<(Span, u32)> = HashTable::new();
        let better = |new: usize, old: u32| table[new].global && !table[old as usize].global;
        let raw_of = |i: u32| table[i as usize].raw.of(names);
        let path_of = |i: u32| table[i as usize].demangled.map_or("", |d| d.of(names));
        // Symbol `i` under `name` (as `name_of` names the symbols) in `map`, unless a
        // better one has that name already.
        let put =
            |map: &mut HashTable<u32>, i: usize, name: &str, name_of: &dyn Fn(u32) -> &'n str| {
                let h = hash(name);
                match map.find_mut(h, |&j| name_of(j) == name) {
                    Some(old) => {
                        if better(i, *old) {
                            *old = i as u32;
                        }
                    }
                    None => {
                        map.insert_unique(h, i as u32, |&j| hash(name_of(j)));
                    }
                }
            };
        for (i, sym) in table.iter().enumerate() {
            put(&mut raw, i, sym.raw.of(names), &raw_of);
            let Some(span) = sym.demangled else {
                continue;
            };
            let path = span.of(names);
            put(&mut demangled, i, path, &path_of);
            let last = last_component(path);
            if last.is_empty() || last.len() == path.len() {
                continue;
            }
            let last_span = Span {
                start: span.start + (path.len() - last.len()) as u32,
                len: last.len() as u32,
            };
            let h = hash(last);
            match short.find_mut(h, |(s, _)| s.of(names) == last) {
                Some((_, slot)) => {
                    if *slot != AMBIGUOUS && table[*slot as usize].addr != sym.addr {
                        *slot = AMBIGUOUS;
                    }
                }
                None => {
                    short.insert_unique(h, (last_span, i as u32), |(s, _)| hash(s.of(names)));
                }
            }
        }
        NameIndex {
            hasher,
            raw,
            demangled,
            short,
        }
    }

    /// The index of `name` in `table` (see the module documentation for the names
    /// accepted).
    fn find(&self, names: &str, table: &[Sym], name: &str) -> Option<usize> {
        let h = self.hasher.hash_one(name);
        if let Some(&i) = self
            .raw
            .find(h, |&j| table[j as usize].raw.of(names) == name)
        {
            return Some(i as usize);
        }
        let path_of = |j: u32| table[j as usize].demangled.map_or("", |d| d.of(names));
        if let Some(&i) = self.demangled.find(h, |&j| path_of(j) == name) {
            return Some(i as usize);
        }
        match self.short.find(h, |(s, _)| s.of(names) == name) {
            Some(&(_, i)) if i != AMBIGUOUS => Some(i as usize),
            _ => None,
        }
    }
}

/// Parses an ELF image with goblin, turning a panic inside goblin (it has had some on
/// malformed input) into an error.
pub(crate) fn parse_elf<'a>(bytes: &'a [u8], path: &str) -> Result<Elf<'a>> {
    let parsed = std::panic::catch_unwind(|| Elf::parse(bytes));
    match parsed {
        Ok(Ok(elf)) => Ok(elf),
        Ok(Err(e)) => Err(Error::BadElf {
            path: path.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::BadElf {
            path: path.to_string(),
            reason: "the ELF parser failed on malformed input".to_string(),
        }),
    }
}

/// The GNU build ID (`NT_GNU_BUILD_ID` note) of a parsed ELF image, from note sections or,
/// failing that, from `PT_NOTE` segments.
pub(crate) fn elf_build_id(elf: &Elf<'_>, bytes: &[u8]) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let find = |it: Option<goblin::elf::note::NoteIterator<'_>>| -> Option<Vec<u8>> {
        // A bounded number of notes: a hostile file cannot make us loop for long.
        for note in it?.take(4096) {
            let Ok(note) = note else { break };
            if note.n_type == NT_GNU_BUILD_ID && note.name == "GNU" && !note.desc.is_empty() {
                return Some(note.desc.to_vec());
            }
        }
        None
    };
    find(elf.iter_note_sections(bytes, None)).or_else(|| find(elf.iter_note_headers(bytes)))
}

/// The Rust path of a mangled name, without hash and compiler suffixes.
fn demangle(raw: &str) -> Option<String> {
    if !(raw.starts_with("_ZN") || raw.starts_with("_R") || raw.starts_with("__ZN")) {
        return None;
    }
    let d = rustc_demangle::try_demangle(raw).ok()?;
    let mut s = String::new();
    write!(s, "{d:#}").ok()?;
    // rustc-demangle keeps suffixes such as `.0` or `.llvm.123`; they are not part of the
    // path.
    if let Some(dot) = suffix_start(&s) {
        s.truncate(dot);
    }
    (!s.is_empty() && s != raw).then_some(s)
}

/// Where a trailing compiler suffix (`.0`, `.llvm.1234`, `.cold`) starts, outside any
/// `<…>` generic arguments.
fn suffix_start(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            '.' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// The last `::`-separated component of a path, outside `<…>`.
pub(crate) fn last_component(path: &str) -> &str {
    let bytes = path.as_bytes();
    let mut depth = 0i32;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' | b')' | b']' | b'}' => depth -= 1,
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                start = i + 2;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    &path[start..]
}

impl Symbols {
    /// Reads the symbol table of an ELF image; `load_offset` is added to every address.
    pub fn from_elf(bytes: &[u8], path: &str, load_offset: i64) -> Result<Symbols> {
        let elf = parse_elf(bytes, path)?;
        Self::from_parsed(&elf, bytes, path, load_offset)
    }

    /// Builds the table from an already parsed image.
    pub(crate) fn from_parsed(
        elf: &Elf<'_>,
        bytes: &[u8],
        path: &str,
        load_offset: i64,
    ) -> Result<Symbols> {
        let bad = |reason: String| Error::BadElf {
            path: path.to_string(),
            reason,
        };
        let (syms, strtab, from_dynsym) = if !elf.syms.is_empty() {
            (&elf.syms, &elf.strtab, false)
        } else {
            (&elf.dynsyms, &elf.dynstrtab, true)
        };
        if syms.len() > MAX_SYMBOLS {
            return Err(bad(format!(
                "{} symbols (more than the {MAX_SYMBOLS} accepted)",
                syms.len()
            )));
        }
        let slide = load_offset as u64;
        let mut table = Builder::with_capacity(syms.len(), strtab.len());
        for s in syms.iter() {
            let kind = s.st_type();
            if s.st_shndx == SHN_UNDEF as usize || kind == STT_FILE || kind == STT_SECTION {
                continue;
            }
            let Some(name) = strtab.get_at(s.st_name) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let absolute = s.st_shndx == SHN_ABS as usize;
            let addr = if absolute {
                s.st_value
            } else {
                s.st_value.wrapping_add(slide)
            };
            let bind = s.st_bind();
            let global = bind == STB_GLOBAL || bind == STB_WEAK;
            let typed = kind == STT_FUNC || kind == STT_OBJECT;
            if !table.push(name, addr, s.st_size, global, typed, absolute) {
                return Err(bad("symbol names longer than 4 GiB in all".into()));
            }
        }
        let (names, by_addr, index) = table.finish();

        let alloc_ranges = elf
            .section_headers
            .iter()
            .filter(|sh| sh.sh_flags & u64::from(SHF_ALLOC) != 0 && sh.sh_size > 0)
            .map(|sh| {
                let start = sh.sh_addr.wrapping_add(slide);
                (start, start.saturating_add(sh.sh_size))
            })
            .collect();

        Ok(Symbols {
            path: path.to_string(),
            load_offset,
            names,
            by_addr,
            index,
            alloc_ranges,
            build_id: elf_build_id(elf, bytes),
            from_dynsym,
            entries_of: None,
        })
    }

    /// A table from `(name, address, size)` entries that do not come from an ELF file,
    /// such as the kernel's kallsyms read out of guest memory; `load_offset` is added to
    /// every address. `description` says what the table is, e.g. "kallsyms in guest
    /// memory": [`describe`](Self::describe) gives it with the symbol count.
    ///
    /// Names are taken as for ELF symbols (exact, demangled Rust path, last component),
    /// all entries count as global. There are no sections to bound
    /// [`lookup_addr`](Self::lookup_addr), so it names an address only when it lies
    /// inside a symbol's extent (`[address, address + size)`), or is the address of a
    /// symbol of size 0.
    pub fn from_entries(
        description: &str,
        entries: impl IntoIterator<Item = (String, u64, u64)>,
        load_offset: i64,
    ) -> Symbols {
        Self::from_bound_entries(
            description,
            entries
                .into_iter()
                .map(|(name, addr, size)| (name, addr, size, true)),
            load_offset,
        )
    }

    /// [`from_entries`](Self::from_entries) with a binding for each entry: `(name,
    /// address, size, global)`. Among symbols sharing a name, a global one is found first.
    /// Entries with empty names are skipped, as are those past 4 GiB of names in all.
    pub fn from_bound_entries<S: AsRef<str>>(
        description: &str,
        entries: impl IntoIterator<Item = (S, u64, u64, bool)>,
        load_offset: i64,
    ) -> Symbols {
        let slide = load_offset as u64;
        let entries = entries.into_iter();
        let mut table = Builder::with_capacity(entries.size_hint().0, 0);
        for (name, addr, size, global) in entries {
            let name = name.as_ref();
            if !name.is_empty() {
                table.push(name, addr.wrapping_add(slide), size, global, true, false);
            }
        }
        let (names, by_addr, index) = table.finish();
        Symbols {
            path: String::new(),
            load_offset,
            names,
            by_addr,
            index,
            alloc_ranges: Vec::new(),
            build_id: None,
            from_dynsym: false,
            entries_of: Some(description.to_string()),
        }
    }

    /// The same table with another load offset: every address but the absolute ones
    /// moves by the difference (cheaper than reading the ELF file again).
    pub fn with_load_offset(&self, load_offset: i64) -> Symbols {
        let delta = load_offset.wrapping_sub(self.load_offset) as u64;
        let mut table = self.by_addr.clone();
        for s in &mut table {
            if !s.absolute {
                s.addr = s.addr.wrapping_add(delta);
            }
        }
        let (names, by_addr, index) = Builder {
            names: self.names.clone(),
            table,
        }
        .finish();
        Symbols {
            path: self.path.clone(),
            load_offset,
            names,
            by_addr,
            index,
            alloc_ranges: self
                .alloc_ranges
                .iter()
                .map(|&(lo, hi)| (lo.wrapping_add(delta), hi.wrapping_add(delta)))
                .collect(),
            build_id: self.build_id.clone(),
            from_dynsym: self.from_dynsym,
            entries_of: self.entries_of.clone(),
        }
    }

    /// The address of `name` (see the module documentation for the names accepted).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.index_of(name).map(|i| self.by_addr[i].addr)
    }

    /// The address and size (0 when unknown) of `name`.
    pub fn get_sized(&self, name: &str) -> Option<(u64, u64)> {
        self.index_of(name)
            .map(|i| (self.by_addr[i].addr, self.by_addr[i].size))
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.index.find(&self.names, &self.by_addr, name)
    }

    /// The symbol containing (or nearest below) `addr`, with the offset into it. The name
    /// is the demangled path for Rust symbols. `None` when `addr` is below every symbol,
    /// or (for images with section headers) outside every allocated section.
    pub fn lookup_addr(&self, addr: u64) -> Option<(&str, u64)> {
        if !self.alloc_ranges.is_empty()
            && !self
                .alloc_ranges
                .iter()
                .any(|&(lo, hi)| addr >= lo && addr < hi)
        {
            return None;
        }
        // Last symbol with address <= addr.
        let end = self.by_addr.partition_point(|s| s.addr <= addr);
        if end == 0 {
            return None;
        }
        let at = self.by_addr[end - 1].addr;
        let first = self.by_addr[..end].partition_point(|s| s.addr < at);
        let group = &self.by_addr[first..end];
        // Among symbols at that address, one whose extent contains addr, else the best
        // (for tables without sections: only at the address itself).
        let containing = group.iter().find(|s| s.size > 0 && addr - s.addr < s.size);
        let sym = match containing {
            Some(s) => s,
            None if self.entries_of.is_some() && addr != at => return None,
            None => &group[0],
        };
        Some((sym.display(&self.names), addr - sym.addr))
    }

    /// The lowest symbol address above `addr`: where the symbol at `addr` ends when
    /// sizes are taken as the kernel's kallsyms takes them (to the next symbol).
    pub fn next_address_after(&self, addr: u64) -> Option<u64> {
        let i = self.by_addr.partition_point(|s| s.addr <= addr);
        self.by_addr.get(i).map(|s| s.addr)
    }

    /// The GNU build ID of the image, if it has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The load offset applied to every (non-absolute) address.
    pub fn load_offset(&self) -> i64 {
        self.load_offset
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// All symbols, by address: (name as in the file, address, size).
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.by_addr
            .iter()
            .map(|s| (s.raw.of(&self.names), s.addr, s.size))
    }

    /// What this table is, for error messages.
    pub fn describe(&self) -> String {
        let mut s = match &self.entries_of {
            Some(what) => format!("{what} ({} symbols", self.len()),
            None => {
                let table = if self.from_dynsym { "dynsym" } else { "symtab" };
                format!("ELF {table} of {} ({} symbols", self.path, self.len())
            }
        };
        if self.load_offset != 0 {
            let sign = if self.load_offset < 0 { "-" } else { "+" };
            let _ = write!(
                s,
                ", load offset {sign}{:#x}",
                self.load_offset.unsigned_abs()
            );
        }
        s.push(')');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambulance_test_kernel::ELF;

    fn kernel(offset: i64) -> Symbols {
        Symbols::from_elf(ELF, "test-kernel", offset).unwrap()
    }

    #[test]
    fn names_of_the_test_kernel() {
        let s = kernel(0);
        assert!(s.len() > 50);
        for name in ["HEARTBEAT", "_start", "__ro_start", "RO_CRC32C"] {
            let a = s.get(name).unwrap_or_else(|| panic!("{name}"));
            assert!(a >= 0xffff_ffff_8000_0000, "{name} at {a:#x}");
        }
        assert_eq!(s.get("_start"), s.get("__kernel_start"));
        // Mangled statics by demangled path and by last component.
        for name in ["TASKS", "RUN_QUEUE", "PERCPU", "LOCKS"] {
            let short = s.get(name).unwrap_or_else(|| panic!("{name}"));
            let module = if matches!(name, "PERCPU" | "LOCKS") {
                "sync"
            } else {
                "sched"
            };
            assert_eq!(
                s.get(&format!("test_kernel::{module}::{name}")),
                Some(short)
            );
        }
        // Suffixed names (`….0`) demangle without the suffix.
        assert!(s.get("test_kernel::sched::NR_TASKS").is_some());
        let (tasks, size) = s.get_sized("TASKS").unwrap();
        assert_eq!(size, 64 * 104);
        assert!(s.get("no_such_symbol").is_none());
        assert!(s.get("").is_none());
        // Raw names still work.
        let raw = s
            .iter()
            .find(|(n, _, _)| n.starts_with("_ZN11test_kernel5sched5TASKS"))
            .unwrap();
        assert_eq!(s.get(raw.0), Some(tasks));
        assert!(s.describe().contains("symtab"));
    }

    /// A table moved to another load offset is the one read at that offset.
    #[test]
    fn moving_a_table_is_reading_it_at_the_new_offset() {
        for (from, to) in [(0, 0x20_0000), (0x1000, -0x3000), (0x4000, 0x4000)] {
            let moved = kernel(from).with_load_offset(to);
            let read = kernel(to);
            assert_eq!(moved.load_offset(), to);
            assert!(moved.iter().eq(read.iter()), "{from:#x} -> {to:#x}");
            assert_eq!(moved.describe(), read.describe());
            for (name, addr, _) in read.iter() {
                assert_eq!(moved.get(name), read.get(name), "{name}");
                assert_eq!(moved.lookup_addr(addr + 1), read.lookup_addr(addr + 1));
            }
            assert_eq!(moved.get("TASKS"), read.get("TASKS"));
            assert_eq!(moved.build_id(), read.build_id());
        }
    }

    #[test]
    fn addresses_to_names() {
        let s = kernel(0);
        let tasks = s.get("TASKS").unwrap();
        assert_eq!(s.lookup_addr(tasks), Some(("test_kernel::sched::TASKS", 0)));
        assert_eq!(
            s.lookup_addr(tasks + 104 + 8),
            Some(("test_kernel::sched::TASKS", 112))
        );
        let hb = s.get("HEARTBEAT").unwrap();
        assert_eq!(s.lookup_addr(hb + 3), Some(("HEARTBEAT", 3)));
        // At _start several labels share the address; a typed one or the best is named.
        let (name, off) = s.lookup_addr(s.get("_start").unwrap()).unwrap();
        assert_eq!(off, 0);
        assert!(!name.is_empty());
        // Outside the image.
        assert_eq!(s.lookup_addr(0), None);
        assert_eq!(s.lookup_addr(0x1000), None);
        assert_eq!(s.lookup_addr(u64::MAX), None);
    }

    #[test]
    fn load_offset_slides_addresses() {
        let base = kernel(0);
        let up = kernel(0x20_0000);
        let down = kernel(-0x1000);
        let hb = base.get("HEARTBEAT").unwrap();
        assert_eq!(up.get("HEARTBEAT"), Some(hb + 0x20_0000));
        assert_eq!(down.get("HEARTBEAT"), Some(hb - 0x1000));
        assert_eq!(up.lookup_addr(hb + 0x20_0000), Some(("HEARTBEAT", 0)));
        assert_eq!(up.lookup_addr(hb), base.lookup_addr(hb - 0x20_0000));
        // Absolute symbols do not move.
        assert_eq!(up.get("KERNEL_VIRT_BASE"), base.get("KERNEL_VIRT_BASE"));
        assert!(up.describe().contains("+0x200000"));
        assert!(down.describe().contains("-0x1000"));
        assert_eq!(up.load_offset(), 0x20_0000);
    }

    #[test]
    fn tables_from_entries() {
        let entries = vec![
            ("b".to_string(), 0x2000, 0x10),
            ("a".to_string(), 0x1000, 0x100),
            ("alias".to_string(), 0x1000, 0x100),
            ("edge".to_string(), 0x3000, 0),
            (
                "_ZN4core3fmt5write17h0123456789abcdefE".to_string(),
                0x4000,
                8,
            ),
            (String::new(), 0x5000, 1),
        ];
        let s = Symbols::from_entries("kallsyms in guest memory", entries.clone(), 0);
        assert_eq!(s.len(), 5);
        assert_eq!(s.describe(), "kallsyms in guest memory (5 symbols)");
        assert_eq!(s.get("b"), Some(0x2000));
        assert_eq!(s.get("core::fmt::write"), Some(0x4000));
        assert_eq!(s.get_sized("a"), Some((0x1000, 0x100)));
        assert_eq!(s.lookup_addr(0x10ff), Some(("a", 0xff)));
        // Only inside an extent, or at a symbol of unknown size.
        assert_eq!(s.lookup_addr(0x1100), None);
        assert_eq!(s.lookup_addr(0x2010), None);
        assert_eq!(s.lookup_addr(0x3000), Some(("edge", 0)));
        assert_eq!(s.lookup_addr(0x3001), None);
        assert_eq!(s.lookup_addr(0xfff), None);
        assert!(s.build_id().is_none());
        let up = Symbols::from_entries("x", entries, -0x800);
        assert_eq!(up.get("b"), Some(0x1800));
        assert_eq!(up.lookup_addr(0x1808), Some(("b", 8)));
        assert!(up.describe().ends_with("(5 symbols, load offset -0x800)"));
        // Among entries sharing a name, a global one is found.
        let s = Symbols::from_bound_entries(
            "t",
            [
                ("dup", 0x10, 1, false),
                ("dup", 0x20, 1, true),
                ("dup", 0x30, 1, false),
            ],
            0,
        );
        assert_eq!(s.get("dup"), Some(0x20));
    }

    #[test]
    fn build_id_matches_the_note() {
        let s = kernel(0);
        let id = s.build_id().expect("the test kernel has a build ID");
        assert_eq!(id.len(), 20);
        // The same bytes as in the note section.
        assert!(ELF.windows(id.len()).any(|w| w == id));
    }

    #[test]
    fn hostile_images_give_errors() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&[0u8; 100]);
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("truncated", ELF[..1000].to_vec()),
            ("png", png),
            (
                "random",
                (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect(),
            ),
            ("header only", ELF[..64].to_vec()),
        ] {
            match Symbols::from_elf(&bytes, what, 0) {
                Err(Error::BadElf { path, .. }) => assert_eq!(path, what),
                Ok(s) => assert!(s.len() < 5, "{what}: {} symbols", s.len()),
                Err(e) => panic!("{what}: unexpected {e}"),
            }
        }
    }

    #[test]
    fn demangling() {
        assert_eq!(
            demangle("_ZN11test_kernel5sched5TASKS17he1f63b71ab517c1bE").as_deref(),
            Some("test_kernel::sched::TASKS")
        );
        assert_eq!(
            demangle("_ZN11test_kernel5sched8NR_TASKS17h105c653b5f9f83d6E.0").as_deref(),
            Some("test_kernel::sched::NR_TASKS")
        );
        assert_eq!(demangle("HEARTBEAT"), None);
        assert_eq!(demangle("_ZNnotreally"), None);
        assert_eq!(last_component("a::b::<impl x::Y>::c"), "c");
        assert_eq!(
            last_component("core::ptr::drop_in_place<a::B>"),
            "drop_in_place<a::B>"
        );
        assert_eq!(last_component("plain"), "plain");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn mutated_images_never_panic(
            flips in proptest::collection::vec((0usize..ELF.len(), proptest::prelude::any::<u8>()), 1..32),
            cut in 0usize..ELF.len(),
        ) {
            let mut bytes = ELF.to_vec();
            for (at, v) in flips {
                bytes[at] = v;
            }
            // Also damage the ELF header: that is where parsers trip.
            for (i, b) in bytes.iter_mut().enumerate().take(64) {
                *b ^= ((cut >> (i % 16)) & 1) as u8;
            }
            if let Ok(s) = Symbols::from_elf(&bytes, "mutated", 0) {
                let _ = s.lookup_addr(0xffff_ffff_8020_0000);
                let _ = s.get("TASKS");
            }
            let _ = Symbols::from_elf(&bytes[..cut], "cut", 0);
        }
    }
}
