//! ELF core files are hostile input: any bytes must parse or be refused, never panic,
//! and whatever parses must be safe to read anywhere.
#![no_main]

use ambulance_introspect::memory::{ElfCore, PhysicalMemory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(core) = ElfCore::parse(data) else {
        return;
    };
    let _ = core.prstatus().len();
    let _ = core.vmcoreinfo().map(str::len);
    for note in core.notes() {
        let _ = (note.name.len(), note.n_type, note.desc.len());
    }
    let mut buf = [0u8; 64];
    for r in core.ranges() {
        let _ = core.read(r.start, &mut buf);
        let _ = core.read(r.end().saturating_sub(8), &mut buf);
        let _ = core.slice(r.start, 16);
        let _ = core.slice(r.end().saturating_sub(1), 2);
    }
    let _ = core.read(u64::MAX - 4, &mut buf);
});
