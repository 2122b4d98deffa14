//! `ambulance attach`, live, on an unmodified Linux guest: Debian's cloud kernel under
//! QEMU (TCG), its RAM in a shared file, panicked by sysrq. The command is started first
//! (as an operator would before a crash), QEMU after it; on GUEST_PANICKED it pauses the
//! guest, takes the registers through QMP, maps the RAM file read-only, diagnoses and
//! prints the report — with the Linux agent's registration (VMCOREINFO at the address the
//! guest gave) and without it (VMCOREINFO found by scanning guest RAM).

mod linux_guest;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linux_guest::{fixture, Boot, Guest, GuestPaths};
use serde_json::Value;

/// What one `ambulance attach` run produced.
struct Attached {
    /// The report it printed (JSON).
    report: Value,
    /// What it said on standard error.
    stderr: String,
    /// The guest's serial console.
    console: String,
    /// Where it wrote the report.
    report_dir: tempfile::TempDir,
    /// The guest RAM file's allocated bytes once attach was done, and its size.
    ram_allocated: u64,
    ram_size: u64,
}

impl Attached {
    /// The report file for the printed report's id.
    fn report_file(&self, ext: &str) -> PathBuf {
        let id = self.report["id"].as_str().expect("a report id");
        self.report_dir.path().join(format!("{id}.{ext}"))
    }
}

/// Starts `ambulance attach --json --report-dir DIR` on a guest that is not up yet, boots
/// the guest (with the Linux agent when `register`), and returns what attach printed
/// once the guest panicked.
fn attach_to_a_panicking_guest(register: bool) -> Attached {
    let fixture = fixture(false);
    let paths = GuestPaths::new();
    let report_dir = tempfile::tempdir().unwrap();
    let registration = paths.dir.path().join("reg.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambulance"));
    cmd.arg("attach")
        .arg("--qmp")
        .arg(&paths.qmp)
        .arg("--memory")
        .arg(&paths.ram)
        .arg("--json")
        .arg("--report-dir")
        .arg(report_dir.path())
        .arg("--core")
        .args(["--connect-timeout", "60", "--name", "debian"]);
    if register {
        cmd.arg("--registration").arg(&registration);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ambulance attach starts");
    if register {
        // QEMU connects the agent's port to the socket attach listens on (it would
        // retry every second, but then the agent's first attempt could go unheard).
        let deadline = Instant::now() + Duration::from_secs(20);
        while !registration.exists() {
            assert!(
                Instant::now() < deadline,
                "attach did not listen on {}",
                registration.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let guest = Guest::boot_at(
        paths,
        &fixture,
        &Boot {
            panic_after: Some(1),
            registration: register.then(|| registration.clone()),
            ..Boot::default()
        },
    );
    let (stdout, stderr) = wait_with_output(&mut child, Duration::from_secs(240), &guest);
    let console = guest.console_text();
    let status = child.wait().unwrap();
    let ram_allocated = linux_guest::allocated(&guest.paths.ram);
    let ram_size = std::fs::metadata(&guest.paths.ram).unwrap().len();
    assert!(
        status.success(),
        "ambulance attach failed ({status}):\n{stderr}\nconsole:\n{console}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not a JSON report ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    Attached {
        report,
        stderr,
        console,
        report_dir,
        ram_allocated,
        ram_size,
    }
}

/// Reads the child's output until it exits, at most `timeout` (then kills it and fails
/// with what it and the guest said).
fn wait_with_output(
    child: &mut std::process::Child,
    timeout: Duration,
    guest: &Guest,
) -> (String, String) {
    fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    }
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ambulance attach did not finish within {timeout:?}; stderr:\n{}\nconsole:\n{}",
                err.join().unwrap(),
                guest.console_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (out.join().unwrap(), err.join().unwrap())
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
