//! Failures of unmodified Linux guests under QEMU beyond pvpanic's GUEST_PANICKED, each
//! caught by `ambulance attach` (started before the guest, as an operator would) and
//! diagnosed like a panic — the guest paused, its registers taken, its RAM read — from
//! the QMP event QEMU sends:
//!
//! * a hang seen by the virtual watchdog (an i6300esb fed by the guest's watchdog daemon,
//!   which dies without its magic close): `WATCHDOG`;
//! * a triple fault (`reboot=t`, then sysrq's emergency restart), with QEMU told to turn
//!   resets into a paused shutdown: `SHUTDOWN` with the guest's reason `guest-reset`;
//! * the guest powering itself off (sysrq o): `SHUTDOWN`, reason `guest-shutdown`;
//! * a panic with a crash kernel loaded (kdump: `kexec_file_load` on crash, pvpanic
//!   reporting "crash loaded"): `GUEST_CRASHLOADED`.
//!
//! The fixture's init does the failing (`ambulance.fail=KIND`, see
//! fixtures/linux/build.sh).

mod linux_guest;

use linux_guest::{attach, fixture, Attached, Boot};
use serde_json::Value;

/// Boots `boot` on `fixture`, failing as `fail` says a second after init's process
/// list, under `ambulance attach`.
fn fail(fixture: &std::path::Path, fail: &str, boot: Boot) -> Attached {
    let cmdline = format!(
        "ambulance.fail={fail} ambulance.fail_after=1 {}",
        boot.cmdline
    );
    attach(
        fixture,
        Boot {
            panic_after: None,
            cmdline,
            ..boot
        },
        false,
    )
}

/// What every one of these reports says: the failure QEMU reported (`cause`, and the
/// event's `data` as the report keeps it), a diagnosis of the guest's kernel like a
/// panic's — release, VMCOREINFO from guest memory, every process init listed, dmesg up
/// to the failure — and the guest's last words on its console.
fn check(a: &Attached, cause: &str, data: Value) {
    let r = &a.report;
    assert_eq!(
        r["failure"]["cause"], cause,
        "{}\n{}",
        r["failure"], a.stderr
    );
    for (key, want) in data.as_object().unwrap() {
        assert_eq!(r["failure"]["data"][key], *want, "{}", r["failure"]);
    }
    let k = &r["kernel"];
    assert!(
        k["release"].as_str().is_some_and(|s| s.starts_with("6.")),
        "{k}"
    );
    assert_eq!(k["sources"]["vmcoreinfo"], "memory-scan", "{}", a.stderr);
    // The watchdog daemon may be gone by then.
    linux_guest::check_listed_processes(r, &a.console, &["watchdog"]);
    let log: Vec<&str> = k["dmesg"]
        .as_array()
        .expect("the kernel's log")
        .iter()
        .map(|l| l["text"].as_str().unwrap_or_default())
        .collect();
    assert!(
        log.iter().any(|l| l.starts_with("Linux version 6.")),
        "{log:?}"
    );
    assert!(a.console.contains("AMBULANCE-FAIL-NOW "), "{}", a.console);
    // Where the vCPUs stopped depends on the failure (user space for a watchdog, the
    // crash kernel's start for kdump): every one is in long mode with paging.
    linux_guest::check_vcpus(r, false);
}

/// A guest whose watchdog daemon dies: the i6300esb expires, QEMU pauses the guest and
/// says WATCHDOG. Debian's generic kernel (the cloud kernel has no i6300esb driver).
#[test]
fn a_hung_guest_is_caught_by_its_virtual_watchdog() {
    let Some(fx) = ambulance_testkit::other_linux_fixture("6.1", "amd64", false) else {
        return;
    };
    let a = fail(
        &fx,
        "watchdog",
        Boot {
            cmdline: "ambulance.watchdog".into(),
            qemu_args: ["-device", "i6300esb", "-action", "watchdog=pause"]
                .map(String::from)
                .to_vec(),
            ..Boot::default()
        },
    );
    assert!(
        a.console.contains("init: watchdog daemon "),
        "{}",
        a.console
    );
    check(&a, "watchdog_stall", serde_json::json!({"action": "pause"}));
    // Nothing panicked: the kernel's account has no crash in it.
    assert!(
        a.report["kernel"]["crash"].is_null(),
        "{}",
        a.report["kernel"]["crash"]
    );
}

/// A triple fault: `reboot=t` makes the kernel's emergency restart load an empty IDT and
/// trap; QEMU (told `-action reboot=shutdown,shutdown=pause`) pauses the guest instead of
/// resetting it and says SHUTDOWN, reason guest-reset.
#[test]
fn a_triple_fault_is_caught_before_the_reset() {
    let a = fail(
        &fixture(false),
        "reset",
        Boot {
            cmdline: "reboot=t".into(),
            no_reboot: false,
            qemu_args: ["-action", "reboot=shutdown,shutdown=pause"]
                .map(String::from)
                .to_vec(),
            ..Boot::default()
        },
    );
    check(
        &a,
        "reset",
        serde_json::json!({"guest": true, "reason": "guest-reset"}),
    );
    let log = a.report["kernel"]["dmesg"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|l| l["text"].as_str().is_some_and(|t| t.contains("Resetting"))),
        "sysrq's own words on the reset: {log:?}"
    );
}

/// The guest powers itself off (sysrq o): SHUTDOWN, reason guest-shutdown, QEMU told to
/// pause rather than exit.
#[test]
fn a_guest_powering_itself_off_is_caught() {
    let a = fail(
        &fixture(false),
        "poweroff",
        Boot {
            no_reboot: false,
            qemu_args: ["-action", "shutdown=pause"].map(String::from).to_vec(),
            ..Boot::default()
        },
    );
    check(
        &a,
        "shutdown",
        serde_json::json!({"guest": true, "reason": "guest-shutdown"}),
    );
}

/// kdump: init loads a crash kernel (the fixture's own, in `initramfs-kdump.img`); the
/// sysrq panic runs the panic notifiers first (`crash_kexec_post_notifiers`), so pvpanic
/// reports "crash loaded" and QEMU says GUEST_CRASHLOADED as the guest jumps into the
/// crash kernel. The diagnosis still reads the crashed kernel: the panic, its CPU and
/// task, from its log.
#[test]
fn a_panic_into_a_crash_kernel_is_caught() {
    let fx = fixture(false);
    let a = fail(
        &fx,
        "kdump",
        Boot {
            memory_mib: 512,
            cmdline: "crashkernel=128M crash_kexec_post_notifiers".into(),
            initrd: "initramfs-kdump.img",
            ..Boot::default()
        },
    );
    assert!(
        a.console.contains("init: crash kernel loaded"),
        "{}",
        a.console
    );
    check(&a, "panic", serde_json::json!({}));
    assert!(
        a.report["failure"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("GUEST_CRASHLOADED")),
        "{}",
        a.report["failure"]
    );
    let crash = &a.report["kernel"]["crash"];
    assert_eq!(crash["kind"], "panic", "{crash}");
    assert_eq!(a.report["kernel"]["panic_message"], "sysrq triggered crash");
}

/// The tests' guard against QEMU's TCG stalling a kernel's boot on this loaded machine
/// (`Guest::stalled_at_boot`, on which the helpers boot a guest again): a guest held
/// before its first instruction (`-S`) counts as stalled once its console has been silent
/// for the boot's limit, and waiting for its panic returns then rather than at its
/// timeout; let run, the same guest reaches init and does not count as stalled.
#[test]
fn a_kernel_boot_that_stalls_is_told_apart() {
    use linux_guest::{connect, runtime, wait_for_panic, Guest, INIT_STARTED};
    use std::time::{Duration, Instant};

    let guest = Guest::boot(
        &fixture(false),
        &Boot {
            panic_after: None,
            boot_stall: Duration::from_secs(2),
            qemu_args: vec!["-S".into()],
            ..Boot::default()
        },
    );
    runtime().block_on(async {
        let (qmp, mut events) = connect(&guest.qmp).await;
        let waited = Instant::now();
        let panicked = wait_for_panic(&qmp, &mut events, &guest, Duration::from_secs(120)).await;
        assert!(!panicked, "a guest that never ran cannot have panicked");
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the stall was seen after {:?}, not within a few seconds",
            waited.elapsed()
        );
        assert!(guest.stalled_at_boot());
        qmp.cont().await.unwrap();
    });
    guest.wait_for_console(
        INIT_STARTED,
        "the guest did not reach init once let run",
        Duration::from_secs(120),
    );
    assert!(
        !guest.stalled_at_boot(),
        "a kernel that started init has not stalled"
    );
}
