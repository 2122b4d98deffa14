//! The kernel's vmalloc areas: `vmap_area_root`, the red-black tree of busy
//! `vmap_area`s (`rb_node`) sorted by address, checked as a red-black tree
//! ([`check_rbtree`]) and for what it orders: every area's `va_start` below its
//! `va_end`, areas in ascending order, none overlapping the one before. (The list of the
//! same areas, `vmap_area_list`, is a list root: see [`vmap_list_root`].)
//!
//! Linux 6.9 moved the busy areas into per-node trees (`vmap_nodes`); there, and on any
//! kernel without `vmap_area_root`, the check says it is not supported on this kernel.

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

/// The root a registration would have declared for `vmap_area_list` (the busy areas in
/// address order, linked through `vmap_area.list`; writers hold `vmap_area_lock`).
pub fn vmap_list_root(program: &Program, max_count: u64) -> Result<Root> {
    let head = program.symbol(VMAP_LIST_ROOT)?;
    let list = program.offset_of("vmap_area", "list")?;
    let size = program
        .find_type("vmap_area")
        .ok()
        .and_then(|(types, id)| types.get(id).ok()?.size)
        .unwrap_or(0);
    Ok(Root {
        name: VMAP_LIST_ROOT.into(),
        type_name: "vmap_area".into(),
        kind: RootKind::List,
        flags: 0,
        address: head,
        element_size: size.min(u32::MAX as u64) as u32,
        link_offset: list.min(u32::MAX as u64) as u32,
        max_count: max_count.min(MAX_VMAP_AREAS) as u32,
        aux: 0,
        lock: program.symbol("vmap_area_lock").unwrap_or(0),
        hints: Vec::new(),
    })
}

/// Checks `vmap_area_root`.
pub fn check(program: &Program, budget: &mut Budget) -> Checked {
    let root = match program.symbol(VMAP_TREE) {
        Ok(r) => r,
        Err(_) => {
            let why = if program.symbol("vmap_nodes").is_ok() {
                "it keeps vmap areas per node (vmap_nodes, Linux 6.9 and later), which this \
                 check does not walk"
            } else {
                "it has no vmap_area_root"
            };
            return Checked::unsupported(VMAP_TREE, "tree", why.into());
        }
    };
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
        Err(e) => return Checked::unsupported(VMAP_TREE, "tree", e.to_string()),
    };
    let mut c = Checked::new(VMAP_TREE, "tree");
    c.lock = program.symbol("vmap_area_lock").ok();
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
