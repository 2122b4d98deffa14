#![no_main]
//! See `ambulance_fuzz_targets::page_walk`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::page_walk(data));
