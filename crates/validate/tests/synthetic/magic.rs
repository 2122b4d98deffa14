//! magic.

use ambulance_abi::descriptor::{root_flags, Hint, Root, RootKind};
use ambulance_report::Severity;
use ambulance_validate::builtins::Magic;

use crate::support::*;

fn task_magic() -> Hint {
    Hint::Magic {
        offset: task::MAGIC as u32,
        size: 8,
        value: TASK_MAGIC,
    }
}

/// Eight tasks in a table (with a magic hint) under a lock held by `owner`.
fn tasks(owner: Option<u32>) -> (Guest, u64) {
    let mut g = Guest::new();
    let table = g.tasks(8);
    let lock = g.spinlock("tasks", owner);
    let r = g.tasks_root(table, 8);
    r.hints.push(task_magic());
    r.lock = lock + spinlock::LOCKED;
    (g, table)
}

#[test]
fn healthy_magics_have_no_findings() {
    let (g, _) = tasks(None);
    assert!(g.build().run(&Magic).is_empty());
}

#[test]
fn a_bad_magic_is_found_at_its_element() {
    let (mut g, table) = tasks(None);
    let t5 = table + 5 * task::SIZE;
    g.put_u64(t5 + task::MAGIC, 0x4141_4141_4141_4141);
    let found = g.build().run(&Magic);
    let f = the_one(&found, t5);
    corruption(f);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.structure.index, Some(5));
    assert_eq!(f.structure.path.as_deref(), Some("magic"));
    assert_eq!(f.found, "0x4141414141414141");
}

#[test]
fn with_the_lock_held_a_bad_magic_is_a_mid_update() {
    let (mut g, table) = tasks(Some(2));
    let t5 = table + 5 * task::SIZE;
    g.put_u64(t5 + task::MAGIC, 0);
    let found = g.build().run(&Magic);
    mid_update(the_one(&found, t5), "tasks", Some(2));
}

#[test]
fn an_unreadable_element_is_an_error_even_with_the_lock_held() {
    // A pointer array whose second slot points at unmapped memory.
    let mut g = Guest::new();
    let objs = g.tasks(1);
    let table = g.alloc(16);
    g.put_u64(table, objs);
    g.put_u64(table + 8, UNMAPPED);
    let lock = g.spinlock("objects", Some(1));
    g.root(Root {
        name: "objects".into(),
        type_name: "Task".into(),
        kind: RootKind::Array,
        flags: root_flags::POINTER_ELEMENTS,
        address: table,
        element_size: task::SIZE as u32,
        link_offset: 0,
        max_count: 2,
        aux: 0,
        lock: lock + spinlock::LOCKED,
        hints: vec![task_magic()],
    });
    let found = g.build().run(&Magic);
    let f = the_one(&found, UNMAPPED);
    corruption(f);
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(f.found, "unreadable");
}

#[test]
fn findings_per_root_are_capped_and_counted() {
    // 200 tasks, every magic wrong: 64 findings and one that counts the rest.
    let mut g = Guest::new();
    let table = g.alloc(200 * task::SIZE);
    g.tasks_root(table, 200).hints.push(task_magic());
    let found = g.build().run(&Magic);
    assert_eq!(found.len(), 65, "{:#?}", &found[60..]);
    assert!(
        found[64].message.contains("136 more findings"),
        "{}",
        found[64].message
    );
}

#[test]
fn out_of_time_it_stops_and_says_where() {
    let (mut g, table) = tasks(None);
    g.put_u64(table + 5 * task::SIZE, 1);
    let found = g.build().run_out_of_time(&Magic);
    assert_eq!(found.len(), 1, "{found:#?}");
    let n = budget_notes(&found, "magic");
    assert!(
        n[0].message.contains("elements 0 to 7 not checked"),
        "{}",
        n[0].message
    );
}
