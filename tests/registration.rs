//! Malformed descriptors are refused with a clear event, and the guest keeps running:
//! the test kernel registers a broken descriptor first and a good one after it.

mod common;

use std::time::Duration;

use ambulance_abi::ports::RegistrationStatus;
use ambulance_vmm::EventKind;
use common::{test_guest, vmm, wait_for};

fn refused_then_accepted(mode: &str, reason_says: &str) {
    let Some(vmm) = vmm() else { return };
    let events = vmm.events();
    let guest = vmm
        .start(test_guest(mode, &format!("register={mode}")))
        .expect("guest starts");
    let seen = wait_for(&events, &guest, Duration::from_secs(20), |e| {
        matches!(e.kind, EventKind::Registered { .. })
    });
    let refusal = seen
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RegistrationRefused { reason, gpa } => Some((reason.clone(), *gpa)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{mode}: no refusal event before the registration"));
    assert!(
        refusal.0.contains(reason_says),
        "{mode}: refusal should say {reason_says:?}: {}",
        refusal.0
    );
    assert!(refusal.1 % 4096 == 0 && refusal.1 != 0);
    // The guest saw the refusal, kept running, and registered properly.
    assert!(seen
        .console()
        .iter()
        .any(|l| l.contains("deliberately broken descriptor") && l.ends_with("refused")));
    assert_eq!(guest.registration_status(), RegistrationStatus::Accepted);
    let registration = guest
        .registration()
        .expect("host copy of the good descriptor");
    // Every root the test kernel declares, the work counter (`work=1`) included.
    assert_eq!(registration.descriptor.roots.len(), 13);
    let beat = guest.heartbeat().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(guest.heartbeat().unwrap() > beat, "the guest keeps running");
}

#[test]
fn bad_checksum_is_refused() {
    refused_then_accepted("bad-checksum", "checksum mismatch");
}

#[test]
fn oversize_root_count_is_refused() {
    refused_then_accepted("oversize", "roots: 100000 exceeds the limit of 256");
}

#[test]
fn non_canonical_root_address_is_refused() {
    refused_then_accepted(
        "noncanonical",
        "is not a canonical non-null virtual address",
    );
}
