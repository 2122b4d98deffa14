#![no_main]
//! See `ambulance_fuzz_targets::dwarf`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::dwarf(data));
