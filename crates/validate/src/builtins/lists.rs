//! List integrity: every declared linked list walks back to its head without cycles, its
//! links are aligned and readable, `next`/`prev` agree, and it holds no more elements
//! than declared.
//!
//! A cycle or a `prev` that does not point back in a list whose lock was held is what a
//! list looks like mid-update, and is reported so ([`Context::structural`]); a next
//! pointer that cannot be followed (NULL, non-canonical, unmapped) or a misaligned link
//! is garbage whatever the lock says.

use ambulance_abi::descriptor::{root_flags, RootKind};
use ambulance_introspect::walk::{self, WalkEnd};
use ambulance_report::{Finding, FindingKind, Severity};

use super::{hex, is_free_list};
use crate::context::RootFindings;
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
            let mut found = RootFindings::new(out);
            let link = root.link_offset as u64;
            let index_of = |node: u64| w.links.iter().position(|&l| l == node).map(|i| i as u64);
            match &w.end {
                WalkEnd::Complete => {}
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
                        format!("a chain back to the list head {}", hex(root.address)),
                        format!("next -> element {}", hex(first_repeated.wrapping_sub(link))),
                        format!(
                            "list {} loops: element {} links back to element {} instead of \
                             continuing to the head; a walker of this list never terminates",
                            root.name,
                            hex(closing_node.wrapping_sub(link)),
                            hex(first_repeated.wrapping_sub(link))
                        ),
                    ),
                    false,
                )),
                WalkEnd::Unreadable { at, error } => {
                    let value = ctx
                        .program
                        .read_u64(*at)
                        .map(hex)
                        .unwrap_or_else(|_| "?".into());
                    found.push(ctx.finding(
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
                WalkEnd::LimitHit { limit } => found.push(
                    ctx.note(
                        NAME,
                        Severity::Warning,
                        &root.name,
                        format!(
                            "list {} was not walked to its end: stopped after {limit} elements",
                            root.name
                        ),
                    )
                    .with_kind(FindingKind::Diagnosis),
                ),
                WalkEnd::TimedOut { after } => found.push(
                    ctx.note(
                        NAME,
                        Severity::Warning,
                        &root.name,
                        format!(
                            "list {} was not walked to its end: {} after {after:?}",
                            root.name,
                            ctx.stop_reason()
                                .unwrap_or_else(|| "its walk budget ran out".into())
                        ),
                    )
                    .with_kind(FindingKind::Diagnosis),
                ),
            }
            if w.links.len() as u64 > root.max_count as u64 {
                found.push(ctx.note(
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
            let mut pace = ctx.pace();
            for (i, &l) in w.links.iter().enumerate() {
                if pace.stop() {
                    found.push(ctx.budget_note(
                        NAME,
                        &root.name,
                        &format!("the alignment of links {i} to {}", w.links.len() - 1),
                    ));
                    break;
                }
                if l % 8 != 0 {
                    // No update writes a misaligned link: garbage, lock or not.
                    found.push(ctx.finding(
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
            if root.has_flag(root_flags::SINGLY_LINKED) || ctx.out_of_time() {
                if !root.has_flag(root_flags::SINGLY_LINKED) {
                    found.push(ctx.budget_note(NAME, &root.name, "the prev pointers"));
                }
                found.finish(ctx, NAME, &root.name);
                continue;
            }
            let (mismatches, end) =
                walk::check_prev_within(ctx.program, root.address, w, ctx.walk_limits());
            for (index, m) in mismatches {
                let is_head = index.is_none();
                let node = if is_head {
                    m.node
                } else {
                    m.node.wrapping_sub(link)
                };
                let f = ctx.finding(
                    NAME,
                    Severity::Critical,
                    &root.name,
                    index.map(|i| i as u64),
                    Some("prev"),
                    Some(node),
                    hex(m.expected_prev),
                    if m.prev_readable {
                        hex(m.found_prev)
                    } else {
                        "unreadable".into()
                    },
                    format!(
                        "list {}: the prev pointer of {} {} does not point back at the \
                         previous element {}",
                        root.name,
                        if is_head { "the head" } else { "element" },
                        hex(node),
                        hex(m.expected_prev.wrapping_sub(link))
                    ),
                );
                found.push(ctx.structural(&[root], f, !m.prev_readable));
            }
            match end {
                WalkEnd::Complete => {}
                WalkEnd::LimitHit { .. } | WalkEnd::TimedOut { .. } => {
                    found.push(ctx.budget_note(NAME, &root.name, "some prev pointers"))
                }
                _ => {}
            }
            found.finish(ctx, NAME, &root.name);
        }
    }
}
