//! Helpers for the end-to-end tests: a VMM (or a loud skip without KVM), test-kernel
//! guests, and waiting for events with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ambulance_capture::vmm;
use ambulance_report::{Report, ReportDir};

use ambulance_vmm::{EventKind, FailureCause, Guest, GuestConfig, Vmm, VmmEvent};
use crossbeam_channel::Receiver;

/// A VMM, or `None` after printing a loud skip line when this machine has no KVM.
pub fn vmm() -> Option<Vmm> {
    if !ambulance_testkit::kvm() {
        return None;
    }
    Some(Vmm::new().expect("/dev/kvm exists but the VMM cannot use it"))
}

/// A test-kernel guest: 2 vCPUs, 64 MiB, 1 s watchdog, degraded below 500 beats/s.
pub fn test_guest(name: &str, cmdline: &str) -> GuestConfig {
    let mut cfg = GuestConfig::new(name, ambulance_test_kernel::ELF);
    cfg.vcpus = 2;
    cfg.memory_bytes = 64 << 20;
    cfg.cmdline = cmdline.to_string();
    cfg.watchdog = Some(Duration::from_millis(1000));
    cfg.degraded_below_hz = Some(500.0);
    cfg
}

/// Everything one guest said until a predicate matched.
pub struct Seen {
    /// The guest's events, in order, up to and including the matching one.
    pub events: Vec<VmmEvent>,
}

impl Seen {
    /// The guest's console lines.
    pub fn console(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Console { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The failure cause, if the guest failed.
    pub fn failure(&self) -> Option<&FailureCause> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::Failure { cause, .. } => Some(cause),
            _ => None,
        })
    }

    /// The guest's `AMBULANCE-FAULT` ground-truth line.
    pub fn ground_truth(&self) -> Option<&str> {
        self.console()
            .into_iter()
            .find(|l| l.starts_with("AMBULANCE-FAULT "))
    }
}

/// Collects `guest`'s events until `done` returns true for one of them, or panics with
/// everything seen when `timeout` passes. Events of other guests are ignored.
pub fn wait_for(
    events: &Receiver<VmmEvent>,
    guest: &Guest,
    timeout: Duration,
    mut done: impl FnMut(&VmmEvent) -> bool,
) -> Seen {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if e.guest == guest.id() => {
                let stop = done(&e);
                seen.push(e);
                if stop {
                    return Seen { events: seen };
                }
            }
            Ok(_) => {}
            Err(_) => panic!(
                "guest {} did not reach the expected event within {timeout:?}; it said:\n{:#?}",
                guest.name(),
                seen
            ),
        }
    }
}

/// Waits for the guest's first failure.
pub fn wait_for_failure(events: &Receiver<VmmEvent>, guest: &Guest, timeout: Duration) -> Seen {
    wait_for(events, guest, timeout, |e| {
        matches!(e.kind, EventKind::Failure { .. })
    })
}

/// Waits until the guest registered.
pub fn wait_for_registration(
    events: &Receiver<VmmEvent>,
    guest: &Guest,
    timeout: Duration,
) -> Seen {
    wait_for(events, guest, timeout, |e| {
        matches!(e.kind, EventKind::Registered { .. })
    })
}

/// Polls until the guest has a registration (without consuming events).
pub fn poll_registered(guest: &Guest, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while guest.registration().is_none() {
        assert!(
            Instant::now() < deadline,
            "guest {} did not register within {timeout:?}; console: {:#?}",
            guest.name(),
            guest.console_lines()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A report diagnosed in this process, and its files.
pub struct Written {
    /// The report.
    pub report: Report,
    /// `<id>.json`.
    pub json: PathBuf,
    /// `<id>.txt`.
    pub text: PathBuf,
    /// `<id>.core`, when asked for.
    pub core: Option<PathBuf>,
}

fn written(
    capture: ambulance_capture::Capture,
    options: &ambulance_diagnose::Options,
    dir: &Path,
    core: bool,
) -> Written {
    let dir = ReportDir::open(dir).expect("report directory");
    let (report, files) = capture
        .diagnose_here(options, Some(&dir), core)
        .expect("diagnosis");
    let files = files.expect("files written");
    Written {
        report,
        json: files.json,
        text: files.text,
        core: files.core,
    }
}

/// Diagnoses the failure `e` of the frozen `guest` in this process, writing the report
/// (and with `core` its ELF core) into `dir`.
pub fn diagnose_failure(
    guest: &Guest,
    e: &VmmEvent,
    options: &ambulance_diagnose::Options,
    dir: &Path,
    core: bool,
) -> Written {
    let EventKind::Failure {
        cause,
        vcpu,
        detail,
        frozen,
    } = &e.kind
    else {
        panic!("not a failure: {e:?}")
    };
    let failure = vmm::failure_info(cause, *vcpu, detail, e.time);
    let capture = vmm::capture(guest, failure, vmm::frozen_from(frozen, true)).expect("capture");
    written(capture, options, dir, core)
}

/// An operator's diagnosis in this process: freezes `guest` (it stays frozen) and
/// diagnoses it into `dir`.
pub fn freeze_and_diagnose(
    guest: &Guest,
    detail: &str,
    options: &ambulance_diagnose::Options,
    dir: &Path,
    core: bool,
) -> Written {
    let capture = vmm::freeze_and_capture(guest, detail).expect("freeze and capture");
    written(capture, options, dir, core)
}
