#![no_main]
//! See `ambulance_fuzz_targets::vmcoreinfo`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::vmcoreinfo(data));
