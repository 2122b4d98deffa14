//! Allocator free lists: no cycles (an object on the list twice is handed out twice),
//! every entry inside its slab, and no free object still referenced as live.
//!
//! With the free list's lock (or, for a free object still referenced, the referencing
//! table's lock) held, each of these is what an allocation or a free in progress looks
//! like, and is reported as mid-update ([`Context::structural`]); a link that cannot be
//! followed is garbage whatever the lock says.

use std::collections::HashSet;

use ambulance_abi::descriptor::{root_flags, Hint, RootKind};
use ambulance_introspect::walk::WalkEnd;
use ambulance_report::{Finding, Severity};

use super::{hex, is_free_list};
use crate::context::RootFindings;
use crate::{Context, Validator};

/// See the module documentation.
pub struct FreeLists;

const NAME: &str = "freelist";

impl Validator for FreeLists {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "allocator free lists (singly linked roots whose link has a pointer-range hint)"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots().iter().any(is_free_list)
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        for root in ctx.roots().iter().filter(|r| is_free_list(r)) {
            let Some((lo, hi)) = root.hints.iter().find_map(|h| match *h {
                Hint::PointerRange { offset, lo, hi, .. } if offset == root.link_offset => {
                    Some((lo, hi))
                }
                _ => None,
            }) else {
                continue;
            };
            let elements = ctx.elements(root);
            let Some(w) = &elements.list else { continue };
            let mut found = RootFindings::new(out);
            let link = root.link_offset as u64;
            let index_of = |node: u64| w.links.iter().position(|&l| l == node).map(|i| i as u64);
            match &w.end {
                WalkEnd::Cycle {
                    closing_node,
                    first_repeated,
                } => found.push(ctx.structural(
                    &[root],
                    ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        index_of(*closing_node),
                        Some("next"),
                        Some(closing_node.wrapping_sub(link)),
                        "a free list that ends".into(),
                        format!(
                            "next -> {} (already on the list)",
                            hex(first_repeated.wrapping_sub(link))
                        ),
                        format!(
                            "free list {} loops: entry {} points back to entry {}; the \
                             allocator would hand the same objects out again and again",
                            root.name,
                            hex(closing_node.wrapping_sub(link)),
                            hex(first_repeated.wrapping_sub(link))
                        ),
                    ),
                    false,
                )),
                WalkEnd::Unreadable { at, error } => found.push(
                    ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        index_of(*at),
                        Some("next"),
                        Some(at.wrapping_sub(link)),
                        format!("a pointer into [{}, {})", hex(lo), hex(hi)),
                        ctx.program
                            .read_u64(*at)
                            .map(hex)
                            .unwrap_or_else(|_| "?".into()),
                        format!(
                            "free list {} cannot be followed past {}: {error}",
                            root.name,
                            hex(*at)
                        ),
                    ),
                ),
                _ => {}
            }
            // Entries outside the slab.
            let mut pace = ctx.pace();
            for (i, &l) in w.links.iter().enumerate() {
                if pace.stop() {
                    found.push(ctx.budget_note(
                        NAME,
                        &root.name,
                        &format!("entries {i} to {}", w.links.len() - 1),
                    ));
                    break;
                }
                let entry = l.wrapping_sub(link);
                if entry < lo || entry >= hi {
                    let f = ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        Some(i as u64),
                        None,
                        Some(entry),
                        format!("an object in [{}, {})", hex(lo), hex(hi)),
                        hex(entry),
                        format!(
                            "free list {} holds {}, which is outside its slab",
                            root.name,
                            hex(entry)
                        ),
                    );
                    found.push(ctx.structural(&[root], f, false));
                }
            }
            // Free objects still referenced as live by a pointer table into the same slab.
            let free: HashSet<u64> = w.links.iter().map(|l| l.wrapping_sub(link)).collect();
            for table in ctx
                .roots()
                .iter()
                .filter(|r| r.kind == RootKind::Array && r.has_flag(root_flags::POINTER_ELEMENTS))
            {
                for e in ctx.elements(table).elements.iter() {
                    if pace.stop() {
                        found.push(ctx.budget_note(
                            NAME,
                            &root.name,
                            &format!("references from {} from element {}", table.name, e.index),
                        ));
                        break;
                    }
                    if e.addr >= lo && e.addr < hi && free.contains(&e.addr) {
                        let f = ctx.finding(
                            NAME,
                            Severity::Critical,
                            &root.name,
                            None,
                            None,
                            Some(e.addr),
                            "an object that is either free or referenced, not both".into(),
                            format!("on {} and in {}[{}]", root.name, table.name, e.index),
                            format!(
                                "object {} is on free list {} but {}[{}] still points to it: \
                                 a use after free or a double free",
                                hex(e.addr),
                                root.name,
                                table.name,
                                e.index
                            ),
                        );
                        found.push(ctx.structural(&[root, table], f, false));
                    }
                }
            }
            found.finish(ctx, NAME, &root.name);
        }
    }
}
