//! The guest↔host contract of Ambulance, ABI version 1.
//!
//! This crate is shared, byte for byte, by the guest side (`no_std`, no allocator: the
//! `guest-agent` crate and the test kernel) and the host side (the VMM and the diagnosis
//! engine, with the `alloc` feature). It has three parts:
//!
//! * [`ports`]: the port-I/O doorbells a guest rings. VMCALL does not reach userspace on
//!   the hosts we run on, so every hypercall is a port write that exits to the VMM.
//! * [`boot`]: how the VMM starts a guest kernel directly in 64-bit long mode: where the
//!   boot information lives, which registers carry what, and the boot address map.
//! * [`descriptor`]: the registration descriptor a guest kernel fills in its RAM and
//!   hands to the host at boot: build ID, KASLR offset, page-table root, heartbeat
//!   counter, optional VMCOREINFO text, and the table of *roots* (named structures the
//!   host walks at diagnosis time) with validation hints.
//!
//! Everything multi-byte is little-endian. The descriptor is parsed on the host with
//! [`descriptor::parse`], which bounds every size and count and refuses bad input with a
//! typed [`descriptor::DescriptorError`].

#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod boot;
pub mod crc32c;
pub mod descriptor;
pub mod ports;

/// The ABI version this crate implements.
pub const ABI_VERSION: u16 = 1;

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;

/// Whether `addr` is canonical for 48-bit virtual addresses (4-level paging).
pub const fn is_canonical_48(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// Whether `addr` is canonical for 57-bit virtual addresses (5-level paging).
pub const fn is_canonical_57(addr: u64) -> bool {
    let top = addr >> 56;
    top == 0 || top == (1 << 8) - 1
}
