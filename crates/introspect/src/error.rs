//! The crate's one error type. Every message names the address, file, type or line
//! involved, so that a report can say exactly what could not be read.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- physical memory ----
    /// A physical range is not (entirely) backed by the memory source.
    #[error("guest-physical {addr:#x} (+{len} bytes) is not in {source_name}")]
    Unmapped {
        /// First address of the read.
        addr: u64,
        /// Length of the read.
        len: usize,
        /// The memory source, e.g. "live guest RAM" or "core file /tmp/x.core".
        source_name: String,
    },
    /// A file could not be opened, read or mapped.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot open core file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Guest RAM handed over as a file descriptor could not be mapped.
    #[error("cannot map guest RAM read-only ({size} bytes at file offset {offset:#x}): {source}")]
    Map {
        /// Bytes to map.
        size: u64,
        /// Offset in the file.
        offset: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An ELF core file is malformed or not a core of an x86-64 machine.
    #[error("{path}: not a usable ELF core: {reason}")]
    BadCore {
        /// The file (or `<bytes>` for an in-memory core).
        path: String,
        /// What is wrong.
        reason: String,
    },

    // ---- address translation ----
    /// A virtual address is not canonical for the paging mode.
    #[error("virtual address {va:#x} is not canonical for {levels}-level paging")]
    NonCanonical {
        /// The address.
        va: u64,
        /// 4 or 5.
        levels: u8,
    },
    /// A page-table entry on the way is not present.
    #[error("virtual address {va:#x} is not mapped: level-{level} entry {entry:#x} at guest-physical {entry_pa:#x} is not present")]
    NotPresent {
        /// The address being translated.
        va: u64,
        /// Paging level of the entry (5/4 = top … 1 = page table).
        level: u8,
        /// The entry's value.
        entry: u64,
        /// Where the entry lives.
        entry_pa: u64,
    },
    /// A page-table entry is malformed (reserved bits, a huge page where none can be,
    /// a table outside memory).
    #[error("virtual address {va:#x}: bad level-{level} page-table entry {entry:#x} at guest-physical {entry_pa:#x}: {reason}")]
    BadPageTable {
        /// The address being translated.
        va: u64,
        /// Paging level of the entry.
        level: u8,
        /// The entry's value.
        entry: u64,
        /// Where the entry lives.
        entry_pa: u64,
        /// What is wrong.
        reason: &'static str,
    },

    // ---- symbols, types, debug info ----
    /// An ELF file (kernel image, debug info) is malformed.
    #[error("{path}: not a usable ELF file: {reason}")]
    BadElf {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// DWARF debug information is malformed.
    #[error("{path}: bad DWARF at .debug_info offset {offset:#x}: {reason}")]
    Dwarf {
        /// The file.
        path: String,
        /// Offset of the offending unit or entry.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// No symbol of that name.
    #[error("no symbol {name:?} ({searched})")]
    NoSymbol {
        /// The name.
        name: String,
        /// Where it was looked for, e.g. "ELF symtab of /x/vmlinux, VMCOREINFO".
        searched: String,
    },
    /// No type of that name.
    #[error("no type {name:?} ({searched})")]
    NoType {
        /// The name.
        name: String,
        /// Where it was looked for.
        searched: String,
    },
    /// A struct or union has no member of that name.
    #[error("type {ty} has no member {member:?}")]
    NoMember {
        /// The type's name.
        ty: String,
        /// The member asked for.
        member: String,
    },
    /// An operation that does not apply to the type.
    #[error("cannot {op} a value of type {ty}")]
    WrongType {
        /// What was attempted, e.g. "dereference", "index", "read as an integer".
        op: &'static str,
        /// The type's name.
        ty: String,
    },
    /// The debug info belongs to another kernel build.
    #[error("debug info {path} has build ID {file}, but the guest kernel's build ID is {guest}")]
    BuildIdMismatch {
        /// The debug-info file.
        path: String,
        /// Its build ID (hex).
        file: String,
        /// The guest's (hex).
        guest: String,
    },
    /// No debug info file for a build ID.
    #[error("no debug info for build ID {build_id} under {dir} (looked for {looked_for})")]
    DebugInfoNotFound {
        /// The build ID (hex).
        build_id: String,
        /// The debuginfod-style directory.
        dir: String,
        /// The path tried.
        looked_for: String,
    },

    /// BTF type information (from guest memory or a file) that cannot be used.
    #[error("BTF of {source_name}: {reason} (at byte {offset:#x})")]
    Btf {
        /// Where the BTF came from, e.g. "guest memory __start_BTF..__stop_BTF".
        source_name: String,
        /// Byte offset into the BTF blob of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    // ---- VMCOREINFO ----
    /// VMCOREINFO text that cannot be used at all.
    #[error("VMCOREINFO line {line}: {reason}")]
    Vmcoreinfo {
        /// 1-based line number (0: the text as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}
