//! List integrity: every declared linked list walks back to its head without cycles, its
//! links are aligned and readable, `next`/`prev` agree, and it holds no more elements
//! than declared.

use ambulance_abi::descriptor::{root_flags, RootKind};
use ambulance_introspect::walk::{self, WalkEnd};
use ambulance_report::{Finding, Severity};

use super::{hex, is_free_list};
use crate::context::excused;
use crate::{Context, Validator};

/// See the module documentation.
pub struct ListIntegrity;

const NAME: &str = "list-integrity";

impl Validator for ListIntegrity {
    fn name(&self) -> &str {
        NAME
    }

    fn applies_to(&self) -> &str {
        "linked-list roots (other than allocator free lists)"
    }

    fn applicable(&self, ctx: &Context<'_>) -> bool {
        ctx.roots()
            .iter()
            .any(|r| r.kind == RootKind::List && !is_free_list(r))
    }

    fn run(&self, ctx: &Context<'_>, out: &mut Vec<Finding>) {
        for root in ctx
            .roots()
            .iter()
            .filter(|r| r.kind == RootKind::List && !is_free_list(r))
        {
            let elements = ctx.elements(root);
            let Some(w) = &elements.list else { continue };
            let link = root.link_offset as u64;
            let index_of = |node: u64| w.links.iter().position(|&l| l == node).map(|i| i as u64);
            match &w.end {
                WalkEnd::Complete => {}
                WalkEnd::Cycle {
                    closing_node,
                    first_repeated,
                } => out.push(ctx.finding(
                    NAME,
                    Severity::Critical,
                    &root.name,
                    index_of(*closing_node),
                    Some("next"),
                    Some(closing_node.wrapping_sub(link)),
                    format!("a chain back to the list head {}", hex(root.address)),
                    format!("next -> element {}", hex(first_repeated.wrapping_sub(link))),
                    format!(
                        "list {} loops: element {} links back to element {} instead of \
                         continuing to the head; a walker of this list never terminates",
                        root.name,
                        hex(closing_node.wrapping_sub(link)),
                        hex(first_repeated.wrapping_sub(link))
                    ),
                )),
                WalkEnd::Unreadable { at, error } => {
                    let value = ctx
                        .program
                        .read_u64(*at)
                        .map(hex)
                        .unwrap_or_else(|_| "?".into());
                    out.push(ctx.finding(
                        NAME,
                        Severity::Critical,
                        &root.name,
                        index_of(*at),
                        Some("next"),
                        Some(at.wrapping_sub(link)),
                        "a readable next pointer".into(),
                        value,
                        format!(
                            "list {} is broken after element {}: its next pointer cannot be \
                             followed ({error})",
                            root.name,
                            hex(at.wrapping_sub(link))
                        ),
                    ))
                }
                WalkEnd::LimitHit { limit } => out.push(ctx.note(
                    NAME,
                    Severity::Warning,
                    &root.name,
                    format!(
                        "list {} was not walked to its end: stopped after {limit} elements",
                        root.name
                    ),
                )),
                WalkEnd::TimedOut { after } => out.push(ctx.note(
                    NAME,
                    Severity::Warning,
                    &root.name,
                    format!(
                        "list {} was not walked to its end: time budget spent after {after:?}",
                        root.name
                    ),
                )),
            }
            if w.links.len() as u64 > root.max_count as u64 {
                out.push(ctx.note(
                    NAME,
                    Severity::Warning,
                    &root.name,
                    format!(
                        "list {} has {} elements, more than the {} the guest declared",
                        root.name,
                        w.links.len(),
                        root.max_count
                    ),
                ));
            }
            for (i, &l) in w.links.iter().enumerate() {
                if l % 8 != 0 {
                    out.push(ctx.finding(
                        NAME,
                        Severity::Error,
                        &root.name,
                        Some(i as u64),
                        Some("next"),
                        Some(l.wrapping_sub(link)),
                        "an 8-byte aligned link".into(),
                        hex(l),
                        format!(
                            "list {} links to a misaligned address {}",
                            root.name,
                            hex(l)
                        ),
                    ));
                }
            }
            if root.has_flag(root_flags::SINGLY_LINKED) {
                continue;
            }
            let held = ctx.lock_held(root);
            for m in walk::check_prev(ctx.program, root.address, w) {
                let (severity, why) = excused(held, Severity::Critical);
                let is_head = m.node == root.address;
                out.push(ctx.finding(
                    NAME,
                    severity,
                    &root.name,
                    if is_head { None } else { index_of(m.node) },
                    Some("prev"),
                    Some(if is_head {
                        m.node
                    } else {
                        m.node.wrapping_sub(link)
                    }),
                    hex(m.expected_prev),
                    hex(m.found_prev),
                    format!(
                        "list {}: the prev pointer of {} {} does not point back at the \
                         previous element {}{why}",
                        root.name,
                        if is_head { "the head" } else { "element" },
                        hex(if is_head {
                            m.node
                        } else {
                            m.node.wrapping_sub(link)
                        }),
                        hex(m.expected_prev.wrapping_sub(link))
                    ),
                ));
            }
        }
    }
}
