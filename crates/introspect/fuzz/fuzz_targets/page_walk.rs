//! Page tables and linked lists are guest-written: translation and list walks over
//! arbitrary memory must end, quickly, without panicking.
//!
//! Input: 8 bytes of CR3, 1 byte of mode, 8 bytes of list head, then RAM (from
//! guest-physical 0), whose first words double as virtual addresses to translate.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use ambulance_introspect::memory::RawImage;
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::walk::{check_prev, walk_array, walk_list, WalkLimits};
use libfuzzer_sys::fuzz_target;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let cr3 = u64_at(data, 0);
    let mode = data[8];
    let head = u64_at(data, 9);
    let ram = data[17..].to_vec();
    let vas: Vec<u64> = (0..ram.len().min(256) / 8)
        .map(|i| u64_at(&ram, i * 8))
        .collect();
    let paging = if mode & 1 == 0 {
        Paging::Four
    } else {
        Paging::Five
    };
    let prog = Program::new(Arc::new(RawImage::from_bytes(ram, 0)), cr3, paging);
    for &va in &vas {
        let _ = prog.translator().translate_uncached(&**prog.memory(), va);
        let _ = prog.translation(va);
        let _ = prog.read_u64(va);
        let _ = prog.is_mapped(va);
    }
    let limits = WalkLimits::new(4096, Duration::from_millis(100));
    let w = walk_list(&prog, head, mode & 2 != 0, limits);
    let _ = check_prev(&prog, head, &w);
    let _ = walk_array(&prog, head, 64, 64, mode & 4 != 0, limits);
});
