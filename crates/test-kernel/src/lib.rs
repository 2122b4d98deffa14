//! The Ambulance test kernel, as built by this crate's build script from
//! `guest-agent/test-kernel` (a freestanding x86-64 ELF with DWARF debug info).
//!
//! Tests, the demo and benches boot it with `ambulance-vmm`; the diagnosis engine reads
//! its symbols and types from the same file.

#![forbid(unsafe_code)]

/// The kernel's ELF image.
pub static ELF: &[u8] = include_bytes!(env!("AMBULANCE_TEST_KERNEL_ELF"));

/// Path of the kernel's ELF file on the machine that built it (for tools that want a
/// file, such as gdb).
pub const ELF_PATH: &str = env!("AMBULANCE_TEST_KERNEL_ELF");

/// The fault catalogue: every `fault=` name the kernel understands.
pub const FAULTS: [&str; 13] = [
    "none",
    "panic",
    "list-corruption",
    "list-cycle",
    "stack-overflow",
    "magic-smash",
    "text-corruption",
    "freelist-cycle",
    "wild-pointer",
    "deadlock",
    "hang",
    "slow",
    "triple-fault",
];

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_is_an_x86_64_elf_with_debug_info() {
        let elf = super::ELF;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 62, "EM_X86_64");
        let has = |needle: &[u8]| elf.windows(needle.len()).any(|w| w == needle);
        assert!(has(b".debug_info"), "DWARF must be kept");
        assert!(
            has(b"AMBULANCE-FAULT"),
            "the fault catalogue is compiled in"
        );
    }
}
