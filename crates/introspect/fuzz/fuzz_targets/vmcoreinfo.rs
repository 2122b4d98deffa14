//! VMCOREINFO text comes from the guest: any bytes must parse or be refused, never panic.
#![no_main]

use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = Vmcoreinfo::parse(&text) {
        let _ = v.symbol("init_task");
        let _ = v.symbol("swapper_pg_dir");
        let types = v.types();
        for name in ["task_struct", "list_head", "Task"] {
            if let Ok(id) = types.find(name) {
                let _ = types.get(id);
            }
        }
    }
});
