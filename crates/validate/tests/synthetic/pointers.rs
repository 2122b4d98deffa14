//! pointer-range.

use ambulance_abi::descriptor::Hint;
use ambulance_validate::builtins::PointerRanges;

use crate::support::*;

/// Four CPUs whose `current` must point into an 8-task table (or be null), the per-CPU
/// data under a lock held by `owner`.
fn percpu(owner: Option<u32>, nullable: bool) -> (Guest, u64, u64) {
    let mut g = Guest::new();
    let table = g.tasks(8);
    let pc = g.percpu(&[0, 0, 0, 0]);
    for i in 0..4 {
        g.put_u64(
            pc + i * percpu::SIZE + percpu::CURRENT,
            table + i * task::SIZE,
        );
    }
    let lock = g.spinlock("percpu", owner);
    let r = g.roots.last_mut().unwrap();
    r.lock = lock + spinlock::LOCKED;
    r.hints.push(Hint::PointerRange {
        offset: percpu::CURRENT as u32,
        lo: table,
        hi: table + 8 * task::SIZE,
        nullable,
    });
    (g, pc, table)
}

fn field(pc: u64, cpu: u64) -> u64 {
    pc + cpu * percpu::SIZE + percpu::CURRENT
}

#[test]
fn pointers_in_range_have_no_findings() {
    let (mut g, pc, _) = percpu(None, true);
    g.put_u64(field(pc, 3), 0);
    assert!(g.build().run(&PointerRanges).is_empty());
}

#[test]
fn each_bad_pointer_is_found_at_its_field() {
    for (bad, what) in [
        (WILD, "not even a canonical address"),
        (UNMAPPED, "not mapped"),
        (KDATA + 0x10_0000, "outside its region"),
        (0, "is null"),
    ] {
        let (mut g, pc, _) = percpu(None, false);
        g.put_u64(field(pc, 2), bad);
        let found = g.build().run(&PointerRanges);
        let f = the_one(&found, field(pc, 2));
        corruption(f);
        assert_eq!(f.structure.index, Some(2));
        assert_eq!(f.structure.path.as_deref(), Some("current"));
        assert!(f.message.contains(what), "{what}: {}", f.message);
    }
}

#[test]
fn with_the_lock_held_only_what_an_update_could_write_is_excused() {
    for (bad, garbage) in [
        (WILD, true),
        (UNMAPPED, true),
        (KDATA + 0x10_0000, false),
        (0, false),
    ] {
        let (mut g, pc, _) = percpu(Some(0), false);
        g.put_u64(field(pc, 1), bad);
        let found = g.build().run(&PointerRanges);
        let f = the_one(&found, field(pc, 1));
        if garbage {
            corruption(f);
        } else {
            mid_update(f, "percpu", Some(0));
        }
    }
}

#[test]
fn out_of_time_it_says_what_it_did_not_check() {
    let (g, ..) = percpu(None, true);
    let found = g.build().run_out_of_time(&PointerRanges);
    assert_eq!(budget_notes(&found, "pointer-range").len(), 1, "{found:#?}");
}
