#![no_main]
//! See `ambulance_fuzz_targets::orc_unwind`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::orc_unwind(data));
