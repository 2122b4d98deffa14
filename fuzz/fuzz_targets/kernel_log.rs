#![no_main]
//! See `ambulance_fuzz_targets::kernel_log`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::kernel_log(data));
