//! The kernel's vmalloc areas: `vmap_area_root`, the red-black tree of busy
//! `vmap_area`s (`rb_node`) sorted by address, checked as a red-black tree
//! ([`check_rbtree`]) and for what it orders: every area's `va_start` below its
//! `va_end`, areas in ascending order, none overlapping the one before. (The list of the
//! same areas, `vmap_area_list`, is a list root: see [`vmap_list_roots`].)
//!
//! Linux 6.9 moved the busy areas into per-node trees: `vmap_nodes[0..nr_vmap_nodes]`,
//! each node's busy areas in its own `busy.root` under its `busy.lock`. There each
//! node's tree is checked the same way, as `vmap_nodes[N].busy`. On a kernel with
//! neither, the check says it is not supported on this kernel.

use ambulance_abi::descriptor::{Root, RootKind};
use ambulance_introspect::program::Program;

use crate::structures::{check_rbtree, Budget, Checked, RbLayout};
use crate::Result;

/// The name of the vmap-area tree in findings and "structures walked".
pub const VMAP_TREE: &str = "vmap_area_root";
/// The name of the vmap-area list root.
pub const VMAP_LIST_ROOT: &str = "vmap_area_list";

/// Most vmap areas on the list root.
pub const MAX_VMAP_AREAS: u64 = 1 << 20;

/// Most vmap nodes believed (Linux makes at most one per CPU, up to 128 by default).
pub const MAX_VMAP_NODES: u64 = 4096;

/// The roots a registration would have declared for the lists of busy vmap areas, in
/// address order, linked through `vmap_area.list`: `vmap_area_list` (writers hold
/// `vmap_area_lock`), or on Linux 6.9 and later each node's `vmap_nodes[N].busy.head`
/// (under that node's `busy.lock`). Empty when the kernel has neither.
pub fn vmap_list_roots(program: &Program, max_count: u64) -> Result<Vec<Root>> {
    let list = program.offset_of("vmap_area", "list")?;
    let size = program.size_of("vmap_area").unwrap_or(0);
    let root = |name: String, address: u64, lock: u64| Root {
        name,
        type_name: "vmap_area".into(),
        kind: RootKind::List,
        flags: 0,
        address,
        element_size: size.min(u32::MAX as u64) as u32,
        link_offset: list.min(u32::MAX as u64) as u32,
        max_count: max_count.min(MAX_VMAP_AREAS) as u32,
        aux: 0,
        lock,
        hints: Vec::new(),
    };
    if let Ok(head) = program.symbol(VMAP_LIST_ROOT) {
        let lock = program.symbol("vmap_area_lock").unwrap_or(0);
        return Ok(vec![root(VMAP_LIST_ROOT.into(), head, lock)]);
    }
    let Ok(lists) = busy_lists(program) else {
        return Ok(Vec::new());
    };
    let head = program.offset_of("rb_list", "head")?;
    let lock = program.offset_of("rb_list", "lock")?;
    Ok(lists
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            root(
                format!("vmap_nodes[{i}].busy.head"),
                l.wrapping_add(head),
                l.wrapping_add(lock),
            )
        })
        .collect())
}

/// Checks `vmap_area_root`, or each node's busy tree on Linux 6.9 and later.
pub fn check(program: &Program, budget: &mut Budget) -> Vec<Checked> {
    if let Ok(root) = program.symbol(VMAP_TREE) {
        let lock = program.symbol("vmap_area_lock").ok();
        return vec![check_tree(program, VMAP_TREE, root, lock, budget)];
    }
    if program.symbol("vmap_nodes").is_err() {
        let why = "it has neither vmap_area_root nor vmap_nodes".to_string();
        return vec![Checked::unsupported(VMAP_TREE, "tree", why)];
    }
    match node_trees(program) {
        Ok(trees) => trees
            .into_iter()
            .map(|(name, root, lock)| check_tree(program, &name, root, Some(lock), budget))
            .collect(),
        Err(why) => vec![Checked::unsupported("vmap_nodes", "tree", why)],
    }
}

/// The address of each vmap node's `busy` areas (a `struct rb_list`: tree, list and
/// lock), Linux 6.9 and later.
fn busy_lists(program: &Program) -> std::result::Result<Vec<u64>, String> {
    let address_of = |name: &str| -> Result<u64> { Ok(program.symbol(name)?) };
    let nodes = address_of("vmap_nodes")
        .and_then(|at| Ok(program.read_u64(at)?))
        .map_err(|e| format!("vmap_nodes: {e}"))?;
    let count = address_of("nr_vmap_nodes")
        .and_then(|at| Ok(program.read_u32(at)?))
        .map_err(|e| format!("nr_vmap_nodes: {e}"))? as u64;
    if count == 0 || count > MAX_VMAP_NODES {
        return Err(format!(
            "nr_vmap_nodes is {count} (1 to {MAX_VMAP_NODES} believed)"
        ));
    }
    let layout = (|| -> Result<_> {
        let size = program
            .size_of("vmap_node")
            .filter(|&s| s > 0)
            .ok_or_else(|| ambulance_introspect::Error::NoType {
                name: "vmap_node".into(),
                searched: "the kernel's types (its size)".into(),
            })?;
        Ok((size, program.offset_of("vmap_node", "busy")?))
    })();
    let (size, busy) = layout.map_err(|e| e.to_string())?;
    Ok((0..count)
        .map(|i| nodes.wrapping_add(i.wrapping_mul(size)).wrapping_add(busy))
        .collect())
}

/// Each vmap node's busy tree (Linux 6.9 and later): its name, the address of its
/// `rb_root` and of its lock.
fn node_trees(program: &Program) -> std::result::Result<Vec<(String, u64, u64)>, String> {
    let lists = busy_lists(program)?;
    let (root, lock) = (|| -> Result<_> {
        Ok((
            program.offset_of("rb_list", "root")?,
            program.offset_of("rb_list", "lock")?,
        ))
    })()
    .map_err(|e| e.to_string())?;
    Ok(lists
        .into_iter()
        .enumerate()
        .map(|(i, list)| {
            (
                format!("vmap_nodes[{i}].busy"),
                list.wrapping_add(root),
                list.wrapping_add(lock),
            )
        })
        .collect())
}

/// Checks the tree of busy vmap areas whose `rb_root` is at `root`, called `name`,
/// written under the lock at `lock`.
fn check_tree(
    program: &Program,
    name: &str,
    root: u64,
    lock: Option<u64>,
    budget: &mut Budget,
) -> Checked {
    let layout = (|| -> Result<_> {
        Ok((
            RbLayout::of(program)?,
            program.offset_of("rb_root", "rb_node")?,
            program.offset_of("vmap_area", "rb_node")?,
            program.offset_of("vmap_area", "va_start")?,
            program.offset_of("vmap_area", "va_end")?,
        ))
    })();
    let (rb, rb_node, node_off, start_off, end_off) = match layout {
        Ok(l) => l,
        Err(e) => return Checked::unsupported(name, "tree", e.to_string()),
    };
    let mut c = Checked::new(name, "tree");
    c.lock = lock;
    let tree = check_rbtree(
        program,
        &rb,
        root.wrapping_add(rb_node),
        None,
        budget,
        &mut c,
    );
    if c.incomplete.is_some() {
        return c;
    }
    let mut before: Option<(u64, u64)> = None;
    for &node in &tree.in_order {
        let va = node.wrapping_sub(node_off);
        let (start_at, end_at) = (va.wrapping_add(start_off), va.wrapping_add(end_off));
        let (Ok(start), Ok(end)) = (program.read_u64(start_at), program.read_u64(end_at)) else {
            c.unreadable(
                start_at,
                "vmap_area.va_start",
                format!("the vmap area at {va:#x} cannot be read"),
            );
            continue;
        };
        if start >= end {
            c.problem(
                start_at,
                "vmap_area.va_start",
                format!("below va_end {end:#x}"),
                format!("{start:#x}"),
                format!(
                    "the vmap area at {va:#x} starts at {start:#x}, not below its end {end:#x}"
                ),
            );
        }
        if let Some((prev, prev_end)) = before {
            if start < prev_end {
                c.problem(
                    start_at,
                    "vmap_area.va_start",
                    format!("at least {prev_end:#x} (the end of the area before it)"),
                    format!("{start:#x}"),
                    format!(
                        "the vmap area at {va:#x} ({start:#x}-{end:#x}) overlaps or is out of \
                         order with the area before it in the tree ({prev:#x}, ending at \
                         {prev_end:#x})"
                    ),
                );
            }
        }
        before = Some((va, end.max(before.map_or(0, |b| b.1))));
    }
    c
}
