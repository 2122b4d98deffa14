//! Three guests on one host: one crashes and is captured while the other two keep their
//! heartbeats going, during the capture and after it.

mod common;

use std::time::{Duration, Instant};

use ambulance_vmm::{EventKind, GuestState};
use common::{poll_registered, test_guest, vmm};

#[test]
fn crashing_one_guest_leaves_the_others_running() {
    let Some(vmm) = vmm() else { return };
    let events = vmm.events();
    let healthy: Vec<_> = ["alpha", "charlie"]
        .iter()
        .map(|n| {
            vmm.start(test_guest(n, "fault=none"))
                .expect("guest starts")
        })
        .collect();
    let victim = vmm
        .start(test_guest(
            "bravo",
            "fault=magic-smash fault_after_ms=800 seed=5",
        ))
        .expect("guest starts");
    for g in healthy.iter().chain([&victim]) {
        poll_registered(g, Duration::from_secs(20));
    }

    // Sample the healthy heartbeats continuously until the victim's failure arrives.
    let mut before_failure = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let frozen = loop {
        assert!(Instant::now() < deadline, "the victim never failed");
        before_failure.push(
            healthy
                .iter()
                .map(|g| g.heartbeat().unwrap())
                .collect::<Vec<_>>(),
        );
        match events.recv_timeout(Duration::from_millis(20)) {
            Ok(e) if e.guest == victim.id() => {
                if let EventKind::Failure { frozen, .. } = e.kind {
                    break frozen;
                }
            }
            Ok(e) => assert!(
                !matches!(e.kind, EventKind::Failure { .. }),
                "a healthy guest failed: {e:?}"
            ),
            Err(_) => {}
        }
    };
    assert_eq!(victim.state(), GuestState::Frozen);
    assert_eq!(
        frozen.vcpus.len(),
        2,
        "every vCPU of the victim was captured"
    );

    // During the capture: the victim is frozen, its heartbeat stands still, and the
    // others' advance.
    let at_capture: Vec<u64> = healthy.iter().map(|g| g.heartbeat().unwrap()).collect();
    let victim_at_capture = victim.heartbeat().unwrap();
    victim
        .freeze()
        .expect("the frozen snapshot can be had again");
    std::thread::sleep(Duration::from_millis(700));
    for (g, before) in healthy.iter().zip(&at_capture) {
        let now = g.heartbeat().unwrap();
        assert!(
            now > before + 300,
            "{}: heartbeat {before} -> {now} while bravo is captured",
            g.name()
        );
        assert_eq!(g.state(), GuestState::Running);
    }
    assert_eq!(
        victim.heartbeat().unwrap(),
        victim_at_capture,
        "a frozen guest does not beat"
    );

    // After the capture (the victim destroyed): still advancing.
    victim.destroy();
    let after_destroy: Vec<u64> = healthy.iter().map(|g| g.heartbeat().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(700));
    for (g, before) in healthy.iter().zip(&after_destroy) {
        let now = g.heartbeat().unwrap();
        assert!(
            now > before + 300,
            "{}: heartbeat {before} -> {now} after the capture",
            g.name()
        );
    }
    // And it never stalled before the failure either.
    let first = &before_failure[0];
    let last = before_failure.last().unwrap();
    for i in 0..healthy.len() {
        assert!(last[i] > first[i], "heartbeats advanced before the failure");
    }
}

/// The work counter (`work=1`) counts units of CPU-bound work, not time: it advances while
/// the guest runs, stands still while it is frozen (where a clock-set heartbeat would
/// jump ahead on resume), and advances again once resumed. Without `work=1` it stays 0.
#[test]
fn the_work_counter_counts_units_and_stops_while_frozen() {
    let Some(vmm) = vmm() else { return };
    let busy = vmm
        .start(test_guest("worker", "fault=none work=1"))
        .expect("guest starts");
    let idle = vmm
        .start(test_guest("idler", "fault=none"))
        .expect("guest starts");
    for g in [&busy, &idle] {
        poll_registered(g, Duration::from_secs(20));
    }
    let advanced = |g: &ambulance_vmm::Guest, what: &str| {
        let before = g.work_units().expect("the work root is registered");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = g.work_units().unwrap();
            if now > before {
                return now;
            }
            assert!(Instant::now() < deadline, "{what}: work stuck at {before}");
        }
    };
    advanced(&busy, "running");

    busy.freeze().expect("freeze");
    let frozen_at = busy.work_units().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        busy.work_units().unwrap(),
        frozen_at,
        "a frozen guest completes no work"
    );
    busy.resume().expect("resume");
    let after = advanced(&busy, "resumed");
    assert!(after > frozen_at);

    assert_eq!(
        idle.work_units(),
        Some(0),
        "without work=1 the counter stays 0"
    );
}
