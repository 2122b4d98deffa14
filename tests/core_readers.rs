//! Our ELF core of a live Linux guest is a kernel core the ecosystem's readers open: drgn
//! reads the same tasks and the same kernel log from it as from QEMU's own
//! `dump-guest-memory` of the same panicked guest, and `crash` with the `-dbg` vmlinux
//! runs `ps`, `log` and `bt` on it.
//!
//! Debian's cloud kernel under QEMU (TCG), panicked by sysrq; `ambulance attach --now
//! --core` writes our core, then QMP's `dump-guest-memory` writes QEMU's. drgn comes from
//! `fixtures/ensure-drgn.sh`, crash from Debian (`fixtures/ensure-packages.sh`).

mod linux_guest;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use linux_guest::{boot_until_panicked, connect, fixture, runtime, Boot};
use serde_json::json;

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What drgn reads from `core` with `vmlinux`: tasks, log records and the crashed
/// thread's frames, one `kind text` line each (see tests/tools/drgn_facts.py).
fn drgn_facts(python: &Path, core: &Path, vmlinux: &Path) -> Vec<String> {
    String::from_utf8_lossy(&linux_guest::drgn_tool(
        python,
        "drgn_facts.py",
        core,
        vmlinux,
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

fn of_kind<'a>(facts: &'a [String], kind: &str) -> Vec<&'a str> {
    facts
        .iter()
        .filter_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))
        .collect()
}

/// `crash`'s output for `commands` on `core` with `vmlinux`.
fn crash(core: &Path, vmlinux: &Path, commands: &str, dir: &Path) -> String {
    let input = dir.join("crash-commands");
    std::fs::write(&input, format!("{commands}\nquit\n")).unwrap();
    let out = Command::new("crash")
        .args(["-s", "--no_scroll", "-i"])
        .arg(&input)
        .arg(vmlinux)
        .arg(core)
        .output()
        .expect("crash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "crash failed on {} ({}):\n{text}",
        core.display(),
        out.status
    );
    text
}

#[test]
fn drgn_and_crash_read_our_core_as_they_read_qemus() {
    let fixture = fixture(true);
    let vmlinux = fixture.join("vmlinux");
    let ensure = Command::new("bash")
        .arg(root().join("fixtures/ensure-packages.sh"))
        .arg("crash=crash")
        .status()
        .expect("bash runs");
    if !ambulance_testkit::available("crash (Debian's package)", ensure.success()) {
        return;
    }
    let Some(python) = linux_guest::drgn_python() else {
        return;
    };

    let guest = boot_until_panicked(
        &fixture,
        &Boot {
            panic_after: Some(1),
            ..Boot::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let qemu_core = dir.path().join("qemu.vmcore");
    let rt = runtime();
    // Our core: attach to the panicked guest now (QMP takes one client at a time, and
    // the one above is gone).
    let reports = dir.path().join("reports");
    let out = Command::new(env!("CARGO_BIN_EXE_ambulance"))
        .arg("attach")
        .arg("--qmp")
        .arg(&guest.qmp)
        .arg("--memory")
        .arg(&guest.paths.ram)
        .arg("--report-dir")
        .arg(&reports)
        .args(["--core", "--now", "--json", "--name", "debian"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "attach failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "core"))
        .expect("attach --core wrote a core");
    rt.block_on(async {
        let (qmp, _events) = connect(&guest.qmp).await;
        qmp.execute_with_timeout(
            "dump-guest-memory",
            json!({"paging": false, "protocol": format!("file:{}", qemu_core.display())}),
            Duration::from_secs(300),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    });
    guest.quit();

    // drgn: the same tasks and log from both cores.
    let theirs = drgn_facts(&python, &qemu_core, &vmlinux);
    let mine = drgn_facts(&python, &ours, &vmlinux);
    let tasks = of_kind(&theirs, "task");
    assert!(tasks.len() > 10, "{theirs:?}");
    assert_eq!(of_kind(&mine, "task"), tasks);
    let log = of_kind(&theirs, "log");
    assert!(
        log.iter().any(|l| l.contains("sysrq triggered crash")),
        "{log:?}"
    );
    assert_eq!(of_kind(&mine, "log"), log);
    // The crashed thread's trace (drgn takes it from the core's registers).
    let frames = of_kind(&mine, "frame");
    assert!(
        frames.iter().any(|f| f.contains("sysrq")),
        "drgn's trace of the crashed thread in our core: {mine:?}"
    );

    // crash: ps, log and bt work on QEMU's core (the control) and on ours.
    crash(&qemu_core, &vmlinux, "ps\nlog\nbt", dir.path());
    let text = crash(&ours, &vmlinux, "ps\nlog\nbt", dir.path());
    assert!(text.contains("PID") && text.contains("COMM"), "{text}");
    assert!(text.contains("sysrq triggered crash"), "{text}");
    assert!(
        text.contains("#0") && text.contains("sysrq"),
        "bt shows the panicking task's frames:\n{text}"
    );
}
