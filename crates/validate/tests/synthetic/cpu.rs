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
