//! The ELF64 header and program-header layout a core uses (little-endian x86-64).

/// Size of the ELF64 file header.
pub const EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PHDR_SIZE: usize = 56;
/// Size of an ELF64 section header.
pub const SHDR_SIZE: usize = 64;
/// `e_type` of a core file.
pub const ET_CORE: u16 = 4;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// A loadable segment (guest memory).
pub const PT_LOAD: u32 = 1;
/// A note segment.
pub const PT_NOTE: u32 = 4;
/// `e_phnum` saying the real count is in section header 0's `sh_info`.
pub const PN_XNUM: u16 = 0xffff;

/// The little-endian `u16` at `at`, if the bytes are there.
pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// The little-endian `u32` at `at`, if the bytes are there.
pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The little-endian `u64` at `at`, if the bytes are there.
pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}
