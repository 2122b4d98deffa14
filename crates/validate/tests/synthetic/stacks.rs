//! stack-end.

use ambulance_report::Severity;
use ambulance_validate::builtins::StackEnd;

use crate::support::*;

fn tasks() -> (Guest, u64) {
    let mut g = Guest::new();
    let table = g.tasks(4);
    g.tasks_root(table, 4);
    (g, table)
}

fn stack_of(g: &Guest, t: u64) -> u64 {
    let pa = g.mem.phys(t + task::STACK_BASE) as usize;
    u64::from_le_bytes(g.mem.ram()[pa..pa + 8].try_into().unwrap())
}

#[test]
fn intact_stacks_have_no_findings() {
    let (g, _) = tasks();
    assert!(g.build().run(&StackEnd).is_empty());
}

#[test]
fn an_overwritten_end_magic_is_found_at_the_stack_base() {
    let (mut g, table) = tasks();
    let t2 = table + 2 * task::SIZE;
    let base = stack_of(&g, t2);
    g.put(base, &[0x41; 64]);
    let found = g.build().run(&StackEnd);
    let f = the_one(&found, base);
    corruption(f);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.structure.index, Some(2));
    assert_eq!(f.found, "0x4141414141414141");
    assert!(f.message.contains("overflowed"), "{}", f.message);
}

#[test]
fn an_unreadable_stack_is_an_error_at_its_base() {
    let (mut g, table) = tasks();
    let t1 = table + task::SIZE;
    // The guard page below a stack.
    let guard = stack_of(&g, t1) - 0x1000;
    g.put_u64(t1 + task::STACK_BASE, guard);
    let found = g.build().run(&StackEnd);
    let f = the_one(&found, guard);
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.found, "unreadable");
}

#[test]
fn out_of_time_it_says_what_it_did_not_check() {
    let (g, _) = tasks();
    let found = g.build().run_out_of_time(&StackEnd);
    assert_eq!(budget_notes(&found, "stack-end").len(), 1, "{found:#?}");
}
