//! Crafted guests that would make an unbounded reader work forever: huge counts, cycles,
//! deep trees, huge rings. Every enumeration ends within its node limit or time budget
//! and says how in `structures`; asserted on that outcome, never on how long it took.

use std::time::{Duration, Instant};

use ambulance_abi::descriptor::{root_flags, Root, RootKind, MAX_COUNT};
use ambulance_introspect::walk::WalkLimits;
use ambulance_report::{FindingKind, Severity};
use ambulance_validate::ValidationConfig;

use crate::support::*;

fn array(name: &str, address: u64, element_size: u32, flags: u16) -> Root {
    Root {
        name: name.into(),
        type_name: "Task".into(),
        kind: RootKind::Array,
        flags,
        address,
        element_size,
        link_offset: 0,
        max_count: MAX_COUNT,
        aux: 0,
        lock: 0,
        hints: vec![],
    }
}

fn outcome(b: &Built, limits: WalkLimits, root: usize) -> (u64, String, String) {
    let ctx = b.context(limits);
    ctx.elements(&b.descriptor.roots[root]);
    let s = ctx.structures().remove(0);
    (s.count, s.end.kind, s.end.detail)
}

/// Arrays, rings and pointer arrays of 2^24 elements (the most a root may declare) of
/// up to 1 MiB each: cut at the node limit, or at the time budget.
#[test]
fn huge_arrays_and_rings_stop_at_the_limits() {
    let mut g = Guest::new();
    g.root(array("big", KDATA, 1 << 20, 0));
    g.root(array("pointers", KDATA, 64, root_flags::POINTER_ELEMENTS));
    let mut ring = array("ring", KDATA, 4096, 0);
    ring.kind = RootKind::Ring;
    ring.aux = KDATA;
    g.root(ring);
    // Every pointer slot holds a (valid) pointer: 2 MiB of KDATA is 262144 slots.
    let slots = KDATA_LEN / 8;
    let bytes: Vec<u8> = (0..slots).flat_map(|_| KDATA.to_le_bytes()).collect();
    g.put(KDATA, &bytes);
    let b = g.build();
    for root in 0..3 {
        let (n, kind, detail) = outcome(&b, WalkLimits::new(1000, Duration::from_secs(60)), root);
        assert_eq!((n, kind.as_str()), (1000, "limit"), "root {root}: {detail}");
        let (n, kind, detail) = outcome(&b, WalkLimits::new(u64::MAX, Duration::ZERO), root);
        assert_eq!(kind, "timed_out", "root {root}");
        assert!(n < MAX_COUNT as u64);
        assert!(
            detail.contains("the walk budget of 0 ms ran out"),
            "{detail}"
        );
    }
}

/// A list that loops back into itself long after its head, and one far longer than the
/// node limit.
#[test]
fn cycles_and_long_lists_stop() {
    let mut g = Guest::new();
    let n = 20_000u64;
    let links = g.alloc(n * 16);
    let head = g.alloc(16);
    let mut bytes = Vec::with_capacity((n * 16) as usize);
    for i in 0..n {
        bytes.extend_from_slice(&(links + ((i + 1) % n) * 16).to_le_bytes());
        bytes.extend_from_slice(&(links + ((i + n - 1) % n) * 16).to_le_bytes());
    }
    g.put(links, &bytes);
    g.put_u64(head, links);
    let mut root = Root {
        name: "loop".into(),
        type_name: "FreeObject".into(),
        kind: RootKind::List,
        flags: 0,
        address: head,
        element_size: 16,
        link_offset: 0,
        max_count: MAX_COUNT,
        aux: 0,
        lock: 0,
        hints: vec![],
    };
    g.root(root.clone());
    root.name = "loop.singly".into();
    root.flags = root_flags::SINGLY_LINKED;
    g.root(root);
    let b = g.build();
    for r in 0..2 {
        let (count, kind, _) = outcome(&b, limits(), r);
        assert_eq!((count, kind.as_str()), (n, "cycle"));
        let (count, kind, _) = outcome(&b, WalkLimits::new(500, Duration::from_secs(60)), r);
        assert_eq!((count, kind.as_str()), (500, "limit"));
        let (_, kind, _) = outcome(&b, WalkLimits::new(u64::MAX, Duration::ZERO), r);
        assert_eq!(kind, "timed_out");
    }
}

/// A tree 30,000 nodes deep (a left spine), and a tree whose leaves link back to its root.
#[test]
fn deep_and_cyclic_trees_stop() {
    let mut g = Guest::new();
    let n = 30_000u64;
    let nodes = g.alloc(n * 32);
    let var = g.alloc(8);
    g.put_u64(var, nodes);
    let mut bytes = vec![0u8; (n * 32) as usize];
    for i in 0..n - 1 {
        let at = (i * 32) as usize;
        bytes[at..at + 8].copy_from_slice(&(nodes + (i + 1) * 32).to_le_bytes());
    }
    g.put(nodes, &bytes);
    let tree = |name: &str, var: u64| Root {
        name: name.into(),
        type_name: "FreeObject".into(),
        kind: RootKind::Tree,
        flags: 0,
        address: var,
        element_size: 32,
        link_offset: 0,
        max_count: MAX_COUNT,
        aux: 0,
        lock: 0,
        hints: vec![],
    };
    g.root(tree("deep", var));
    // A second tree: root -> left child -> its right child is the root again.
    let small = g.alloc(64);
    let var2 = g.alloc(8);
    g.put_u64(var2, small);
    g.put_u64(small, small + 32);
    g.put_u64(small + 32 + 8, small);
    g.root(tree("cyclic", var2));
    let b = g.build();
    assert_eq!(outcome(&b, limits(), 0).0, n);
    assert_eq!(outcome(&b, limits(), 0).1, "complete");
    let (count, kind, _) = outcome(&b, WalkLimits::new(1000, Duration::from_secs(60)), 0);
    assert_eq!((count, kind.as_str()), (1000, "limit"));
    assert_eq!(
        outcome(&b, WalkLimits::new(u64::MAX, Duration::ZERO), 0).1,
        "timed_out"
    );
    let (count, kind, detail) = outcome(&b, limits(), 1);
    assert_eq!((count, kind.as_str()), (2, "cycle"), "{detail}");
}

/// A ring whose counter says 2^40 records were written: at most the node limit of the
/// newest slots are read.
#[test]
fn a_ring_counter_from_the_far_future_is_bounded() {
    let mut g = Guest::new();
    let at = g.alloc(4 * log_record::SIZE);
    let counter = g.alloc(8);
    g.put_u64(counter, 1 << 40);
    g.root(Root {
        name: "log".into(),
        type_name: "LogRecord".into(),
        kind: RootKind::Ring,
        flags: 0,
        address: at,
        element_size: log_record::SIZE as u32,
        link_offset: 0,
        max_count: MAX_COUNT,
        aux: counter,
        lock: 0,
        hints: vec![],
    });
    let b = g.build();
    let read =
        ambulance_validate::log::read(&b.context(WalkLimits::new(2000, Duration::from_secs(60))));
    assert!(read.records.is_empty());
    assert!(
        read.problems[0].contains("only the newest 2000 slots"),
        "{:?}",
        read.problems
    );
}

/// The registry under a deadline already passed: every validator is skipped, and says
/// so; no root is walked. Under a validation budget of zero, the same.
#[test]
fn past_the_deadline_nothing_runs_and_the_report_says_so() {
    let mut g = Guest::new();
    let table = g.tasks(8);
    let head = g.task_list(&[table, table + task::SIZE]);
    g.tasks_root(table, 8);
    g.run_queue_root("run_queue", head, 0);
    let b = g.build();
    let mut ctx = b.context(limits());
    ctx.deadline = Some(Instant::now());
    let (found, phases) =
        ambulance_validate::Registry::builtin().run(&ctx, &ValidationConfig::default());
    assert!(phases.is_empty());
    assert!(!found.is_empty());
    assert!(found.iter().all(|f| f.kind == FindingKind::Diagnosis
        && f.severity == Severity::Warning
        && f.message
            .ends_with("skipped: the diagnosis deadline passed")));
    assert!(ctx.structures().is_empty());
    let (found, ctx) = b.run_all(&ValidationConfig {
        total_budget_ms: 0,
        ..Default::default()
    });
    assert!(found
        .iter()
        .all(|f| f.message.contains("the validation budget of 0 ms ran out")));
    assert!(ctx.structures().is_empty());
}
