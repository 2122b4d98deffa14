//! The wire format: sizes and limits, header flags, field offsets ([`layout`]), root
//! kinds and flags, hints, the borrowed root a guest declares, and the byte-level
//! helpers and checksum both the writer and the parser use.

use crate::crc32c::Crc32c;

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
pub(super) const KNOWN_FLAGS: u32 = FLAG_LA57;

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

pub(super) const HINT_MAGIC: u16 = 1;
pub(super) const HINT_CHECKSUM: u16 = 2;
pub(super) const HINT_POINTER_RANGE: u16 = 3;

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

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
pub(super) fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// The CRC32C of the first `total_size` bytes of `bytes`, with the checksum field taken
/// as zero.
pub(super) fn checksum_of(bytes: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(&bytes[..layout::CHECKSUM]);
    c.update(&[0; 4]);
    c.update(&bytes[layout::CHECKSUM + 4..]);
    c.finish()
}
