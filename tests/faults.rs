//! Every fault of the test kernel's catalogue, on real KVM, yields the failure it should,
//! with the kernel's ground-truth line naming the fault and the structure it hit.

mod common;

use std::time::Duration;

use ambulance_abi::ports::panic_reason;
use ambulance_vmm::FailureCause;
use common::{test_guest, vmm, wait_for_failure};

/// What a fault must produce.
enum Expect {
    /// The panic doorbell with one of these reason codes.
    Panic(&'static [u32]),
    /// A panic with one of these codes, or a triple fault (a CPU exception that the
    /// host delivers straight to shutdown instead of to the guest's IDT).
    PanicOrTripleFault(&'static [u32]),
    TripleFault,
    WatchdogStall,
    Degraded,
}

const SEEDS: [u64; 2] = [1, 2];
const TIMEOUT: Duration = Duration::from_secs(30);

fn check(fault: &str, structures: &[&str], expect: Expect) {
    let Some(vmm) = vmm() else { return };
    let events = vmm.events();
    for seed in SEEDS {
        let cmdline = format!("fault={fault} fault_after_ms=300 seed={seed}");
        let guest = vmm
            .start(test_guest(fault, &cmdline))
            .expect("guest starts");
        let seen = wait_for_failure(&events, &guest, TIMEOUT);
        let truth = seen.ground_truth().unwrap_or_else(|| {
            panic!(
                "{fault}/{seed}: no ground-truth line in {:?}",
                seen.console()
            )
        });
        assert!(
            truth.starts_with(&format!("AMBULANCE-FAULT name={fault} structure=")),
            "{fault}/{seed}: {truth}"
        );
        let structure = truth
            .split_whitespace()
            .find_map(|w| w.strip_prefix("structure="))
            .expect("structure field");
        assert!(
            structures.contains(&structure),
            "{fault}/{seed}: unexpected structure in {truth}"
        );
        let address = truth
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address=0x"))
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .expect("address field in hex");
        assert!(
            ambulance_abi::is_canonical_48(address) && address != 0,
            "{truth}"
        );

        let cause = seen.failure().expect("a failure").clone();
        let ok = match (&expect, &cause) {
            (Expect::Panic(codes), FailureCause::Panic { code, .. }) => codes.contains(code),
            (Expect::PanicOrTripleFault(codes), FailureCause::Panic { code, .. }) => {
                codes.contains(code)
            }
            (Expect::PanicOrTripleFault(_), FailureCause::TripleFault) => true,
            (Expect::TripleFault, FailureCause::TripleFault) => true,
            (Expect::WatchdogStall, FailureCause::WatchdogStall { .. }) => true,
            (Expect::Degraded, FailureCause::Degraded { measured_hz, .. }) => *measured_hz > 0.0,
            _ => false,
        };
        assert!(
            ok,
            "{fault}/{seed}: unexpected failure {cause:?}; console: {:#?}",
            seen.console()
        );
        guest.destroy();
    }
}

#[test]
fn panic() {
    check(
        "panic",
        &["percpu"],
        Expect::Panic(&[panic_reason::GENERIC]),
    );
}

#[test]
fn list_corruption() {
    check(
        "list-corruption",
        &["run_queue"],
        Expect::Panic(&[panic_reason::LIST_CORRUPTION]),
    );
}

#[test]
fn list_cycle() {
    check(
        "list-cycle",
        &["run_queue"],
        Expect::Panic(&[panic_reason::LIST_CORRUPTION]),
    );
}

#[test]
fn stack_overflow() {
    check(
        "stack-overflow",
        &["tasks"],
        Expect::Panic(&[panic_reason::STACK_CORRUPTED]),
    );
}

#[test]
fn magic_smash() {
    check(
        "magic-smash",
        &["tasks", "objects", "percpu"],
        Expect::Panic(&[panic_reason::BAD_MAGIC]),
    );
}

#[test]
fn text_corruption() {
    check(
        "text-corruption",
        &["kernel_text"],
        Expect::Panic(&[panic_reason::TEXT_CHECKSUM]),
    );
}

#[test]
fn freelist_cycle() {
    check(
        "freelist-cycle",
        &["freelist.kobject", "freelist.buffer"],
        Expect::Panic(&[panic_reason::SLAB_CORRUPTION]),
    );
}

#[test]
fn wild_pointer() {
    check(
        "wild-pointer",
        &["object_table"],
        Expect::PanicOrTripleFault(&[
            panic_reason::EXCEPTION_BASE + 13, // non-canonical: #GP
            panic_reason::EXCEPTION_BASE + 14, // unmapped: #PF
        ]),
    );
}

#[test]
fn deadlock() {
    check("deadlock", &["locks"], Expect::WatchdogStall);
}

#[test]
fn hang() {
    check("hang", &["percpu"], Expect::WatchdogStall);
}

#[test]
fn slow() {
    check("slow", &["heartbeat"], Expect::Degraded);
}

#[test]
fn triple_fault() {
    check("triple-fault", &["percpu"], Expect::TripleFault);
}

#[test]
fn none_runs_healthy() {
    let Some(vmm) = vmm() else { return };
    let events = vmm.events();
    let guest = vmm
        .start(test_guest("healthy", "fault=none seed=3"))
        .expect("guest starts");
    common::wait_for_registration(&events, &guest, TIMEOUT);
    let first = guest.heartbeat().expect("registered heartbeat");
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < deadline {
        if let Ok(e) = events.recv_timeout(Duration::from_millis(100)) {
            assert!(
                !matches!(e.kind, ambulance_vmm::EventKind::Failure { .. }),
                "a healthy guest failed: {e:?}"
            );
        }
    }
    let last = guest.heartbeat().expect("registered heartbeat");
    assert!(
        last > first + 2000,
        "heartbeat advanced only from {first} to {last} in 4 s"
    );
    assert_eq!(guest.state(), ambulance_vmm::GuestState::Running);
}
