//! list-integrity.

use ambulance_abi::descriptor::root_flags;
use ambulance_report::{FindingKind, Severity};
use ambulance_validate::builtins::ListIntegrity;

use crate::support::*;

/// Six tasks on a run queue guarded by a spinlock (held by `owner`, if any).
fn run_queue(owner: Option<u32>) -> (Guest, Vec<u64>, u64) {
    let mut g = Guest::new();
    let table = g.tasks(6);
    let tasks: Vec<u64> = (0..6).map(|i| table + i * task::SIZE).collect();
    let head = g.task_list(&tasks);
    let lock = g.spinlock("run_queue", owner);
    g.run_queue_root("run_queue", head, lock + spinlock::LOCKED);
    (g, tasks, head)
}

#[test]
fn a_healthy_list_has_no_findings() {
    let (g, _, _) = run_queue(None);
    let b = g.build();
    assert!(b.run(&ListIntegrity).is_empty());
    let ctx = b.context(limits());
    ctx.elements(&b.descriptor.roots[0]);
    let s = ctx.structures();
    assert_eq!((s[0].count, s[0].end.kind.as_str()), (6, "complete"));
}

#[test]
fn a_wrong_prev_is_found_at_its_element() {
    let (mut g, tasks, _) = run_queue(None);
    g.put_u64(tasks[3] + task::RUN_LIST + 8, tasks[0] + task::RUN_LIST);
    let found = g.build().run(&ListIntegrity);
    let f = the_one(&found, tasks[3]);
    corruption(f);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.structure.index, Some(3));
    assert_eq!(f.structure.path.as_deref(), Some("prev"));
    assert_eq!(f.found, format!("{:#x}", tasks[0] + task::RUN_LIST));
}

#[test]
fn a_cycle_is_found_at_the_element_that_closes_it() {
    let (mut g, tasks, _) = run_queue(None);
    g.put_u64(tasks[4] + task::RUN_LIST, tasks[2] + task::RUN_LIST);
    let found = g.build().run(&ListIntegrity);
    let cycle: Vec<_> = found
        .iter()
        .filter(|f| f.message.contains("loops"))
        .collect();
    assert_eq!(cycle.len(), 1, "{found:#?}");
    assert_eq!(cycle[0].address.virt.unwrap().0, tasks[4]);
    corruption(cycle[0]);
}

#[test]
fn garbage_next_pointers_are_corruption() {
    for bad in [WILD, UNMAPPED, 0] {
        let (mut g, tasks, _) = run_queue(None);
        g.put_u64(tasks[1] + task::RUN_LIST, bad);
        let found = g.build().run(&ListIntegrity);
        let f = the_one(&found, tasks[1]);
        corruption(f);
        assert!(f.message.contains("cannot be"), "{}", f.message);
    }
    // A misaligned link.
    let (mut g, tasks, _) = run_queue(None);
    g.put_u64(tasks[1] + task::RUN_LIST, tasks[2] + task::RUN_LIST + 4);
    let found = g.build().run(&ListIntegrity);
    assert!(
        found
            .iter()
            .any(|f| f.message.contains("misaligned") && f.kind == FindingKind::Analysis),
        "{found:#?}"
    );
}

#[test]
fn with_the_lock_held_inconsistencies_are_mid_updates() {
    // A wrong prev, and (separately) a cycle, while CPU 1 holds the run queue lock.
    let (mut g, tasks, _) = run_queue(Some(1));
    g.put_u64(tasks[3] + task::RUN_LIST + 8, tasks[0] + task::RUN_LIST);
    let found = g.build().run(&ListIntegrity);
    mid_update(the_one(&found, tasks[3]), "run_queue", Some(1));

    let (mut g, tasks, _) = run_queue(Some(1));
    g.put_u64(tasks[4] + task::RUN_LIST, tasks[2] + task::RUN_LIST);
    let found = g.build().run(&ListIntegrity);
    mid_update(the_one(&found, tasks[4]), "run_queue", Some(1));

    // Garbage stays corruption whatever the lock says.
    let (mut g, tasks, _) = run_queue(Some(1));
    g.put_u64(tasks[1] + task::RUN_LIST, WILD);
    let found = g.build().run(&ListIntegrity);
    corruption(the_one(&found, tasks[1]));
}

/// Linux's tasklist_lock is a qrwlock: only its low byte says it is write-held, and its
/// owner is not recorded.
#[test]
fn a_byte_lock_is_held_only_when_write_locked() {
    let build = |word: u32| {
        let mut g = Guest::new();
        let table = g.tasks(3);
        let tasks: Vec<u64> = (0..3).map(|i| table + i * task::SIZE).collect();
        let head = g.task_list(&tasks);
        let lock = g.alloc(8);
        g.put_u32(lock, word);
        g.run_queue_root("tasks_list", head, lock).flags = root_flags::LOCK_BYTE;
        g.put_u64(tasks[2] + task::RUN_LIST + 8, head);
        (g.build(), tasks[2], lock)
    };
    // Readers only (count above the low byte): not an excuse.
    let (b, at, _) = build(0x600);
    corruption(the_one(&b.run(&ListIntegrity), at));
    // Write-locked.
    let (b, at, lock) = build(0xff);
    mid_update(
        the_one(&b.run(&ListIntegrity), at),
        &format!("{lock:#x}"),
        None,
    );
}

#[test]
fn an_unreadable_prev_is_corruption_even_mid_update() {
    // The last node's link straddles a page: next readable, prev on an unmapped page.
    let (mut g, tasks, head) = run_queue(Some(0));
    let page = 0xffff_c900_1000_0000;
    g.mem.map(page, 0x1000);
    let link = page + 0x1000 - 8;
    g.put_u64(tasks[5] + task::RUN_LIST, link);
    g.put_u64(link, head);
    g.put_u64(head + 8, link);
    let found = g.build().run(&ListIntegrity);
    let f = the_one(&found, link - task::RUN_LIST);
    corruption(f);
    assert_eq!(f.found, "unreadable");
}

#[test]
fn out_of_time_the_prev_check_says_what_it_did_not_do() {
    let (g, _, _) = run_queue(None);
    let b = g.build();
    let found = b.run_out_of_time(&ListIntegrity);
    let notes = budget_notes(&found, "list-integrity");
    assert!(!notes.is_empty(), "{found:#?}");
    assert!(notes.iter().all(|n| n.severity == Severity::Warning));
    assert!(notes
        .iter()
        .any(|n| n.message.contains("the diagnosis deadline passed")));
}
