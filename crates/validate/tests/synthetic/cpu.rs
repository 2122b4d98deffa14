//! cpu: the failed CPU (an event), a CPU behind the others, all CPUs stopped, the only
//! CPU stopped.

use ambulance_report::{FindingKind, Severity};
use ambulance_validate::builtins::CpuState;

use crate::support::*;

const IF: u64 = 1 << 9;
const S: u64 = 1_000_000_000;

#[test]
fn a_healthy_guest_diagnosed_on_request_has_no_findings() {
    let mut g = Guest::new();
    g.percpu(&[10 * S, 10 * S + 5, 10 * S - 3]);
    g.vcpu(0, "running", IF, 0xffff_ffff_8020_1000);
    assert!(g.build().run(&CpuState).is_empty());
}

#[test]
fn the_failed_cpu_is_the_event_restated_at_its_per_cpu_data() {
    let mut g = Guest::new();
    let pc = g.percpu(&[S, S]);
    g.vcpu(1, "failed", 0, 0xffff_ffff_8020_7977);
    g.failure = failure("panic", Some(1));
    let found = g.build().run(&CpuState);
    let f = the_one(&found, pc + percpu::SIZE);
    assert_eq!(f.kind, FindingKind::Event);
    assert_eq!(f.severity, Severity::Critical);
    assert!(
        f.message
            .starts_with("CPU 1 failed (panic) at RIP 0xffffffff80207977"),
        "{}",
        f.message
    );
}

#[test]
fn a_stall_with_one_cpu_behind_names_it() {
    let mut g = Guest::new();
    let pc = g.percpu(&[10 * S, 5 * S, 10 * S]);
    g.failure = failure("watchdog_stall", None);
    let found = g.build().run(&CpuState);
    assert_eq!(found.len(), 1, "{found:#?}");
    let f = the_one(&found, pc + percpu::SIZE);
    corruption(f);
    assert!(
        f.message.contains("CPU 1 stopped scheduling"),
        "{}",
        f.message
    );
}

#[test]
fn a_stall_with_every_cpu_stuck_together_names_each() {
    let mut g = Guest::new();
    let pc = g.percpu(&[10 * S, 10 * S + 1000]);
    g.vcpu(0, "running", 0, 0xffff_ffff_8020_1111);
    g.vcpu(1, "running", IF, 0xffff_ffff_8020_2222);
    g.failure = failure("watchdog_stall", None);
    g.failure
        .data
        .insert("stalled_for_ms".into(), serde_json::json!(1500));
    let found = g.build().run(&CpuState);
    assert_eq!(found.len(), 2, "{found:#?}");
    let f0 = the_one(&found, pc);
    corruption(f0);
    assert!(
        f0.message.contains("the heartbeat stopped for 1500 ms")
            && f0.message.contains("all 2 CPUs stopped together")
            && f0
                .message
                .contains("running with interrupts disabled: spinning at RIP 0xffffffff80201111"),
        "{}",
        f0.message
    );
    let f1 = the_one(&found, pc + percpu::SIZE);
    corruption(f1);
    assert!(
        f1.message
            .contains("interrupts enabled, yet not scheduling"),
        "{}",
        f1.message
    );
}

#[test]
fn a_stall_of_the_only_cpu_is_found() {
    let mut g = Guest::new();
    let pc = g.percpu(&[7 * S]);
    g.vcpu(0, "halted", 0, 0xffff_ffff_8020_3333);
    g.failure = failure("watchdog_stall", None);
    let found = g.build().run(&CpuState);
    let f = the_one(&found, pc);
    corruption(f);
    assert_eq!(f.structure.path.as_deref(), Some("last_switch_ns"));
    assert!(
        f.message.contains("the guest's only CPU stopped")
            && f.message.contains("halted with interrupts disabled"),
        "{}",
        f.message
    );
}

#[test]
fn without_per_cpu_data_the_registers_and_heartbeat_suffice() {
    let mut g = Guest::new();
    g.vcpu(0, "running", 0, 0xffff_ffff_8020_4444);
    g.vcpu(1, "halted", IF, 0xffff_ffff_8020_5555);
    g.failure = failure("watchdog_stall", None);
    let found = g.build().run(&CpuState);
    assert_eq!(found.len(), 2, "{found:#?}");
    let spinning = the_one(&found, 0xffff_ffff_8020_4444);
    assert_eq!(spinning.severity, Severity::Critical);
    assert_eq!(spinning.structure.root, "vcpus");
    assert_eq!(spinning.structure.index, Some(0));
    let idle = the_one(&found, 0xffff_ffff_8020_5555);
    assert_eq!(idle.severity, Severity::Warning);
    assert!(idle.message.contains("idle"), "{}", idle.message);
}
