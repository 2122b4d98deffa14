#![no_main]
//! See `ambulance_fuzz_targets::worker_protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambulance_fuzz_targets::worker_protocol(data));
