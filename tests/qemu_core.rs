//! A real Linux guest's ELF core, as QEMU's `dump-guest-memory` writes it: the core reader
//! finds the per-CPU NT_PRSTATUS notes and the VMCOREINFO note, and with nothing but
//! VMCOREINFO (no debug info) translation through `swapper_pg_dir` — KASLR and
//! `phys_base` applied — reads the kernel's own release string out of `init_uts_ns`.
//!
//! The guest is Debian's cloud kernel with a busybox initramfs (fixtures/linux/build.sh,
//! cached outside the repository), booted under QEMU with TCG, which panics it with
//! sysrq; QEMU reports GUEST_PANICKED through pvpanic and dumps it over QMP.

mod linux_guest;

use std::process::Command;
use std::sync::Arc;

use ambulance_introspect::memory::{ElfCore, PhysicalMemory};
use ambulance_introspect::program::Program;
use ambulance_introspect::translate::Paging;
use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
use linux_guest::{fixture, panicked_dump};
use serde_json::Value;

#[test]
fn qemu_dump_of_a_panicked_linux_guest_reads_back() {
    let dir = fixture(false);
    let dump = panicked_dump(&dir, 256);
    let core_path = dump.core.clone();
    let console = &dump.console;
    assert!(
        console.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{console}"
    );

    let core = ElfCore::open(&core_path).expect("QEMU's core parses");
    assert_eq!(core.prstatus().len(), 2, "one NT_PRSTATUS per vCPU");
    assert!(core.ranges().iter().map(|r| r.size).sum::<u64>() >= 255 << 20);
    let text = core
        .vmcoreinfo()
        .expect("the VMCOREINFO note (qemu_fw_cfg + -device vmcoreinfo)");
    let info = Vmcoreinfo::parse(text).unwrap();
    let release = info.osrelease().expect("OSRELEASE").to_string();
    let version = std::fs::read_to_string(dir.join("VERSION")).unwrap();
    assert!(version.contains(&release), "{release} vs {version}");

    // Translation with VMCOREINFO alone: swapper_pg_dir's physical address is its
    // kernel-image address minus __START_KERNEL_map plus phys_base.
    let pgd = info
        .symbol("swapper_pg_dir")
        .expect("SYMBOL(swapper_pg_dir)");
    let phys_base = info.number("phys_base").expect("NUMBER(phys_base)");
    let root = (pgd - 0xffff_ffff_8000_0000).wrapping_add(phys_base as u64);
    let paging = if info.number("pgtable_l5_enabled") == Some(1) {
        Paging::Five
    } else {
        Paging::Four
    };
    let program = Program::new(Arc::new(core), root, paging);
    let uts = info.symbol("init_uts_ns").expect("SYMBOL(init_uts_ns)")
        + info
            .offset("uts_namespace", "name")
            .expect("OFFSET(uts_namespace.name)");
    // struct new_utsname { char sysname[65], nodename[65], release[65], ... }
    let mut buf = [0u8; 65];
    program.read_virt(uts, &mut buf).unwrap();
    assert!(
        buf.starts_with(b"Linux\0"),
        "sysname: {:?}",
        String::from_utf8_lossy(&buf)
    );
    program.read_virt(uts + 130, &mut buf).unwrap();
    let n = buf.iter().position(|&b| b == 0).unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), release);

    // Our diagnose command reads the same file: with no registration, it finds the page
    // tables through VMCOREINFO, and reports the failure the kernel's own log and
    // memory show (not merely an offline diagnosis) with every vCPU's control registers
    // from QEMU's per-CPU note.
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .args(["diagnose", "--core"])
        .arg(&core_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"]["cause"], "panic");
    assert_eq!(report["failure"]["detail"], "sysrq triggered crash");
    assert_eq!(report["vcpus"].as_array().unwrap().len(), 2);
    for v in report["vcpus"].as_array().unwrap() {
        let cr3 = u64::from_str_radix(&v["cr3"].as_str().unwrap()[2..], 16).unwrap();
        assert_ne!(cr3, 0, "{v}");
        assert_eq!(v["segments"].as_array().map(Vec::len), Some(10), "{v}");
    }
    assert!(report["registration"].is_null());
    let _ = program.memory().describe();
}
