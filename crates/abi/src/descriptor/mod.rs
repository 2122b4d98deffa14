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

mod error;
#[cfg(feature = "alloc")]
mod model;
mod parser;
#[cfg(all(test, feature = "alloc"))]
mod test_support;
mod wire;
mod writer;

pub use error::{DescriptorError, WriteError};
#[cfg(feature = "alloc")]
pub use model::{Descriptor, Root};
#[cfg(feature = "alloc")]
pub use parser::parse;
pub use parser::{check_registration_gpa, declared_size};
pub use wire::{
    layout, root_flags, Hint, RootKind, RootSpec, FLAG_LA57, HEADER_SIZE, HINT_ENTRY_SIZE,
    HINT_NULLABLE, MAGIC, MAX_BUILD_ID, MAX_CHECKSUM_LEN, MAX_COUNT, MAX_DESCRIPTOR_SIZE,
    MAX_ELEMENT_SIZE, MAX_HINTS, MAX_HINTS_PER_ROOT, MAX_PHYS_ADDR, MAX_ROOTS, MAX_VMCOREINFO,
    NAME_LEN, ROOT_ENTRY_SIZE,
};
pub use writer::{reseal, DescriptorWriter};
