//! freelist.

use ambulance_abi::descriptor::{root_flags, Hint, Root, RootKind};
use ambulance_validate::builtins::FreeLists;

use crate::support::*;

/// A slab of 8 free objects, all on the free list in order, its lock held by `owner`;
/// a pointer table of 4 slots (all empty) into the slab. Returns the objects, the
/// free-list head variable and the table.
fn slab(owner: Option<u32>) -> (Guest, Vec<u64>, u64, u64) {
    let mut g = Guest::new();
    let base = g.alloc(8 * free_object::SIZE);
    let objects: Vec<u64> = (0..8).map(|i| base + i * free_object::SIZE).collect();
    let head = g.alloc(8);
    g.put_u64(head, objects[0]);
    for w in objects.windows(2) {
        g.put_u64(w[0] + free_object::NEXT, w[1]);
    }
    for &o in &objects {
        g.put_u64(o + free_object::POISON, FREE_POISON);
    }
    let lock = g.spinlock("slab.kobject", owner);
    g.root(Root {
        name: "freelist.kobject".into(),
        type_name: "FreeObject".into(),
        kind: RootKind::List,
        flags: root_flags::SINGLY_LINKED,
        address: head,
        element_size: free_object::SIZE as u32,
        link_offset: free_object::NEXT as u32,
        max_count: 8,
        aux: 0,
        lock: lock + spinlock::LOCKED,
        hints: vec![Hint::PointerRange {
            offset: free_object::NEXT as u32,
            lo: base,
            hi: base + 8 * free_object::SIZE,
            nullable: true,
        }],
    });
    let table = g.alloc(4 * 8);
    let table_lock = g.spinlock("object_table", None);
    g.root(Root {
        name: "objects".into(),
        type_name: "FreeObject".into(),
        kind: RootKind::Array,
        flags: root_flags::POINTER_ELEMENTS,
        address: table,
        element_size: free_object::SIZE as u32,
        link_offset: 0,
        max_count: 4,
        aux: 0,
        lock: table_lock + spinlock::LOCKED,
        hints: vec![],
    });
    (g, objects, head, table)
}

#[test]
fn a_healthy_free_list_has_no_findings() {
    let (g, ..) = slab(None);
    assert!(g.build().run(&FreeLists).is_empty());
}

#[test]
fn a_loop_is_found_at_the_entry_that_closes_it() {
    let (mut g, o, ..) = slab(None);
    g.put_u64(o[5] + free_object::NEXT, o[2]);
    let found = g.build().run(&FreeLists);
    let f = the_one(&found, o[5]);
    corruption(f);
    assert!(f.message.contains("loops"), "{}", f.message);
    assert_eq!(f.structure.index, Some(5));
}

#[test]
fn an_entry_outside_its_slab_is_found_at_that_entry() {
    let (mut g, o, ..) = slab(None);
    let stray = g.alloc(free_object::SIZE);
    g.put_u64(o[3] + free_object::NEXT, stray);
    let found = g.build().run(&FreeLists);
    let f = the_one(&found, stray);
    corruption(f);
    assert!(f.message.contains("outside its slab"), "{}", f.message);
}

#[test]
fn a_free_object_still_referenced_is_found_at_the_object() {
    let (mut g, o, _, table) = slab(None);
    g.put_u64(table + 16, o[6]);
    let found = g.build().run(&FreeLists);
    let f = the_one(&found, o[6]);
    corruption(f);
    assert!(f.found.contains("objects[2]"), "{}", f.found);
}

#[test]
fn with_the_lock_held_they_are_mid_updates() {
    let (mut g, o, _, table) = slab(Some(3));
    g.put_u64(o[5] + free_object::NEXT, o[2]);
    g.put_u64(table, o[1]);
    let found = g.build().run(&FreeLists);
    mid_update(the_one(&found, o[5]), "slab.kobject", Some(3));
    mid_update(the_one(&found, o[1]), "slab.kobject", Some(3));
}

#[test]
fn a_garbage_link_is_corruption_even_with_the_lock_held() {
    let (mut g, o, ..) = slab(Some(0));
    g.put_u64(o[4] + free_object::NEXT, WILD);
    let found = g.build().run(&FreeLists);
    let f = the_one(&found, o[4]);
    corruption(f);
    assert!(f.message.contains("cannot be followed"), "{}", f.message);
}

#[test]
fn out_of_time_it_says_what_it_did_not_check() {
    let (g, ..) = slab(None);
    let found = g.build().run_out_of_time(&FreeLists);
    assert!(!budget_notes(&found, "freelist").is_empty(), "{found:#?}");
}
