//! Checks of the kernel's own structures, for the validators: what was walked, what is
//! wrong and exactly where, and what could not be checked.
//!
//! Each check ([`runqueue`](crate::runqueue), [`slub`](crate::slub),
//! [`vmap`](crate::vmap), [`modules`](crate::modules)) reads its layouts from the
//! program's types (DWARF, or BTF out of guest memory) and returns [`Checked`] results:
//! one per structure walked, each with its [`Problem`]s at the guest-virtual address of
//! the bad field. Every walk is bounded by a [`Budget`] (nodes and time) and cycle-safe;
//! a structure the kernel does not have is [`Checked::unsupported`], never a problem.
//!
//! [`check_rbtree`] checks a Linux red-black tree (`lib/rbtree.c`): parent pointers,
//! colours (no red node with a red child, a black root, equal black heights) and, for
//! the caller's order checks, gives its nodes in order.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ambulance_introspect::program::Program;
use ambulance_introspect::walk::WalkLimits;

use crate::Result;

/// Something wrong in a kernel structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Guest-virtual address of the bad field.
    pub address: u64,
    /// The field (`rb_node.__rb_parent_color`, `module.state`, …).
    pub field: String,
    /// What it should hold.
    pub expected: String,
    /// What it holds.
    pub found: String,
    /// What is wrong, for people.
    pub message: String,
    /// Whether it is garbage no update could have written (memory that cannot be read, a
    /// pointer that is not canonical): corruption even while the structure's lock was
    /// held.
    pub garbage: bool,
}

/// One structure checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Its name (`runqueues[1].cfs.tasks_timeline`, `slab_caches`, …).
    pub structure: String,
    /// `tree`, `list`, `freelists`.
    pub kind: &'static str,
    /// Nodes (objects, areas, modules) visited.
    pub count: u64,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// Why the check stopped before the end (a budget, an unreadable pointer), if it did.
    pub incomplete: Option<String>,
    /// Why this kernel cannot be checked this way (a symbol or type it does not have).
    pub unsupported: Option<String>,
    /// The lock word of the lock the structure's writers hold, when known: an
    /// inconsistency while it was held is most likely an update in progress.
    pub lock: Option<u64>,
}

impl Checked {
    /// A check of `structure` that has not started.
    pub fn new(structure: impl Into<String>, kind: &'static str) -> Checked {
        Checked {
            structure: structure.into(),
            kind,
            ..Default::default()
        }
    }

    /// `structure` cannot be checked on this kernel, because of `why`.
    pub fn unsupported(structure: impl Into<String>, kind: &'static str, why: String) -> Checked {
        Checked {
            unsupported: Some(format!("not supported on this kernel: {why}")),
            ..Checked::new(structure, kind)
        }
    }

    /// Adds a problem.
    pub fn problem(
        &mut self,
        address: u64,
        field: &str,
        expected: String,
        found: String,
        message: String,
    ) {
        self.problems.push(Problem {
            address,
            field: field.to_string(),
            expected,
            found,
            message,
            garbage: false,
        });
    }

    /// Adds a problem that is garbage whatever the lock says: the pointer or memory at
    /// `address` cannot be followed or read.
    pub fn unreadable(&mut self, address: u64, field: &str, message: String) {
        let found = "unreadable".to_string();
        self.problem(address, field, "readable".into(), found, message);
        if let Some(p) = self.problems.last_mut() {
            p.garbage = true;
        }
    }

    /// Says the check stopped early (the first reason given stands).
    pub fn stop(&mut self, why: String) {
        self.incomplete.get_or_insert(why);
    }
}

/// How much a set of checks may visit: nodes over all of them, and time.
#[derive(Debug)]
pub struct Budget {
    nodes_left: u64,
    max_nodes: u64,
    until: Option<Instant>,
    time: Duration,
}

impl Budget {
    /// `limits.max_nodes` nodes and `limits.time_budget` from now.
    pub fn new(limits: WalkLimits) -> Budget {
        Budget {
            nodes_left: limits.max_nodes,
            max_nodes: limits.max_nodes,
            until: Instant::now().checked_add(limits.time_budget),
            time: limits.time_budget,
        }
    }

    /// Takes one node; why not, when the budget is spent.
    pub fn take(&mut self) -> std::result::Result<(), String> {
        if self.nodes_left == 0 {
            return Err(format!("the budget of {} nodes is spent", self.max_nodes));
        }
        self.nodes_left -= 1;
        if self.nodes_left.is_multiple_of(256) && self.until.is_some_and(|u| Instant::now() >= u) {
            self.nodes_left = 0;
            return Err(format!("the time budget of {:?} ran out", self.time));
        }
        Ok(())
    }
}

/// Where `rb_node`'s fields are.
#[derive(Clone, Copy, Debug)]
pub struct RbLayout {
    parent_color: u64,
    right: u64,
    left: u64,
}

impl RbLayout {
    /// `struct rb_node` from the program's types.
    pub fn of(program: &Program) -> Result<RbLayout> {
        Ok(RbLayout {
            parent_color: program.offset_of("rb_node", "__rb_parent_color")?,
            right: program.offset_of("rb_node", "rb_right")?,
            left: program.offset_of("rb_node", "rb_left")?,
        })
    }
}

/// A red-black tree as [`check_rbtree`] found it.
#[derive(Debug, Default)]
pub struct RbTree {
    /// Its nodes (`rb_node` addresses) in order, each once.
    pub in_order: Vec<u64>,
}

/// One node as read.
#[derive(Clone, Copy)]
struct RbNode {
    parent_color: u64,
    left: u64,
    right: u64,
}

fn is_black(n: &RbNode) -> bool {
    n.parent_color & 1 == 1
}

/// Checks the red-black tree whose root pointer (`rb_root.rb_node`) is at `root_ptr`,
/// and, for an `rb_root_cached`, that the cached leftmost node (at `leftmost`) is the
/// first in order. Problems go to `out` at the node (or field) that is wrong: a parent
/// pointer that is not the node's parent, a red root, a red node with a red child, a
/// node whose subtrees differ in black height, a child pointer that cannot be followed
/// or that reaches a node twice. Bounded by `budget`.
pub fn check_rbtree(
    program: &Program,
    layout: &RbLayout,
    root_ptr: u64,
    leftmost: Option<u64>,
    budget: &mut Budget,
    out: &mut Checked,
) -> RbTree {
    let paging = program.translator().paging();
    let mut nodes: HashMap<u64, RbNode> = HashMap::new();
    // Pre-order, so that children come after their parents.
    let mut pre = Vec::new();
    let root = match program.read_u64(root_ptr) {
        Ok(r) => r,
        Err(e) => {
            out.stop(format!(
                "the root pointer at {root_ptr:#x} is unreadable: {e}"
            ));
            return RbTree::default();
        }
    };
    // (node, its parent, the field that points to it)
    let mut pending = Vec::new();
    if root != 0 {
        pending.push((root, 0u64, root_ptr));
    }
    let mut seen = HashSet::new();
    while let Some((node, parent, from)) = pending.pop() {
        if let Err(why) = budget.take() {
            out.stop(why);
            break;
        }
        if !paging.is_canonical(node) || !node.is_multiple_of(4) {
            out.unreadable(
                from,
                "rb_node child",
                format!(
                    "the pointer at {from:#x} to a child node ({node:#x}) is not canonical and \
                     aligned: it cannot be followed"
                ),
            );
            continue;
        }
        if !seen.insert(node) {
            out.problem(
                from,
                "rb_node child",
                "a node not already in the tree".into(),
                format!("{node:#x}"),
                format!(
                    "the pointer at {from:#x} reaches node {node:#x} a second time (a cycle or a \
                     node with two parents)"
                ),
            );
            continue;
        }
        let read = |off: u64| program.read_u64(node.wrapping_add(off));
        let n = match (
            read(layout.parent_color),
            read(layout.left),
            read(layout.right),
        ) {
            (Ok(parent_color), Ok(left), Ok(right)) => RbNode {
                parent_color,
                left,
                right,
            },
            _ => {
                out.unreadable(
                    from,
                    "rb_node child",
                    format!("the node {node:#x} that {from:#x} points to cannot be read"),
                );
                continue;
            }
        };
        let pc_at = node.wrapping_add(layout.parent_color);
        let claimed = n.parent_color & !3;
        if claimed != parent {
            out.problem(
                pc_at,
                "rb_node.__rb_parent_color",
                format!("parent {parent:#x}"),
                format!("parent {claimed:#x} ({:#x})", n.parent_color),
                format!(
                    "node {node:#x}'s parent pointer says {claimed:#x}, but it is the child of \
                     {}",
                    if parent == 0 {
                        "no node (it is the root)".to_string()
                    } else {
                        format!("{parent:#x}")
                    }
                ),
            );
        }
        if parent == 0 && !is_black(&n) {
            out.problem(
                pc_at,
                "rb_node.__rb_parent_color",
                "black (the root)".into(),
                "red".into(),
                format!("the root node {node:#x} is red"),
            );
        }
        if let Some(p) = nodes.get(&parent) {
            if !is_black(p) && !is_black(&n) {
                out.problem(
                    pc_at,
                    "rb_node.__rb_parent_color",
                    "black (its parent is red)".into(),
                    "red".into(),
                    format!("node {node:#x} is red and so is its parent {parent:#x}"),
                );
            }
        }
        nodes.insert(node, n);
        pre.push(node);
        for (child, off) in [(n.right, layout.right), (n.left, layout.left)] {
            if child != 0 {
                pending.push((child, node, node.wrapping_add(off)));
            }
        }
    }
    out.count += pre.len() as u64;
    if out.incomplete.is_some() {
        // Black heights and order are only meaningful over the whole tree.
        return RbTree { in_order: pre };
    }
    // Black heights, children before parents; a child that was not read counts as a leaf.
    let mut height: HashMap<u64, u64> = HashMap::new();
    for &node in pre.iter().rev() {
        let n = nodes[&node];
        let h = |c: u64| {
            if c == 0 {
                0
            } else {
                height.get(&c).copied().unwrap_or(0)
            }
        };
        let (l, r) = (h(n.left), h(n.right));
        if l != r {
            out.problem(
                node.wrapping_add(layout.parent_color),
                "rb_node (black height)",
                "equal black heights below it".into(),
                format!("left {l}, right {r}"),
                format!(
                    "the paths below node {node:#x} pass different numbers of black nodes: {l} \
                     on the left, {r} on the right"
                ),
            );
        }
        height.insert(node, l.max(r) + u64::from(is_black(&n)));
    }
    // In order, iteratively; each node was read once above.
    let mut in_order = Vec::with_capacity(pre.len());
    let mut stack = Vec::new();
    let mut visited = HashSet::new();
    let mut cur = if nodes.contains_key(&root) { root } else { 0 };
    while cur != 0 || !stack.is_empty() {
        while cur != 0 && visited.insert(cur) {
            stack.push(cur);
            cur = nodes.get(&cur).map_or(0, |n| n.left);
            if !nodes.contains_key(&cur) {
                cur = 0;
            }
        }
        let Some(node) = stack.pop() else { break };
        in_order.push(node);
        cur = nodes.get(&node).map_or(0, |n| n.right);
        if !nodes.contains_key(&cur) || visited.contains(&cur) {
            cur = 0;
        }
    }
    if let Some(at) = leftmost {
        match program.read_u64(at) {
            Ok(cached) if cached != in_order.first().copied().unwrap_or(0) => out.problem(
                at,
                "rb_root_cached.rb_leftmost",
                format!("{:#x}", in_order.first().copied().unwrap_or(0)),
                format!("{cached:#x}"),
                format!(
                    "the cached leftmost node is {cached:#x}, the tree's first node is {:#x}",
                    in_order.first().copied().unwrap_or(0)
                ),
            ),
            Ok(_) => {}
            Err(e) => out.stop(format!("the cached leftmost at {at:#x} is unreadable: {e}")),
        }
    }
    RbTree { in_order }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambulance_introspect::memory::RawImage;
    use ambulance_introspect::translate::{PageTableBuilder, Paging};
    use ambulance_introspect::vmcoreinfo::Vmcoreinfo;
    use std::sync::Arc;

    const DIRECT: u64 = 0xffff_8880_0000_0000;
    /// The root pointer, then nodes 0x40 apart.
    const ROOT: u64 = DIRECT + 0x10_0000;
    const LEFTMOST: u64 = ROOT + 8;

    fn node(i: u64) -> u64 {
        ROOT + 0x40 * (i + 1)
    }

    /// A program whose memory holds `words` (address, value), with `rb_node`'s layout
    /// from VMCOREINFO.
    fn program(words: &[(u64, u64)]) -> Program {
        let mut b =
            PageTableBuilder::new(vec![0u8; 2 << 20], 0x1000, 0x8_0000, Paging::Four).unwrap();
        b.map_range(DIRECT, 0, 2 << 20, 2 << 20, true, true)
            .unwrap();
        let ram = b.ram_mut();
        for &(va, v) in words {
            let at = (va - DIRECT) as usize;
            ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let root = b.root();
        let v = Vmcoreinfo::parse(
            "OFFSET(rb_node.__rb_parent_color)=0\nOFFSET(rb_node.rb_right)=8\n\
             OFFSET(rb_node.rb_left)=16\n",
        )
        .unwrap();
        Program::new(
            Arc::new(RawImage::from_bytes(b.into_ram(), 0)),
            root,
            Paging::Four,
        )
        .with_vmcoreinfo(v)
    }

    /// A black root (node 1) with two red children (nodes 0 and 2).
    fn healthy() -> Vec<(u64, u64)> {
        vec![
            (ROOT, node(1)),
            (LEFTMOST, node(0)),
            (node(1), 1),
            (node(1) + 8, node(2)),
            (node(1) + 16, node(0)),
            (node(0), node(1)),
            (node(2), node(1)),
        ]
    }

    fn check(words: &[(u64, u64)]) -> (RbTree, Checked) {
        let p = program(words);
        let mut c = Checked::new("tree", "tree");
        let mut budget = Budget::new(WalkLimits::default());
        let t = check_rbtree(
            &p,
            &RbLayout::of(&p).unwrap(),
            ROOT,
            Some(LEFTMOST),
            &mut budget,
            &mut c,
        );
        (t, c)
    }

    fn with(mut words: Vec<(u64, u64)>, at: u64, v: u64) -> Vec<(u64, u64)> {
        words.retain(|w| w.0 != at);
        words.push((at, v));
        words
    }

    fn fields(c: &Checked) -> Vec<(u64, &str)> {
        c.problems
            .iter()
            .map(|p| (p.address, p.field.as_str()))
            .collect()
    }

    #[test]
    fn a_healthy_tree_in_order() {
        let (t, c) = check(&healthy());
        assert_eq!(t.in_order, [node(0), node(1), node(2)]);
        assert_eq!((c.count, c.problems.len(), c.incomplete), (3, 0, None));
    }

    #[test]
    fn each_broken_invariant_is_reported_at_its_node() {
        // A parent pointer that is not the parent.
        let (_, c) = check(&with(healthy(), node(2), node(0)));
        assert_eq!(fields(&c), [(node(2), "rb_node.__rb_parent_color")]);
        // A red root: and so both children are red below a red node.
        let (_, c) = check(&with(healthy(), node(1), 0));
        assert_eq!(
            fields(&c),
            [
                (node(1), "rb_node.__rb_parent_color"),
                (node(0), "rb_node.__rb_parent_color"),
                (node(2), "rb_node.__rb_parent_color"),
            ]
        );
        // A black child on one side only: unequal black heights below the root.
        let (_, c) = check(&with(healthy(), node(2), node(1) | 1));
        assert_eq!(fields(&c), [(node(1), "rb_node (black height)")]);
        // The cached leftmost is not the first node.
        let (_, c) = check(&with(healthy(), LEFTMOST, node(2)));
        assert_eq!(fields(&c), [(LEFTMOST, "rb_root_cached.rb_leftmost")]);
        // A child pointer back up the tree, one that is not canonical.
        let (t, c) = check(&with(healthy(), node(0) + 8, node(1)));
        assert_eq!(fields(&c), [(node(0) + 8, "rb_node child")]);
        assert_eq!(t.in_order, [node(0), node(1), node(2)]);
        let (_, c) = check(&with(healthy(), node(2) + 16, 0x8000_0000_0000_0000));
        assert_eq!(fields(&c), [(node(2) + 16, "rb_node child")]);
    }

    #[test]
    fn the_budget_bounds_a_long_chain() {
        // 5000 nodes each the right child of the one before: cut at 1000.
        let mut words = vec![(ROOT, node(0))];
        for i in 0..5000u64 {
            words.push((node(i), if i == 0 { 1 } else { node(i - 1) | 1 }));
            words.push((node(i) + 8, node(i + 1)));
        }
        let p = program(&words);
        let mut c = Checked::new("tree", "tree");
        let mut budget = Budget::new(WalkLimits::new(1000, std::time::Duration::from_secs(5)));
        check_rbtree(
            &p,
            &RbLayout::of(&p).unwrap(),
            ROOT,
            None,
            &mut budget,
            &mut c,
        );
        assert_eq!(c.count, 1000);
        assert!(c.incomplete.unwrap().contains("1000 nodes"));
        assert!(c.problems.is_empty());
    }
}
