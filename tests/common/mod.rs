//! Helpers for the end-to-end tests: a VMM (or a loud skip without KVM), test-kernel
//! guests, and waiting for events with a deadline.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use ambulance_vmm::{Event, EventKind, FailureCause, Guest, GuestConfig, Vmm};
use crossbeam_channel::Receiver;

/// A VMM, or `None` after printing a loud skip line when this machine has no KVM.
pub fn vmm() -> Option<Vmm> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED (no /dev/kvm)");
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
    pub events: Vec<Event>,
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
    events: &Receiver<Event>,
    guest: &Guest,
    timeout: Duration,
    mut done: impl FnMut(&Event) -> bool,
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
pub fn wait_for_failure(events: &Receiver<Event>, guest: &Guest, timeout: Duration) -> Seen {
    wait_for(events, guest, timeout, |e| {
        matches!(e.kind, EventKind::Failure { .. })
    })
}

/// Waits until the guest registered.
pub fn wait_for_registration(events: &Receiver<Event>, guest: &Guest, timeout: Duration) -> Seen {
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
