//! `ambulance attach`, live, on an unmodified Linux guest: Debian's cloud kernel under
//! QEMU (TCG), its RAM in a shared file, panicked by sysrq. The command is started first
//! (as an operator would before a crash), QEMU after it; on GUEST_PANICKED it pauses the
//! guest, takes the registers through QMP, maps the RAM file read-only, diagnoses and
//! prints the report — with the Linux agent's registration (VMCOREINFO at the address the
//! guest gave) and without it (VMCOREINFO found by scanning guest RAM).

mod linux_guest;

use std::process::Command;

use linux_guest::{fixture, Attached, Boot};
use serde_json::Value;

/// Attaches to a guest that panics a second after boot (with the Linux agent when
/// `register`).
fn attach_to_a_panicking_guest(register: bool) -> Attached {
    linux_guest::attach(&fixture(false), Boot::default(), register)
}

/// What every attach report says about this guest and run.
fn check_common(a: &Attached) {
    let r = &a.report;
    assert_eq!(r["failure"]["cause"], "panic", "{}", a.stderr);
    assert_eq!(r["failure"]["data"]["action"], "pause");
    assert_eq!(r["guest"]["name"], "debian");
    assert_eq!(r["guest"]["vcpus"], 2);
    assert_eq!(r["guest"]["memory_bytes"], 256u64 << 20);
    linux_guest::check_vcpus(r, true);
    // Live too, the kernel's own account and the panicking CPU's stack, from the
    // registers QMP gave: through panic() and the sysrq handler to the system call.
    let crash = &r["kernel"]["crash"];
    assert_eq!(crash["kind"], "panic", "{crash}");
    assert_eq!(crash["cpu"], r["kernel"]["panic_cpu"]);
    let cpu = r["kernel"]["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cpu"] == crash["cpu"])
        .expect("the panicking CPU");
    let stack = &cpu["stack"];
    assert_eq!(stack["complete"], true, "{stack}");
    let symbols: Vec<&str> = stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or("?"))
        .collect();
    let at = |name: &str| symbols.iter().position(|s| s.starts_with(name));
    assert!(
        at("panic+") < at("sysrq_handle_crash+") && at("panic+").is_some(),
        "{symbols:?}"
    );
    assert!(
        symbols
            .last()
            .is_some_and(|s| s.starts_with("entry_SYSCALL_64")),
        "{symbols:?}"
    );
    let phases: Vec<&str> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(phases.starts_with(&["freeze", "map"]), "{phases:?}");
    // The report file is the printed report, and its text rendering is beside it.
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(a.report_file("json")).unwrap()).unwrap();
    assert_eq!(file, a.report);
    assert!(a.report_file("txt").exists());
    assert!(a.stderr.contains("waiting for it to panic"), "{}", a.stderr);
    assert!(
        a.console
            .contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{}",
        a.console
    );
    // The kernel section says what the guest printed: panic line, dmesg, processes.
    linux_guest::check_against_console(r, &a.console);
}

#[test]
fn attach_with_the_linux_agents_registration() {
    let a = attach_to_a_panicking_guest(true);
    check_common(&a);
    // The agent registered (it says so on the console, attach on stderr), and the
    // diagnosis took VMCOREINFO from where the registration pointed.
    assert!(
        a.console
            .contains("ambulance-register: registered with Ambulance over /dev/ttyS1"),
        "{}",
        a.console
    );
    assert!(
        a.stderr
            .contains("ambulance: guest registered: VMCOREINFO note at guest-physical 0x"),
        "{}",
        a.stderr
    );
    assert_eq!(
        a.report["kernel"]["sources"]["vmcoreinfo"], "registration",
        "{}",
        a.stderr
    );
}

#[test]
fn attach_without_registration_scans_guest_ram() {
    let a = attach_to_a_panicking_guest(false);
    check_common(&a);
    assert!(!a.console.contains("ambulance-register"));
    assert_eq!(
        a.report["kernel"]["sources"]["vmcoreinfo"], "memory-scan",
        "{}",
        a.stderr
    );
    check_core(&a);
}

/// The core attach wrote carries what kernel-core readers need — the VMCOREINFO the
/// diagnosis found, registers per vCPU — and writing it read none of the RAM file's holes:
/// on tmpfs every hole read would have been allocated, up to the guest's whole RAM.
fn check_core(a: &Attached) {
    let core = ambulance_introspect::memory::ElfCore::open(a.report_file("core"))
        .expect("attach --core writes a core that parses");
    let text = core.vmcoreinfo().expect("the core carries VMCOREINFO");
    let info = ambulance_introspect::vmcoreinfo::Vmcoreinfo::parse(text).unwrap();
    assert_eq!(
        info.osrelease(),
        a.report["kernel"]["release"].as_str(),
        "{text}"
    );
    assert!(info.symbol("swapper_pg_dir").is_some(), "{text}");
    assert_eq!(
        core.prstatus().len(),
        a.report["vcpus"].as_array().unwrap().len()
    );
    // The guest touched well under 90% of its RAM in the seconds it ran.
    eprintln!(
        "RAM file: {} of {} bytes allocated after the core",
        a.ram_allocated, a.ram_size
    );
    assert!(
        a.ram_allocated < a.ram_size / 10 * 9,
        "the RAM file is {} of {} bytes allocated after the core: holes were read",
        a.ram_allocated,
        a.ram_size
    );
}

#[test]
fn attach_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .arg("attach")
        .arg("--qmp")
        .arg(dir.path().join("nope.sock"))
        .args(["--connect-timeout", "0.2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot connect to QEMU's QMP socket") && e.contains("nope.sock"),
        "{e}"
    );
}
