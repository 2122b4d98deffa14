//! locks: held locks, spinning CPUs, deadlocks — and a wait-for graph too big to walk
//! twice.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_report::Severity;
use ambulance_validate::builtins::Locks;

use crate::support::*;

/// A table of `n` spinlocks (named lock0…) and `cpus` CPUs' per-CPU data.
fn guest(n: u64, cpus: usize) -> (Guest, u64, u64) {
    let mut g = Guest::new();
    let table = g.alloc(n * spinlock::SIZE);
    for i in 0..n {
        let l = table + i * spinlock::SIZE;
        g.put_u32(l + spinlock::MAGIC, LOCK_MAGIC);
        g.set_lock(l, None);
        g.put(l + spinlock::NAME, format!("lock{i}").as_bytes());
    }
    g.root(Root {
        name: "locks".into(),
        type_name: "Spinlock".into(),
        kind: RootKind::Array,
        flags: 0,
        address: table,
        element_size: spinlock::SIZE as u32,
        link_offset: 0,
        max_count: n as u32,
        aux: 0,
        lock: 0,
        hints: vec![],
    });
    let pc = g.percpu(&vec![0; cpus]);
    (g, table, pc)
}

fn lock(table: u64, i: u64) -> u64 {
    table + i * spinlock::SIZE
}

fn wait(g: &mut Guest, pc: u64, cpu: u64, on: u64) {
    g.put_u64(pc + cpu * percpu::SIZE + percpu::WAITING_ON, on);
}

#[test]
fn no_lock_held_no_findings() {
    let (g, ..) = guest(4, 2);
    assert!(g.build().run(&Locks).is_empty());
}

#[test]
fn a_held_lock_and_a_spinning_cpu_are_reported_for_the_record() {
    let (mut g, table, pc) = guest(4, 2);
    g.set_lock(lock(table, 2), Some(1));
    wait(&mut g, pc, 0, lock(table, 2));
    let found = g.build().run(&Locks);
    let held = the_one(&found, lock(table, 2));
    assert_eq!(held.severity, Severity::Info);
    assert_eq!(
        held.message,
        "lock lock2 was held by CPU 1 when the guest was frozen"
    );
    let spin = the_one(&found, pc);
    assert_eq!(spin.severity, Severity::Info);
    assert!(spin
        .message
        .contains("CPU 0 was spinning on lock lock2 held by CPU 1"));
}

#[test]
fn an_abba_deadlock_is_found_at_both_locks() {
    let (mut g, table, pc) = guest(4, 2);
    g.set_lock(lock(table, 0), Some(0));
    g.set_lock(lock(table, 1), Some(1));
    wait(&mut g, pc, 0, lock(table, 1));
    wait(&mut g, pc, 1, lock(table, 0));
    let found = g.build().run(&Locks);
    let dead: Vec<_> = found
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .collect();
    assert_eq!(dead.len(), 2, "{found:#?}");
    let mut at: Vec<u64> = dead.iter().map(|f| f.address.virt.unwrap().0).collect();
    at.sort();
    assert_eq!(at, vec![lock(table, 0), lock(table, 1)]);
    assert!(
        dead[0].message.starts_with(
            "deadlock: CPU 0 waits for lock1 held by CPU 1; CPU 1 waits for lock0 held by CPU 0"
        ),
        "{}",
        dead[0].message
    );
}

/// 20,000 CPUs each waiting for a lock its neighbour holds, in one ring: the cycle is
/// found in one pass (the old search was cubic), and told briefly.
#[test]
fn a_huge_wait_for_cycle_is_found_in_one_pass() {
    let n = 20_000;
    let (mut g, table, pc) = guest(n, n as usize);
    for i in 0..n {
        g.set_lock(lock(table, i), Some(i as u32));
        wait(&mut g, pc, i, lock(table, (i + 1) % n));
    }
    let found = g.build().run(&Locks);
    let dead: Vec<_> = found
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .collect();
    assert_eq!(dead.len(), 64, "capped");
    assert!(
        dead[0].message.ends_with("and 19984 more CPUs"),
        "{}",
        dead[0].message
    );
    // Held and spinning findings are capped per root and the rest counted.
    assert!(found
        .iter()
        .any(|f| f.message.contains("19936 more findings of locks on locks")));
}

#[test]
fn out_of_time_it_says_what_it_did_not_check() {
    let (g, ..) = guest(4, 2);
    let found = g.build().run_out_of_time(&Locks);
    assert!(!budget_notes(&found, "locks").is_empty(), "{found:#?}");
}
