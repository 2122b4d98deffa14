//! ELF cores of a test-kernel guest: gdb opens them with the kernel's ELF and prints a
//! global, and our own core reader reads the guest's RAM back identically.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ambulance_introspect::memory::{ElfCore, LiveMemory, PhysicalMemory};
use ambulance_introspect::program::Program;
use ambulance_introspect::symbols::Symbols;
use ambulance_introspect::translate::Paging;
use common::{poll_registered, test_guest, vmm};

fn ensure(spec: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ensure-packages.sh");
    let ok = Command::new("bash")
        .arg(script)
        .arg(spec)
        .status()
        .map(|s| s.success());
    assert!(
        matches!(ok, Ok(true)),
        "could not install {spec} with {script}"
    );
}

#[test]
fn gdb_reads_a_global_and_our_reader_reads_the_ram_back() {
    let Some(vmm) = vmm() else { return };
    ensure("gdb=gdb");
    let guest = vmm.start(test_guest("core", "fault=none")).unwrap();
    poll_registered(&guest, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let options = ambulance_cli::diagnose_options(Some("test"), None, None, None).unwrap();
    let w = common::freeze_and_diagnose(&guest, "core test", &options, dir.path(), true);
    let core_path = w.core.expect("core written");

    // Our reader: every byte of RAM reads back as the live mapping has it.
    let export = guest.memory_export().unwrap();
    let live = LiveMemory::map(&export).unwrap();
    let core = ElfCore::open(&core_path).unwrap();
    for r in live.ranges() {
        let mut a = vec![0u8; r.size as usize];
        let mut b = vec![0u8; r.size as usize];
        live.read(r.start, &mut a).unwrap();
        core.read(r.start, &mut b).unwrap();
        assert!(
            a == b,
            "RAM {:#x}+{:#x} differs between the guest and its core",
            r.start,
            r.size
        );
    }
    let file = std::fs::metadata(&core_path).unwrap().len();
    assert!(
        file < live.ranges().iter().map(|r| r.size).sum::<u64>() / 4,
        "zero pages were stored: {file} bytes"
    );

    // The heartbeat, read through the guest's page tables from the core.
    let symbols = Symbols::from_elf(ambulance_test_kernel::ELF, "test-kernel", 0).unwrap();
    let heartbeat = symbols.get("HEARTBEAT").expect("HEARTBEAT symbol");
    let root = guest.registration().unwrap().descriptor.page_table_root;
    let program = Program::new(Arc::new(core), root, Paging::Four);
    let value = program.read_u64(heartbeat).unwrap();
    assert!(value > 0);

    // gdb, with the kernel's ELF and the core. gdb takes its language from the frame a
    // vCPU stopped in, which is C when that is assembly (`switch_context`): say Rust.
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set language rust", "-ex"])
        .arg(format!("x/1gx {heartbeat:#x}"))
        .args(["-ex", "print test_kernel::HEARTBEAT"])
        .args(["-ex", "print test_kernel::sched::TASKS[0].pid"])
        .arg(ambulance_test_kernel::ELF_PATH)
        .arg(&core_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{value:#018x}")),
        "gdb printed:\n{text}\n{}\nexpected {value:#018x}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("value: {value}}}")),
        "print test_kernel::HEARTBEAT:\n{text}"
    );
    assert!(text.contains("$2 = 1\n"), "TASKS[0].pid is pid 1:\n{text}");
    guest.destroy();
}
