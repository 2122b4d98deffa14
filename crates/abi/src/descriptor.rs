//! The registration descriptor, ABI v1.
//!
//! A guest kernel fills a descriptor in its own RAM, page-aligned, and writes its
//! guest-physical address to the registration doorbell ([`crate::ports::REGISTER_HI`]).
//! The host copies it, checks it with [`parse`], and keeps the copy: diagnosis later walks
//! from that copy, taken while the guest was healthy.
//!
//! # Wire layout (little-endian; offsets from the start of the descriptor)
//!
//! ```text
//! header (256 bytes)
//!   0  magic            u64   "AMBUDESC"
//!   8  version          u16   1
//!  10  header_size      u16   256
//!  12  total_size       u32   bytes covered by the checksum, header included
//!  16  checksum         u32   CRC32C of total_size bytes, this field taken as zero
//!  20  flags            u32   bit 0: the guest uses 5-level paging
//!  24  build_id_len     u8    (+7 bytes of padding)
//!  32  build_id         [u8; 32]
//!  64  load_offset      i64   KASLR slide of the kernel image
//!  72  page_table_root  u64   guest-physical address of the top-level page table (CR3)
//!  80  heartbeat_gpa    u64   guest-physical address of a u64 the guest keeps incrementing
//!  88  roots_offset     u32   ; 92 root_count  u32
//!  96  hints_offset     u32   ; 100 hint_count u32
//! 104  vmcoreinfo_offset u32  ; 108 vmcoreinfo_len u32 (0 = none)
//! 112..256 reserved
//!
//! root entry (128 bytes), at roots_offset + 128 * i
//!   0  name          [u8; 32]  UTF-8, NUL-padded
//!  32  type_name     [u8; 32]  UTF-8, NUL-padded (a type name in the kernel's debug info)
//!  64  kind          u16       RootKind
//!  66  flags         u16       root_flags
//!  68  element_size  u32
//!  72  address       u64       guest-virtual
//!  80  link_offset   u32       offset of the link field inside an element (lists, trees)
//!  84  max_count     u32       walk limit declared by the guest
//!  88  hint_first    u32       ; 92 hint_count u32: this root's slice of the hint table
//!  96  aux           u64       kind-specific (ring: address of its next-sequence counter)
//! 104  lock          u64       guest-virtual address of the 32-bit lock word protecting it
//!                           (non-zero while held), or 0
//! 112..128 reserved
//!
//! hint entry (40 bytes), at hints_offset + 40 * i
//!   0  kind u16 ; 2 flags u16 ; 4 size u32 ; 8 offset u32 ; 12 reserved u32
//!  16  a u64 ; 24 b u64 ; 32 reserved u64
//! ```
//!
//! What the hint fields mean is spelled out on [`Hint`]; what the root fields mean for each
//! kind, on [`RootKind`].

#![cfg_attr(not(feature = "alloc"), allow(dead_code, unused_imports))]

use crate::crc32c::Crc32c;
use crate::{is_canonical_48, is_canonical_57};

/// `magic`: the bytes `AMBUDESC`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"AMBUDESC");
/// Size of the fixed header.
pub const HEADER_SIZE: usize = 256;
/// Size of one root entry.
pub const ROOT_ENTRY_SIZE: usize = 128;
/// Size of one hint entry.
pub const HINT_ENTRY_SIZE: usize = 40;
/// Largest descriptor the host accepts.
pub const MAX_DESCRIPTOR_SIZE: usize = 128 * 1024;
/// Most roots in one descriptor.
pub const MAX_ROOTS: usize = 256;
/// Most hints in one descriptor.
pub const MAX_HINTS: usize = 1024;
/// Most hints on one root.
pub const MAX_HINTS_PER_ROOT: usize = 64;
/// Longest VMCOREINFO text.
pub const MAX_VMCOREINFO: usize = 64 * 1024;
/// Longest build ID.
pub const MAX_BUILD_ID: usize = 32;
/// Size of the name fields.
pub const NAME_LEN: usize = 32;
/// Largest element a root may declare.
pub const MAX_ELEMENT_SIZE: u32 = 1 << 20;
/// Largest `max_count` a root may declare.
pub const MAX_COUNT: u32 = 1 << 24;
/// Longest checksummed range.
pub const MAX_CHECKSUM_LEN: u32 = 64 << 20;
/// Guest-physical addresses must be below this (52-bit physical address space).
pub const MAX_PHYS_ADDR: u64 = 1 << 52;

/// Header flag: the guest uses 5-level paging (57-bit virtual addresses).
pub const FLAG_LA57: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_LA57;

/// Byte offsets of the wire layout, and raw field writers (for tools and tests that
/// craft descriptors, including deliberately broken ones).
pub mod layout {
    pub use super::{HEADER_SIZE, HINT_ENTRY_SIZE, ROOT_ENTRY_SIZE};

    /// Writes a little-endian `u32` at `at`.
    pub fn set_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Writes a little-endian `u64` at `at`.
    pub fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_SIZE_FIELD: usize = 10;
    pub const TOTAL_SIZE: usize = 12;
    pub const CHECKSUM: usize = 16;
    pub const FLAGS: usize = 20;
    pub const BUILD_ID_LEN: usize = 24;
    pub const BUILD_ID: usize = 32;
    pub const LOAD_OFFSET: usize = 64;
    pub const PAGE_TABLE_ROOT: usize = 72;
    pub const HEARTBEAT_GPA: usize = 80;
    pub const ROOTS_OFFSET: usize = 88;
    pub const ROOT_COUNT: usize = 92;
    pub const HINTS_OFFSET: usize = 96;
    pub const HINT_COUNT: usize = 100;
    pub const VMCOREINFO_OFFSET: usize = 104;
    pub const VMCOREINFO_LEN: usize = 108;

    pub mod root {
        pub const NAME: usize = 0;
        pub const TYPE_NAME: usize = 32;
        pub const KIND: usize = 64;
        pub const FLAGS: usize = 66;
        pub const ELEMENT_SIZE: usize = 68;
        pub const ADDRESS: usize = 72;
        pub const LINK_OFFSET: usize = 80;
        pub const MAX_COUNT: usize = 84;
        pub const HINT_FIRST: usize = 88;
        pub const HINT_COUNT: usize = 92;
        pub const AUX: usize = 96;
        pub const LOCK: usize = 104;
    }

    pub mod hint {
        pub const KIND: usize = 0;
        pub const FLAGS: usize = 2;
        pub const SIZE: usize = 4;
        pub const OFFSET: usize = 8;
        pub const A: usize = 16;
        pub const B: usize = 24;
    }
}

/// What a root is, and so how the host walks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RootKind {
    /// An intrusive linked list. `address` is the list head: for a doubly linked list a
    /// sentinel `{next, prev}` pair (Linux's `list_head`); with
    /// [`root_flags::SINGLY_LINKED`], a pointer variable holding the first link (0 = empty).
    /// Links point at the link field of the next element, which sits at `link_offset`
    /// inside each element of `element_size` bytes.
    List = 1,
    /// `max_count` consecutive elements of `element_size` bytes at `address`; with
    /// [`root_flags::POINTER_ELEMENTS`], `max_count` pointers (0 = empty slot), each to
    /// one element.
    Array = 2,
    /// One object of `element_size` bytes at `address`.
    Object = 3,
    /// A ring of `max_count` slots of `element_size` bytes at `address`. `aux` is the
    /// address of a `u64` holding the sequence number of the next record to be written;
    /// record `seq` lives in slot `seq % max_count`.
    Ring = 4,
    /// A binary tree. `address` is a pointer variable holding the root node (0 = empty);
    /// each node has its left and right child pointers at `link_offset` and
    /// `link_offset + 8`, pointing at node starts.
    Tree = 5,
}

impl RootKind {
    /// Decodes the wire value.
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => RootKind::List,
            2 => RootKind::Array,
            3 => RootKind::Object,
            4 => RootKind::Ring,
            5 => RootKind::Tree,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            RootKind::List => "list",
            RootKind::Array => "array",
            RootKind::Object => "object",
            RootKind::Ring => "ring",
            RootKind::Tree => "tree",
        }
    }
}

/// Flags of a root entry.
pub mod root_flags {
    /// List: singly linked (no `prev` pointers).
    pub const SINGLY_LINKED: u16 = 1;
    /// Array: the elements are pointers to objects.
    pub const POINTER_ELEMENTS: u16 = 2;
    /// Any kind: only the low byte of the lock word says the structure is being written
    /// — a reader-writer lock whose readers count in the bytes above it (Linux's
    /// qrwlock: `wlocked`). A read-held lock does not excuse inconsistencies.
    pub const LOCK_BYTE: u16 = 4;
    /// All flags ABI v1 knows.
    pub const KNOWN: u16 = SINGLY_LINKED | POINTER_ELEMENTS | LOCK_BYTE;
}

/// Hint flag: a pointer-range field may also be null.
pub const HINT_NULLABLE: u16 = 1;

const HINT_MAGIC: u16 = 1;
const HINT_CHECKSUM: u16 = 2;
const HINT_POINTER_RANGE: u16 = 3;

/// A validation hint attached to a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hint {
    /// Each element holds `value` in its `size`-byte field (1, 2, 4 or 8) at `offset`.
    /// Wire: kind 1, `size`, `offset`, `a` = value.
    Magic {
        /// Offset of the field inside an element.
        offset: u32,
        /// Width of the field in bytes.
        size: u8,
        /// The value it must hold.
        value: u64,
    },
    /// The `len` bytes at guest-virtual `start` must keep CRC32C `crc32c` (the value the
    /// guest computed at registration). Wire: kind 2, `size` = len, `a` = start, `b` = crc.
    Checksum {
        /// Guest-virtual start.
        start: u64,
        /// Length in bytes.
        len: u32,
        /// Expected CRC32C.
        crc32c: u32,
    },
    /// The pointer at `offset` in each element lies in `[lo, hi)` (or is 0 when
    /// `nullable`). Wire: kind 3, `offset`, `a` = lo, `b` = hi, flag [`HINT_NULLABLE`].
    PointerRange {
        /// Offset of the pointer inside an element.
        offset: u32,
        /// Lowest allowed address.
        lo: u64,
        /// One past the highest allowed address.
        hi: u64,
        /// Whether 0 is allowed too.
        nullable: bool,
    },
}

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

/// Checks the address a guest wrote to the registration doorbell.
pub fn check_registration_gpa(gpa: u64) -> Result<(), DescriptorError> {
    if !gpa.is_multiple_of(crate::PAGE_SIZE) || gpa >= MAX_PHYS_ADDR || gpa == 0 {
        return Err(DescriptorError::BadAddress { gpa });
    }
    Ok(())
}

/// Reads the `total_size` field from a descriptor's first bytes, so a host can tell how
/// much to copy. Bounded by [`MAX_DESCRIPTOR_SIZE`].
pub fn declared_size(header: &[u8]) -> Result<usize, DescriptorError> {
    if header.len() < HEADER_SIZE {
        return Err(DescriptorError::Truncated {
            needed: HEADER_SIZE,
            available: header.len(),
        });
    }
    let size = u32_at(header, layout::TOTAL_SIZE);
    if (size as usize) < HEADER_SIZE || size as usize > MAX_DESCRIPTOR_SIZE {
        return Err(DescriptorError::BadTotalSize { size });
    }
    Ok(size as usize)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// Recomputes the checksum of a descriptor in place after its bytes were edited (with
/// `total_size` clamped to the buffer).
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_SIZE {
        return;
    }
    let total = (u32_at(bytes, layout::TOTAL_SIZE) as usize).clamp(HEADER_SIZE, bytes.len());
    let crc = checksum_of(&bytes[..total]);
    put(bytes, layout::CHECKSUM, &crc.to_le_bytes());
}

/// The CRC32C of the first `total_size` bytes of `bytes`, with the checksum field taken
/// as zero.
fn checksum_of(bytes: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(&bytes[..layout::CHECKSUM]);
    c.update(&[0; 4]);
    c.update(&bytes[layout::CHECKSUM + 4..]);
    c.finish()
}

/// Why a [`DescriptorWriter`] could not write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The buffer cannot hold the layout asked for.
    #[error("buffer too small for the descriptor layout")]
    BufferTooSmall,
    /// More roots or hints than the layout reserved room for.
    #[error("no room left for another {0}")]
    Full(&'static str),
    /// A name longer than [`NAME_LEN`] bytes or containing NUL.
    #[error("name too long or contains NUL")]
    BadName,
    /// A build ID longer than [`MAX_BUILD_ID`].
    #[error("build ID too long")]
    BuildIdTooLong,
}

/// A root as a guest declares it (borrowed names; no allocator needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootSpec<'a> {
    /// Unique name of the root.
    pub name: &'a str,
    /// Element type name in the kernel's debug info.
    pub type_name: &'a str,
    /// What it is.
    pub kind: RootKind,
    /// [`root_flags`].
    pub flags: u16,
    /// Guest-virtual address (see [`RootKind`]).
    pub address: u64,
    /// Size of one element.
    pub element_size: u32,
    /// Offset of the link field (lists, trees).
    pub link_offset: u32,
    /// Walk limit.
    pub max_count: u32,
    /// Kind-specific extra address (see [`RootKind`]).
    pub aux: u64,
    /// Address of the 32-bit lock word protecting the structure (non-zero while held),
    /// or 0. A host that finds the lock held at freeze time knows the structure may be
    /// in the middle of an update.
    pub lock: u64,
}

/// Writes a descriptor into a caller-provided buffer. `no_std`, no allocator: this is what
/// a guest kernel uses at boot.
///
/// The layout is fixed at creation: the header, room for `max_roots` root entries, room
/// for `max_hints` hint entries, then the VMCOREINFO text.
pub struct DescriptorWriter<'a> {
    buf: &'a mut [u8],
    max_roots: usize,
    max_hints: usize,
    roots: usize,
    hints: usize,
    vmcoreinfo_len: usize,
}

impl<'a> DescriptorWriter<'a> {
    /// Starts a descriptor in `buf` (zeroed here) with room for the given number of entries.
    pub fn new(buf: &'a mut [u8], max_roots: usize, max_hints: usize) -> Result<Self, WriteError> {
        if max_roots > MAX_ROOTS || max_hints > MAX_HINTS {
            return Err(WriteError::BufferTooSmall);
        }
        let fixed = HEADER_SIZE + max_roots * ROOT_ENTRY_SIZE + max_hints * HINT_ENTRY_SIZE;
        if buf.len() < fixed || buf.len() > u32::MAX as usize {
            return Err(WriteError::BufferTooSmall);
        }
        buf.fill(0);
        put(buf, layout::MAGIC, &MAGIC.to_le_bytes());
        put(buf, layout::VERSION, &crate::ABI_VERSION.to_le_bytes());
        put(
            buf,
            layout::HEADER_SIZE_FIELD,
            &(HEADER_SIZE as u16).to_le_bytes(),
        );
        Ok(DescriptorWriter {
            buf,
            max_roots,
            max_hints,
            roots: 0,
            hints: 0,
            vmcoreinfo_len: 0,
        })
    }

    fn roots_offset(&self) -> usize {
        HEADER_SIZE
    }
    fn hints_offset(&self) -> usize {
        HEADER_SIZE + self.max_roots * ROOT_ENTRY_SIZE
    }
    fn vmcoreinfo_offset(&self) -> usize {
        self.hints_offset() + self.max_hints * HINT_ENTRY_SIZE
    }

    /// Header flags ([`FLAG_LA57`]).
    pub fn set_flags(&mut self, flags: u32) {
        put(self.buf, layout::FLAGS, &flags.to_le_bytes());
    }

    /// The kernel's build ID (the GNU build-id note's descriptor).
    pub fn set_build_id(&mut self, id: &[u8]) -> Result<(), WriteError> {
        if id.len() > MAX_BUILD_ID {
            return Err(WriteError::BuildIdTooLong);
        }
        self.buf[layout::BUILD_ID_LEN] = id.len() as u8;
        put(self.buf, layout::BUILD_ID, id);
        Ok(())
    }

    /// The kernel image's load offset (KASLR slide).
    pub fn set_load_offset(&mut self, offset: i64) {
        put(self.buf, layout::LOAD_OFFSET, &offset.to_le_bytes());
    }

    /// Guest-physical address of the top-level page table.
    pub fn set_page_table_root(&mut self, gpa: u64) {
        put(self.buf, layout::PAGE_TABLE_ROOT, &gpa.to_le_bytes());
    }

    /// Guest-physical address of the heartbeat counter.
    pub fn set_heartbeat_gpa(&mut self, gpa: u64) {
        put(self.buf, layout::HEARTBEAT_GPA, &gpa.to_le_bytes());
    }

    /// Adds a root with its hints.
    pub fn push_root(&mut self, root: &RootSpec<'_>, hints: &[Hint]) -> Result<(), WriteError> {
        if self.roots == self.max_roots {
            return Err(WriteError::Full("root"));
        }
        if self.hints + hints.len() > self.max_hints {
            return Err(WriteError::Full("hint"));
        }
        let at = self.roots_offset() + self.roots * ROOT_ENTRY_SIZE;
        write_name(self.buf, at + layout::root::NAME, root.name)?;
        write_name(self.buf, at + layout::root::TYPE_NAME, root.type_name)?;
        put(
            self.buf,
            at + layout::root::KIND,
            &(root.kind as u16).to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::FLAGS,
            &root.flags.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::ELEMENT_SIZE,
            &root.element_size.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::ADDRESS,
            &root.address.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::LINK_OFFSET,
            &root.link_offset.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::MAX_COUNT,
            &root.max_count.to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::HINT_FIRST,
            &(self.hints as u32).to_le_bytes(),
        );
        put(
            self.buf,
            at + layout::root::HINT_COUNT,
            &(hints.len() as u32).to_le_bytes(),
        );
        put(self.buf, at + layout::root::AUX, &root.aux.to_le_bytes());
        put(self.buf, at + layout::root::LOCK, &root.lock.to_le_bytes());
        for hint in hints {
            let h = self.hints_offset() + self.hints * HINT_ENTRY_SIZE;
            let (kind, flags, size, offset, a, b) = match *hint {
                Hint::Magic {
                    offset,
                    size,
                    value,
                } => (HINT_MAGIC, 0, size as u32, offset, value, 0),
                Hint::Checksum { start, len, crc32c } => {
                    (HINT_CHECKSUM, 0, len, 0, start, crc32c as u64)
                }
                Hint::PointerRange {
                    offset,
                    lo,
                    hi,
                    nullable,
                } => (
                    HINT_POINTER_RANGE,
                    if nullable { HINT_NULLABLE } else { 0 },
                    8,
                    offset,
                    lo,
                    hi,
                ),
            };
            put(self.buf, h + layout::hint::KIND, &kind.to_le_bytes());
            put(self.buf, h + layout::hint::FLAGS, &flags.to_le_bytes());
            put(self.buf, h + layout::hint::SIZE, &size.to_le_bytes());
            put(self.buf, h + layout::hint::OFFSET, &offset.to_le_bytes());
            put(self.buf, h + layout::hint::A, &a.to_le_bytes());
            put(self.buf, h + layout::hint::B, &b.to_le_bytes());
            self.hints += 1;
        }
        self.roots += 1;
        Ok(())
    }

    /// Appends VMCOREINFO text (`KEY=value` lines). Use it through `core::fmt::Write`.
    pub fn push_vmcoreinfo(&mut self, text: &str) -> Result<(), WriteError> {
        let at = self.vmcoreinfo_offset() + self.vmcoreinfo_len;
        if at + text.len() > self.buf.len() || self.vmcoreinfo_len + text.len() > MAX_VMCOREINFO {
            return Err(WriteError::Full("VMCOREINFO byte"));
        }
        put(self.buf, at, text.as_bytes());
        self.vmcoreinfo_len += text.len();
        Ok(())
    }

    /// Fills in the tables' positions and the checksum; returns the descriptor's size.
    pub fn finish(self) -> usize {
        let total = self.vmcoreinfo_offset() + self.vmcoreinfo_len;
        let (ro, ho, vo) = (
            self.roots_offset(),
            self.hints_offset(),
            self.vmcoreinfo_offset(),
        );
        let buf = self.buf;
        put(buf, layout::TOTAL_SIZE, &(total as u32).to_le_bytes());
        put(buf, layout::ROOTS_OFFSET, &(ro as u32).to_le_bytes());
        put(buf, layout::ROOT_COUNT, &(self.roots as u32).to_le_bytes());
        put(buf, layout::HINTS_OFFSET, &(ho as u32).to_le_bytes());
        put(buf, layout::HINT_COUNT, &(self.hints as u32).to_le_bytes());
        let (vo, vl) = if self.vmcoreinfo_len == 0 {
            (0, 0)
        } else {
            (vo as u32, self.vmcoreinfo_len as u32)
        };
        put(buf, layout::VMCOREINFO_OFFSET, &vo.to_le_bytes());
        put(buf, layout::VMCOREINFO_LEN, &vl.to_le_bytes());
        let crc = checksum_of(&buf[..total]);
        put(buf, layout::CHECKSUM, &crc.to_le_bytes());
        total
    }
}

impl core::fmt::Write for DescriptorWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push_vmcoreinfo(s).map_err(|_| core::fmt::Error)
    }
}

fn write_name(buf: &mut [u8], at: usize, name: &str) -> Result<(), WriteError> {
    if name.len() > NAME_LEN || name.as_bytes().contains(&0) {
        return Err(WriteError::BadName);
    }
    put(buf, at, name.as_bytes());
    Ok(())
}

/// Decodes a NUL-padded name field.
fn read_name(field: &[u8]) -> Result<&str, &'static str> {
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    if len == 0 {
        return Err("empty");
    }
    if field[len..].iter().any(|&b| b != 0) {
        return Err("followed by bytes after its NUL padding");
    }
    core::str::from_utf8(&field[..len]).map_err(|_| "not valid UTF-8")
}

#[cfg(feature = "alloc")]
pub use owned::*;

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec;
    use alloc::vec::Vec;

    /// A parsed, validated descriptor (host side).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Descriptor {
        /// Header flags ([`FLAG_LA57`]).
        pub flags: u32,
        /// The kernel's build ID.
        pub build_id: Vec<u8>,
        /// KASLR slide of the kernel image.
        pub load_offset: i64,
        /// Guest-physical address of the top-level page table.
        pub page_table_root: u64,
        /// Guest-physical address of the heartbeat counter.
        pub heartbeat_gpa: u64,
        /// VMCOREINFO text, when the guest provided one.
        pub vmcoreinfo: Option<String>,
        /// The roots, in table order.
        pub roots: Vec<Root>,
    }

    /// A parsed root.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Root {
        /// Unique name.
        pub name: String,
        /// Element type name.
        pub type_name: String,
        /// What it is.
        pub kind: RootKind,
        /// [`root_flags`].
        pub flags: u16,
        /// Guest-virtual address.
        pub address: u64,
        /// Size of one element.
        pub element_size: u32,
        /// Offset of the link field.
        pub link_offset: u32,
        /// Walk limit.
        pub max_count: u32,
        /// Kind-specific extra address.
        pub aux: u64,
        /// Address of the protecting lock, or 0.
        pub lock: u64,
        /// Validation hints.
        pub hints: Vec<Hint>,
    }

    impl Root {
        /// The borrowed form a [`DescriptorWriter`] takes.
        pub fn spec(&self) -> RootSpec<'_> {
            RootSpec {
                name: &self.name,
                type_name: &self.type_name,
                kind: self.kind,
                flags: self.flags,
                address: self.address,
                element_size: self.element_size,
                link_offset: self.link_offset,
                max_count: self.max_count,
                aux: self.aux,
                lock: self.lock,
            }
        }

        /// Whether the flag is set.
        pub fn has_flag(&self, flag: u16) -> bool {
            self.flags & flag != 0
        }
    }

    impl Descriptor {
        /// The root with this name.
        pub fn root(&self, name: &str) -> Option<&Root> {
            self.roots.iter().find(|r| r.name == name)
        }

        /// Encodes to the wire format (the inverse of [`parse`]).
        pub fn encode(&self) -> Result<Vec<u8>, WriteError> {
            let hints: usize = self.roots.iter().map(|r| r.hints.len()).sum();
            let vmcoreinfo = self.vmcoreinfo.as_deref().unwrap_or("");
            let size = HEADER_SIZE
                + self.roots.len() * ROOT_ENTRY_SIZE
                + hints * HINT_ENTRY_SIZE
                + vmcoreinfo.len();
            let mut buf = vec![0u8; size];
            let mut w = DescriptorWriter::new(&mut buf, self.roots.len(), hints)?;
            w.set_flags(self.flags);
            w.set_build_id(&self.build_id)?;
            w.set_load_offset(self.load_offset);
            w.set_page_table_root(self.page_table_root);
            w.set_heartbeat_gpa(self.heartbeat_gpa);
            for r in &self.roots {
                w.push_root(&r.spec(), &r.hints)?;
            }
            w.push_vmcoreinfo(vmcoreinfo)?;
            let total = w.finish();
            buf.truncate(total);
            Ok(buf)
        }
    }

    /// Parses and validates a descriptor. `bytes` may be longer than the descriptor; only
    /// `total_size` bytes are read.
    pub fn parse(bytes: &[u8]) -> Result<Descriptor, DescriptorError> {
        let total = declared_size(bytes)?;
        let magic = u64_at(bytes, layout::MAGIC);
        if magic != MAGIC {
            return Err(DescriptorError::BadMagic { found: magic });
        }
        let version = u16_at(bytes, layout::VERSION);
        if version != crate::ABI_VERSION {
            return Err(DescriptorError::UnsupportedVersion { found: version });
        }
        let header_size = u16_at(bytes, layout::HEADER_SIZE_FIELD);
        if header_size as usize != HEADER_SIZE {
            return Err(DescriptorError::BadHeaderSize { found: header_size });
        }
        if bytes.len() < total {
            return Err(DescriptorError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        }
        let b = &bytes[..total];
        let stored = u32_at(b, layout::CHECKSUM);
        let computed = checksum_of(b);
        if stored != computed {
            return Err(DescriptorError::ChecksumMismatch { stored, computed });
        }
        let flags = u32_at(b, layout::FLAGS);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DescriptorError::UnknownFlags { flags });
        }
        let canonical = if flags & FLAG_LA57 != 0 {
            is_canonical_57
        } else {
            is_canonical_48
        };
        let build_id_len = b[layout::BUILD_ID_LEN];
        if build_id_len as usize > MAX_BUILD_ID {
            return Err(DescriptorError::BuildIdTooLong { len: build_id_len });
        }
        let build_id = b[layout::BUILD_ID..layout::BUILD_ID + build_id_len as usize].to_vec();
        let load_offset = u64_at(b, layout::LOAD_OFFSET) as i64;
        let page_table_root = u64_at(b, layout::PAGE_TABLE_ROOT);
        check_phys("page_table_root", page_table_root, crate::PAGE_SIZE)?;
        let heartbeat_gpa = u64_at(b, layout::HEARTBEAT_GPA);
        check_phys("heartbeat_gpa", heartbeat_gpa, 8)?;

        let root_count = u32_at(b, layout::ROOT_COUNT);
        let hint_count = u32_at(b, layout::HINT_COUNT);
        if root_count as usize > MAX_ROOTS {
            return Err(DescriptorError::TooMany {
                what: "roots",
                count: root_count as u64,
                max: MAX_ROOTS as u64,
            });
        }
        if hint_count as usize > MAX_HINTS {
            return Err(DescriptorError::TooMany {
                what: "hints",
                count: hint_count as u64,
                max: MAX_HINTS as u64,
            });
        }
        let roots_at = table(
            b,
            "root table",
            layout::ROOTS_OFFSET,
            root_count,
            ROOT_ENTRY_SIZE,
            8,
        )?;
        let hints_at = table(
            b,
            "hint table",
            layout::HINTS_OFFSET,
            hint_count,
            HINT_ENTRY_SIZE,
            8,
        )?;
        let vmcoreinfo_len = u32_at(b, layout::VMCOREINFO_LEN);
        if vmcoreinfo_len as usize > MAX_VMCOREINFO {
            return Err(DescriptorError::TooMany {
                what: "VMCOREINFO bytes",
                count: vmcoreinfo_len as u64,
                max: MAX_VMCOREINFO as u64,
            });
        }
        let vmcoreinfo = if vmcoreinfo_len == 0 {
            None
        } else {
            let at = table(
                b,
                "VMCOREINFO text",
                layout::VMCOREINFO_OFFSET,
                vmcoreinfo_len,
                1,
                1,
            )?;
            let text = &b[at..at + vmcoreinfo_len as usize];
            let text =
                core::str::from_utf8(text).map_err(|e| DescriptorError::VmcoreinfoNotText {
                    valid_up_to: e.valid_up_to(),
                    len: text.len(),
                })?;
            Some(text.to_string())
        };

        let mut roots: Vec<Root> = Vec::with_capacity(root_count as usize);
        for i in 0..root_count {
            let e = &b[roots_at + i as usize * ROOT_ENTRY_SIZE..][..ROOT_ENTRY_SIZE];
            let root = parse_root(i, e, b, hints_at, hint_count, canonical)?;
            if let Some(first) = roots.iter().position(|r| r.name == root.name) {
                return Err(DescriptorError::DuplicateName {
                    first: first as u32,
                    second: i,
                });
            }
            roots.push(root);
        }
        Ok(Descriptor {
            flags,
            build_id,
            load_offset,
            page_table_root,
            heartbeat_gpa,
            vmcoreinfo,
            roots,
        })
    }

    fn check_phys(field: &'static str, addr: u64, align: u64) -> Result<(), DescriptorError> {
        if !addr.is_multiple_of(align) || addr >= MAX_PHYS_ADDR {
            return Err(DescriptorError::BadPhysicalAddress { field, addr, align });
        }
        Ok(())
    }

    /// Checks a table's bounds; returns its offset.
    fn table(
        b: &[u8],
        what: &'static str,
        offset_field: usize,
        count: u32,
        entry: usize,
        align: u32,
    ) -> Result<usize, DescriptorError> {
        let offset = u32_at(b, offset_field);
        let len = count as u64 * entry as u64;
        let end = offset as u64 + len;
        let in_bounds = len == 0 || (offset as usize >= HEADER_SIZE && end <= b.len() as u64);
        if !in_bounds || !offset.is_multiple_of(align) {
            return Err(DescriptorError::OutOfBounds {
                what,
                offset,
                len,
                total_size: b.len() as u32,
            });
        }
        Ok(offset as usize)
    }

    fn parse_root(
        i: u32,
        e: &[u8],
        b: &[u8],
        hints_at: usize,
        hint_count: u32,
        canonical: fn(u64) -> bool,
    ) -> Result<Root, DescriptorError> {
        let name = read_name(&e[layout::root::NAME..][..NAME_LEN]).map_err(|problem| {
            DescriptorError::BadName {
                root: i,
                field: "name",
                problem,
            }
        })?;
        let type_name =
            read_name(&e[layout::root::TYPE_NAME..][..NAME_LEN]).map_err(|problem| {
                DescriptorError::BadName {
                    root: i,
                    field: "type_name",
                    problem,
                }
            })?;
        let kind_raw = u16_at(e, layout::root::KIND);
        let kind = RootKind::from_u16(kind_raw).ok_or(DescriptorError::UnknownKind {
            root: i,
            kind: kind_raw,
        })?;
        let flags = u16_at(e, layout::root::FLAGS);
        let allowed = root_flags::LOCK_BYTE
            | match kind {
                RootKind::List => root_flags::SINGLY_LINKED,
                RootKind::Array => root_flags::POINTER_ELEMENTS,
                _ => 0,
            };
        if flags & !allowed != 0 {
            return Err(DescriptorError::BadRootFlags {
                root: i,
                flags,
                kind: kind.name(),
            });
        }
        let element_size = u32_at(e, layout::root::ELEMENT_SIZE);
        if element_size == 0 || element_size > MAX_ELEMENT_SIZE {
            return Err(DescriptorError::BadElementSize {
                root: i,
                size: element_size,
            });
        }
        let address = u64_at(e, layout::root::ADDRESS);
        if address == 0 || !canonical(address) {
            return Err(DescriptorError::NonCanonical {
                root: i,
                field: "address",
                addr: address,
            });
        }
        let max_count = u32_at(e, layout::root::MAX_COUNT);
        if max_count == 0 || max_count > MAX_COUNT || (kind == RootKind::Object && max_count != 1) {
            return Err(DescriptorError::BadCount {
                root: i,
                count: max_count,
            });
        }
        let link_offset = u32_at(e, layout::root::LINK_OFFSET);
        let link_len = match kind {
            RootKind::List if flags & root_flags::SINGLY_LINKED != 0 => 8,
            RootKind::List | RootKind::Tree => 16,
            _ => 0,
        };
        if link_len > 0 && link_offset as u64 + link_len as u64 > element_size as u64 {
            return Err(DescriptorError::BadLinkOffset {
                root: i,
                offset: link_offset,
                len: link_len,
                element_size,
            });
        }
        let aux = u64_at(e, layout::root::AUX);
        if (kind == RootKind::Ring && (aux == 0 || !canonical(aux))) || !canonical(aux) {
            return Err(DescriptorError::NonCanonical {
                root: i,
                field: "aux",
                addr: aux,
            });
        }
        let lock = u64_at(e, layout::root::LOCK);
        if !canonical(lock) {
            return Err(DescriptorError::NonCanonical {
                root: i,
                field: "lock",
                addr: lock,
            });
        }
        let first = u32_at(e, layout::root::HINT_FIRST);
        let count = u32_at(e, layout::root::HINT_COUNT);
        if count as usize > MAX_HINTS_PER_ROOT || first as u64 + count as u64 > hint_count as u64 {
            return Err(DescriptorError::BadHintSlice {
                root: i,
                first,
                count,
                hint_count,
            });
        }
        let mut hints = Vec::with_capacity(count as usize);
        for h in first..first + count {
            let he = &b[hints_at + h as usize * HINT_ENTRY_SIZE..][..HINT_ENTRY_SIZE];
            hints.push(parse_hint(h, i, he, element_size, canonical)?);
        }
        Ok(Root {
            name: name.to_string(),
            type_name: type_name.to_string(),
            kind,
            flags,
            address,
            element_size,
            link_offset,
            max_count,
            aux,
            lock,
            hints,
        })
    }

    fn parse_hint(
        h: u32,
        root: u32,
        e: &[u8],
        element_size: u32,
        canonical: fn(u64) -> bool,
    ) -> Result<Hint, DescriptorError> {
        let bad = |problem| DescriptorError::BadHint {
            hint: h,
            root,
            problem,
        };
        let kind = u16_at(e, layout::hint::KIND);
        let flags = u16_at(e, layout::hint::FLAGS);
        let size = u32_at(e, layout::hint::SIZE);
        let offset = u32_at(e, layout::hint::OFFSET);
        let a = u64_at(e, layout::hint::A);
        let b = u64_at(e, layout::hint::B);
        let field_fits = |len: u32| offset as u64 + len as u64 <= element_size as u64;
        match kind {
            HINT_MAGIC => {
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(bad("magic field size must be 1, 2, 4 or 8 bytes"));
                }
                if !field_fits(size) {
                    return Err(bad("magic field lies outside the element"));
                }
                if size < 8 && a >> (size * 8) != 0 {
                    return Err(bad("magic value is wider than its field"));
                }
                if flags != 0 {
                    return Err(bad("magic hints take no flags"));
                }
                Ok(Hint::Magic {
                    offset,
                    size: size as u8,
                    value: a,
                })
            }
            HINT_CHECKSUM => {
                if size == 0 || size > MAX_CHECKSUM_LEN {
                    return Err(bad("checksummed range is empty or longer than 64 MiB"));
                }
                let last = a.checked_add(size as u64 - 1);
                if a == 0 || !canonical(a) || !last.is_some_and(canonical) {
                    return Err(bad("checksummed range is not canonical"));
                }
                if b > u32::MAX as u64 || flags != 0 {
                    return Err(bad("checksum value wider than 32 bits, or flags set"));
                }
                Ok(Hint::Checksum {
                    start: a,
                    len: size,
                    crc32c: b as u32,
                })
            }
            HINT_POINTER_RANGE => {
                if !field_fits(8) {
                    return Err(bad("pointer field lies outside the element"));
                }
                if a >= b {
                    return Err(bad("pointer range is empty (lo >= hi)"));
                }
                if !canonical(a) || !canonical(b - 1) {
                    return Err(bad("pointer range is not canonical"));
                }
                if flags & !HINT_NULLABLE != 0 {
                    return Err(bad("unknown pointer-range flags"));
                }
                Ok(Hint::PointerRange {
                    offset,
                    lo: a,
                    hi: b,
                    nullable: flags & HINT_NULLABLE != 0,
                })
            }
            _ => Err(DescriptorError::UnknownHintKind { hint: h, kind }),
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn sample() -> Descriptor {
        Descriptor {
            flags: 0,
            build_id: vec![0xab; 20],
            load_offset: 0,
            page_table_root: 0x10_0000,
            heartbeat_gpa: 0x20_0008,
            vmcoreinfo: Some("OSRELEASE=test\nPAGESIZE=4096\n".to_string()),
            roots: vec![
                Root {
                    name: "run_queue".to_string(),
                    type_name: "Task".to_string(),
                    kind: RootKind::List,
                    flags: 0,
                    address: 0xffff_ffff_8020_1000,
                    element_size: 256,
                    link_offset: 16,
                    max_count: 64,
                    aux: 0,
                    lock: 0xffff_ffff_8020_2000,
                    hints: vec![Hint::Magic {
                        offset: 0,
                        size: 8,
                        value: 0x7461_736b,
                    }],
                },
                Root {
                    name: "kernel_text".to_string(),
                    type_name: "u8".to_string(),
                    kind: RootKind::Object,
                    flags: 0,
                    address: 0xffff_ffff_8020_0000,
                    element_size: 4096,
                    link_offset: 0,
                    max_count: 1,
                    aux: 0,
                    lock: 0,
                    hints: vec![Hint::Checksum {
                        start: 0xffff_ffff_8020_0000,
                        len: 4096,
                        crc32c: 0xdead_beef,
                    }],
                },
            ],
        }
    }

    #[test]
    fn sample_round_trips() {
        let d = sample();
        let bytes = d.encode().unwrap();
        assert_eq!(parse(&bytes).unwrap(), d);
    }

    #[test]
    fn bad_checksum_is_refused() {
        let mut bytes = sample().encode().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            parse(&bytes),
            Err(DescriptorError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn oversize_counts_are_refused() {
        let mut bytes = sample().encode().unwrap();
        put(&mut bytes, layout::ROOT_COUNT, &100_000u32.to_le_bytes());
        reseal(&mut bytes);
        let err = parse(&bytes).unwrap_err();
        assert!(
            matches!(err, DescriptorError::TooMany { what: "roots", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("100000"));
    }

    #[test]
    fn non_canonical_root_address_is_refused() {
        let mut bytes = sample().encode().unwrap();
        put(
            &mut bytes,
            HEADER_SIZE + layout::root::ADDRESS,
            &0x0000_8000_0000_0000u64.to_le_bytes(),
        );
        reseal(&mut bytes);
        let err = parse(&bytes).unwrap_err();
        assert_eq!(
            err,
            DescriptorError::NonCanonical {
                root: 0,
                field: "address",
                addr: 0x0000_8000_0000_0000
            }
        );
    }

    #[test]
    fn root_flags_are_checked_per_kind() {
        // A lock-byte lock on any kind, singly linked on lists only, nothing unknown.
        let mut d = sample();
        d.roots[0].flags = root_flags::SINGLY_LINKED | root_flags::LOCK_BYTE;
        d.roots[1].flags = root_flags::LOCK_BYTE;
        assert_eq!(parse(&d.encode().unwrap()).unwrap(), d);
        for (root, flags) in [(1u32, root_flags::SINGLY_LINKED), (0, 8)] {
            let mut bad = sample();
            bad.roots[root as usize].flags = flags;
            let err = parse(&bad.encode().unwrap()).unwrap_err();
            assert!(
                matches!(err, DescriptorError::BadRootFlags { root: r, .. } if r == root),
                "{err}"
            );
        }
    }

    #[test]
    fn truncated_and_foreign_bytes_are_refused() {
        let bytes = sample().encode().unwrap();
        assert!(matches!(
            parse(&bytes[..100]),
            Err(DescriptorError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&bytes[..bytes.len() - 1]),
            Err(DescriptorError::Truncated { .. })
        ));
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert!(matches!(
            parse(&foreign),
            Err(DescriptorError::BadMagic { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let mut bytes = sample().encode().unwrap();
        bytes[HEADER_SIZE] = 0xff;
        reseal(&mut bytes);
        assert!(matches!(
            parse(&bytes),
            Err(DescriptorError::BadName {
                root: 0,
                field: "name",
                ..
            })
        ));
    }

    #[test]
    fn registration_address_must_be_page_aligned() {
        assert!(check_registration_gpa(0x1000).is_ok());
        assert!(check_registration_gpa(0x1008).is_err());
        assert!(check_registration_gpa(0).is_err());
        assert!(check_registration_gpa(1 << 60).is_err());
    }

    fn canonical_addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            (1u64..(1 << 47)).prop_map(|a| a & !7),
            (0u64..(1 << 47)).prop_map(|a| (a | 0xffff_8000_0000_0000) & !7),
        ]
        .prop_filter("non-null", |a| *a != 0)
    }

    fn hint(element_size: u32) -> impl Strategy<Value = Hint> {
        prop_oneof![
            (
                0..element_size,
                prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
                any::<u64>()
            )
                .prop_filter("fits", move |(o, s, _)| o + *s as u32 <= element_size)
                .prop_map(|(offset, size, v)| Hint::Magic {
                    offset,
                    size,
                    value: if size == 8 {
                        v
                    } else {
                        v & ((1u64 << (size * 8)) - 1)
                    },
                }),
            (canonical_addr(), 1u32..4096, any::<u32>())
                .prop_filter("stays canonical", |(start, len, _)| {
                    start
                        .checked_add(*len as u64 - 1)
                        .is_some_and(crate::is_canonical_48)
                })
                .prop_map(|(start, len, crc32c)| Hint::Checksum { start, len, crc32c }),
            (
                0..element_size.saturating_sub(7).max(1),
                canonical_addr(),
                1u64..(1 << 20),
                any::<bool>()
            )
                .prop_filter("fits", move |(o, ..)| o + 8 <= element_size)
                .prop_filter("stays canonical", |(_, lo, len, _)| {
                    lo.checked_add(len - 1).is_some_and(crate::is_canonical_48)
                })
                .prop_map(|(offset, lo, len, nullable)| Hint::PointerRange {
                    offset,
                    lo,
                    hi: lo + len,
                    nullable,
                }),
        ]
    }

    fn root() -> impl Strategy<Value = Root> {
        (
            "[a-z][a-z0-9_.]{0,31}",
            "[A-Za-z][A-Za-z0-9_:]{0,31}",
            prop_oneof![
                Just(RootKind::List),
                Just(RootKind::Array),
                Just(RootKind::Object),
                Just(RootKind::Ring),
                Just(RootKind::Tree)
            ],
            16u32..4096,
            canonical_addr(),
            canonical_addr(),
            prop_oneof![Just(0u64), canonical_addr()],
            1u32..10_000,
            any::<bool>(),
        )
            .prop_flat_map(
                |(name, type_name, kind, element_size, address, aux, lock, count, flag)| {
                    let flags = match kind {
                        RootKind::List if flag => root_flags::SINGLY_LINKED,
                        RootKind::Array if flag => root_flags::POINTER_ELEMENTS,
                        _ => 0,
                    };
                    let max_count = if kind == RootKind::Object { 1 } else { count };
                    let aux = if kind == RootKind::Ring { aux } else { 0 };
                    (
                        Just((
                            name,
                            type_name,
                            kind,
                            flags,
                            element_size,
                            address,
                            aux,
                            lock,
                            max_count,
                        )),
                        0..element_size - 15,
                        proptest::collection::vec(hint(element_size), 0..4),
                    )
                },
            )
            .prop_map(
                |(
                    (name, type_name, kind, flags, element_size, address, aux, lock, max_count),
                    link_offset,
                    hints,
                )| {
                    Root {
                        name,
                        type_name,
                        kind,
                        flags,
                        address,
                        element_size,
                        link_offset,
                        max_count,
                        aux,
                        lock,
                        hints,
                    }
                },
            )
    }

    fn descriptor() -> impl Strategy<Value = Descriptor> {
        (
            proptest::collection::vec(any::<u8>(), 0..=32),
            any::<i64>(),
            (0u64..(1 << 40)).prop_map(|a| a << 12),
            (0u64..(1 << 49)).prop_map(|a| a << 3),
            proptest::option::of("[A-Z_()a-z.=0-9\n]{1,200}"),
            proptest::collection::vec(root(), 0..8),
        )
            .prop_map(
                |(build_id, load_offset, page_table_root, heartbeat_gpa, vmcoreinfo, mut roots)| {
                    let mut seen = Vec::new();
                    roots.retain(|r| {
                        let fresh = !seen.contains(&r.name);
                        seen.push(r.name.clone());
                        fresh
                    });
                    Descriptor {
                        flags: 0,
                        build_id,
                        load_offset,
                        page_table_root,
                        heartbeat_gpa,
                        vmcoreinfo,
                        roots,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(d in descriptor()) {
            let bytes = d.encode().unwrap();
            prop_assert_eq!(parse(&bytes).unwrap(), d);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn corrupted_valid_descriptors_never_panic(
            d in descriptor(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
            reseal_after in any::<bool>(),
        ) {
            let mut bytes = d.encode().unwrap();
            for (at, v) in flips {
                let at = at % bytes.len();
                bytes[at] = v;
            }
            if reseal_after && declared_size(&bytes).map(|s| s <= bytes.len()).unwrap_or(false) {
                reseal(&mut bytes);
            }
            let _ = parse(&bytes);
        }
    }
}
