//! Why a descriptor was refused (host side) or could not be written (guest side).

use super::{
    HEADER_SIZE, MAGIC, MAX_BUILD_ID, MAX_COUNT, MAX_DESCRIPTOR_SIZE, MAX_ELEMENT_SIZE,
    MAX_HINTS_PER_ROOT,
};

/// Why a descriptor was refused. Every variant says what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// The registration address is not usable.
    #[error("descriptor address {gpa:#x} is not page-aligned or lies beyond the 52-bit physical address space")]
    BadAddress {
        /// The address the guest wrote.
        gpa: u64,
    },
    /// Fewer bytes than the header or the declared size.
    #[error("descriptor truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Not a descriptor at all.
    #[error("bad descriptor magic {found:#018x} (expected {MAGIC:#018x}, \"AMBUDESC\")")]
    BadMagic {
        /// What was there.
        found: u64,
    },
    /// A version this host does not speak.
    #[error("unsupported descriptor ABI version {found} (this host speaks version 1)")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
    },
    /// `header_size` is not the ABI v1 header size.
    #[error("descriptor header_size is {found}, ABI v1 requires {HEADER_SIZE}")]
    BadHeaderSize {
        /// The value in the header.
        found: u16,
    },
    /// `total_size` out of range.
    #[error("descriptor total_size {size} is outside {HEADER_SIZE}..={MAX_DESCRIPTOR_SIZE}")]
    BadTotalSize {
        /// The value in the header.
        size: u32,
    },
    /// The CRC32C does not match.
    #[error(
        "descriptor checksum mismatch: header says {stored:#010x}, the bytes give {computed:#010x}"
    )]
    ChecksumMismatch {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// Header flags this ABI does not define.
    #[error("descriptor flags {flags:#x} include unknown bits")]
    UnknownFlags {
        /// The flags.
        flags: u32,
    },
    /// `build_id_len` too large.
    #[error("build ID length {len} exceeds {MAX_BUILD_ID}")]
    BuildIdTooLong {
        /// The declared length.
        len: u8,
    },
    /// A guest-physical address field is out of range or misaligned.
    #[error("{field} {addr:#x} must be {align}-byte aligned and below 2^52")]
    BadPhysicalAddress {
        /// Which field.
        field: &'static str,
        /// Its value.
        addr: u64,
        /// Required alignment.
        align: u64,
    },
    /// A table or text lies outside `total_size`, or is misaligned.
    #[error("{what} at offset {offset} with {len} bytes does not fit in the descriptor's {total_size} bytes (or is not 8-byte aligned)")]
    OutOfBounds {
        /// Which table.
        what: &'static str,
        /// Its offset.
        offset: u32,
        /// Its length in bytes.
        len: u64,
        /// The descriptor's total size.
        total_size: u32,
    },
    /// Too many entries.
    #[error("{what}: {count} exceeds the limit of {max}")]
    TooMany {
        /// What is counted.
        what: &'static str,
        /// How many were declared.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A name field is empty, not UTF-8, or has bytes after its NUL padding.
    #[error("root {root}: {field} is {problem}")]
    BadName {
        /// Index of the root.
        root: u32,
        /// `name` or `type_name`.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Two roots share a name.
    #[error("roots {first} and {second} have the same name")]
    DuplicateName {
        /// The first root.
        first: u32,
        /// The second root.
        second: u32,
    },
    /// Unknown root kind.
    #[error("root {root}: unknown kind {kind}")]
    UnknownKind {
        /// Index of the root.
        root: u32,
        /// The kind value.
        kind: u16,
    },
    /// Unknown root flags, or flags that make no sense for the kind.
    #[error("root {root}: flags {flags:#x} are unknown or do not apply to a {kind}")]
    BadRootFlags {
        /// Index of the root.
        root: u32,
        /// The flags.
        flags: u16,
        /// The root's kind.
        kind: &'static str,
    },
    /// A guest-virtual address is non-canonical (or null where one is required).
    #[error("root {root}: {field} {addr:#x} is not a canonical non-null virtual address")]
    NonCanonical {
        /// Index of the root.
        root: u32,
        /// Which field.
        field: &'static str,
        /// Its value.
        addr: u64,
    },
    /// An element size out of range.
    #[error("root {root}: element_size {size} is outside 1..={MAX_ELEMENT_SIZE}")]
    BadElementSize {
        /// Index of the root.
        root: u32,
        /// The declared size.
        size: u32,
    },
    /// A count out of range.
    #[error("root {root}: max_count {count} is outside 1..={MAX_COUNT}")]
    BadCount {
        /// Index of the root.
        root: u32,
        /// The declared count.
        count: u32,
    },
    /// The link field does not fit in the element.
    #[error("root {root}: link field at offset {offset} ({len} bytes) does not fit in a {element_size}-byte element")]
    BadLinkOffset {
        /// Index of the root.
        root: u32,
        /// The declared link offset.
        offset: u32,
        /// Size of the link field.
        len: u32,
        /// The element size.
        element_size: u32,
    },
    /// The root's slice of the hint table is out of range.
    #[error("root {root}: hints {first}..{first}+{count} exceed the hint table ({hint_count} entries) or the per-root limit of {MAX_HINTS_PER_ROOT}")]
    BadHintSlice {
        /// Index of the root.
        root: u32,
        /// First hint.
        first: u32,
        /// Number of hints.
        count: u32,
        /// Entries in the hint table.
        hint_count: u32,
    },
    /// A hint of unknown kind.
    #[error("hint {hint}: unknown kind {kind}")]
    UnknownHintKind {
        /// Index in the hint table.
        hint: u32,
        /// The kind value.
        kind: u16,
    },
    /// A hint whose values are impossible.
    #[error("hint {hint} (root {root}): {problem}")]
    BadHint {
        /// Index in the hint table.
        hint: u32,
        /// The root it belongs to.
        root: u32,
        /// What is wrong.
        problem: &'static str,
    },
    /// The VMCOREINFO text is not UTF-8.
    #[error("VMCOREINFO text is not valid UTF-8 (byte {valid_up_to} of {len})")]
    VmcoreinfoNotText {
        /// Length of the valid prefix.
        valid_up_to: usize,
        /// Length of the text.
        len: usize,
    },
}

/// Why a [`DescriptorWriter`](super::DescriptorWriter) could not write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The buffer cannot hold the layout asked for.
    #[error("buffer too small for the descriptor layout")]
    BufferTooSmall,
    /// More roots or hints than the layout reserved room for.
    #[error("no room left for another {0}")]
    Full(&'static str),
    /// A name longer than [`NAME_LEN`](super::NAME_LEN) bytes or containing NUL.
    #[error("name too long or contains NUL")]
    BadName,
    /// A build ID longer than [`MAX_BUILD_ID`].
    #[error("build ID too long")]
    BuildIdTooLong,
}
