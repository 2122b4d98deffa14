#![no_main]
//! See `ambulance_fuzz_targets::elf_core`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::elf_core(data));
